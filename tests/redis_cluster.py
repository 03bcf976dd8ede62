"""A throwaway Redis Cluster for the tests: three masters on loopback ports, no replicas.

``start_cluster()`` starts three ``redis-server --cluster-enabled yes`` (each in its own temporary
directory, see :mod:`redis_server`), joins them with ``redis-cli --cluster create`` and waits
(bounded) until every node reports ``cluster_state:ok``; it raises ``RedisUnavailable`` saying why
when it cannot. :meth:`Cluster.move` moves one slot from its owner to another node the way a
resharding does, in two halves so that a test can decide between them.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Any

from redis_server import RedisServer, RedisUnavailable, free_port, start

READY_SECONDS = 30.0


class Cluster:
    def __init__(self, servers: list[RedisServer]) -> None:
        self.servers = servers
        self.ports = [server.port for server in servers]

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def client(self, port: int) -> Any:
        import redis

        return redis.Redis(port=port, socket_timeout=5)

    def ask(self, port: int, *command: Any) -> Any:
        client = self.client(port)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def node_id(self, port: int) -> str:
        return str(self.ask(port, "CLUSTER", "MYID").decode())

    def owner(self, slot: int) -> int:
        """The port of the node that serves ``slot`` (as the first node sees it)."""
        for start_, end, owner, *_ in self.ask(self.ports[0], "CLUSTER", "SLOTS"):
            if start_ <= slot <= end:
                return int(owner[1])
        raise AssertionError(f"no node serves slot {slot}")

    def begin_move(self, slot: int, target: int) -> int:
        """Mark ``slot`` migrating to ``target`` and migrate its keys; the old owner's port."""
        source = self.owner(slot)
        self.ask(target, "CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
        self.ask(source, "CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(target))
        while keys := self.ask(source, "CLUSTER", "GETKEYSINSLOT", slot, 100):
            self.ask(source, "MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        return source

    def finish_move(self, slot: int, target: int) -> None:
        """Give ``slot`` to ``target`` on every node (what ends a resharding)."""
        target_id = self.node_id(target)
        for port in [target, *(p for p in self.ports if p != target)]:
            self.ask(port, "CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def move(self, slot: int, target: int) -> None:
        """Move ``slot`` and its keys to ``target``."""
        if self.owner(slot) != target:
            self.begin_move(slot, target)
            self.finish_move(slot, target)

    def wait_ok(self) -> None:
        deadline = time.monotonic() + READY_SECONDS
        while True:
            states = [self.ask(port, "CLUSTER", "INFO").decode() for port in self.ports]
            if all("cluster_state:ok" in s and "cluster_slots_ok:16384" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise RedisUnavailable(f"the cluster did not become ready: {states}")
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _cluster_port() -> int:
    """A free port whose cluster bus port (10000 higher) is free as well."""
    import socket

    for _ in range(100):
        port = free_port()
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RedisUnavailable("no free pair of ports for a cluster node")


def start_cluster(nodes: int = 3) -> Cluster:
    cli = shutil.which("redis-cli")
    if cli is None:
        raise RedisUnavailable("no redis-cli binary on PATH")
    servers: list[RedisServer] = []
    options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
    options += ["--cluster-node-timeout", "15000"]
    try:
        for _ in range(nodes):
            servers.append(start(*options, port=_cluster_port()))
        cluster = Cluster(servers)
        created = subprocess.run(
            [
                cli,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in cluster.ports),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if created.returncode != 0:
            raise RedisUnavailable(f"redis-cli --cluster create failed: {created.stdout[-600:]}")
        cluster.wait_ok()
        return cluster
    except BaseException:
        for server in servers:
            server.stop()
        raise
