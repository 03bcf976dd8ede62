"""Rate-limit decisions through Redis: buttress's store beside limits and pyrate-limiter.

Run: ``python benchmarks/bench_redis.py`` (needs ``redis-server`` and ``redis-cli`` on PATH; it
starts its own servers on 127.0.0.1 with no persistence). One thread, one connection per
implementation, every decision admitted (rates far above what one thread can ask for), except the
rows marked "full", where the log is full and most decisions are refused. The floor is one round
trip: redis-py's ``EVALSHA`` of a script that only returns 1. buttress is opened from a URL (its
own connections) and, in one row, around a ``redis.Redis`` client (redis-py's command path).

The second table does the same against a 3-node Redis Cluster: buttress opened with a
``redis+cluster://`` URL naming all three nodes routes each decision to the node of its key's
slot, measured against the floor on that same node.

Commands per decision are counted separately (``MONITOR``, which slows the server, so not while
timing): what the client sends (round trips) and what the server runs, including the commands a
Lua script issues.
"""

from __future__ import annotations

import math
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from buttress.backends import open_storage
from buttress.backends.redis_wire import key_slot
from buttress.machines.ratelimit import Params, RateLimitAlgorithm

HUGE = 10**9


class Factory:
    def __init__(self, make: Callable[[], Callable[[], Any]]) -> None:
        self.make = make


COUNTED = 300  # decisions per MONITOR count
ROUNDS = 15


@contextmanager
def redis_server() -> Iterator[int]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("bench_redis needs redis-server on PATH")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    with tempfile.TemporaryDirectory() as workdir:
        args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        args += ["--appendonly", "no", "--dir", workdir]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=port)
            deadline = time.monotonic() + 5
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline or process.poll() is not None:
                        raise SystemExit("redis-server did not start") from None
                    time.sleep(0.02)
            client.close()
            yield port
        finally:
            process.terminate()
            process.wait(timeout=5)


def count_commands(port: int, decide: Callable[[], Any]) -> tuple[float, float]:
    """(client commands, server commands) per decision over COUNTED decisions, via MONITOR."""
    control = redis.Redis(port=port)
    stopper = redis.Redis(port=port)
    stopper.ping()  # connected (and introduced) before the count starts
    ready = threading.Event()
    seen: list[dict[str, Any]] = []

    def watch() -> None:
        with control.monitor() as monitor:
            ready.set()
            for event in monitor.listen():
                if event["command"] == "ECHO bench-stop":
                    return
                seen.append(event)

    watcher = threading.Thread(target=watch)
    watcher.start()
    ready.wait(5)
    time.sleep(0.05)
    for _ in range(COUNTED):
        decide()
    stopper.echo("bench-stop")
    watcher.join(10)
    control.close()
    stopper.close()
    client = sum(1 for event in seen if event["client_type"] != "lua")
    return client / COUNTED, len(seen) / COUNTED


def evalsha_per_decision(port: int, decide: Callable[[], Any]) -> float:
    """``EVALSHA`` calls per decision, from ``INFO commandstats`` (the server's own count)."""
    control = redis.Redis(port=port)
    control.config_resetstat()
    for _ in range(COUNTED):
        decide()
    stats = control.info("commandstats")
    control.close()
    return float(stats.get("cmdstat_evalsha", {}).get("calls", 0)) / COUNTED


def _cluster_port() -> int:
    while True:  # a free port whose cluster bus port (10000 higher) is free as well
        with socket.socket() as sock, socket.socket() as bus:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
            if port > 55535:
                continue
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
            return port


@contextmanager
def redis_cluster() -> Iterator[list[int]]:
    """Three masters joined by ``redis-cli --cluster create``; their ports."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise SystemExit("bench_redis needs redis-server and redis-cli on PATH")
    ports = [_cluster_port() for _ in range(3)]
    with tempfile.TemporaryDirectory() as workdir:
        processes = []
        try:
            for port in ports:
                args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
                args += ["--appendonly", "no", "--dir", workdir, "--cluster-enabled", "yes"]
                args += ["--cluster-config-file", f"nodes-{port}.conf"]
                processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
            for port in ports:
                _wait(lambda p=port: redis.Redis(port=p).ping())
            nodes = [f"127.0.0.1:{port}" for port in ports]
            create = [cli, "--cluster", "create", *nodes, "--cluster-yes"]
            subprocess.run(create, check=True, capture_output=True, timeout=60)
            for port in ports:
                _wait(lambda p=port: b"cluster_state:ok" in _cluster_info(p))
            yield ports
        finally:
            for process in processes:
                process.terminate()
                process.wait(timeout=5)


def _cluster_info(port: int) -> bytes:
    return bytes(redis.Redis(port=port).execute_command("CLUSTER", "INFO"))


def _wait(ready: Callable[[], Any]) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if ready():
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("the Redis Cluster did not start")
        time.sleep(0.05)


Impls = list[tuple[str, Callable[[], Any] | Factory]]


def _floor(port: int) -> tuple[str, Callable[[], Any]]:
    conn = redis.Redis(port=port)
    floor_sha = conn.script_load("return 1")
    return "floor: EVALSHA of `return 1`", lambda: conn.evalsha(floor_sha, 0)


def implementations(port: int) -> Impls:
    """(name, decide) pairs; a ``Factory`` makes its ``decide`` when it is measured."""
    out: Impls = [_floor(port)]
    store = open_storage(f"redis://127.0.0.1:{port}/0")
    settings = {
        RateLimitAlgorithm.TOKEN_BUCKET: Params(RateLimitAlgorithm.TOKEN_BUCKET, 1e-9, HUGE, 1, 1),
        RateLimitAlgorithm.LEAKY_BUCKET: Params(RateLimitAlgorithm.LEAKY_BUCKET, 1e-12, 1, 1, 1),
        RateLimitAlgorithm.FIXED_WINDOW: Params(RateLimitAlgorithm.FIXED_WINDOW, 1, 1, 1.0, HUGE),
        RateLimitAlgorithm.SLIDING_WINDOW: Params(
            RateLimitAlgorithm.SLIDING_WINDOW, 1, 1, 1.0, 10**6
        ),
    }
    for algorithm, params in settings.items():
        out.append(
            (
                f"buttress {algorithm.name}",
                lambda p=params: store.reserve("bench", "k", p, 1, 0.0),
            )
        )
    full = Params(RateLimitAlgorithm.SLIDING_WINDOW, 1, 1, 60.0, 1000)
    out.append(
        (
            "buttress SLIDING_WINDOW, full (1000 in the log)",
            lambda: store.reserve("bench", "full", full, 1, 0.0),
        )
    )
    given = open_storage(redis.Redis(port=port))
    bucket = settings[RateLimitAlgorithm.TOKEN_BUCKET]
    out.append(
        (
            "buttress TOKEN_BUCKET, around a redis.Redis client",
            lambda: given.reserve("bench", "given", bucket, 1, 0.0),
        )
    )

    from limits import RateLimitItemPerMinute, RateLimitItemPerSecond, storage, strategies

    limits_storage = storage.RedisStorage(f"redis://127.0.0.1:{port}")
    item = RateLimitItemPerSecond(HUGE)
    moving_item = RateLimitItemPerSecond(10**6)
    for cls, hit_item in (
        (strategies.FixedWindowRateLimiter, item),
        (strategies.SlidingWindowCounterRateLimiter, item),
        (strategies.MovingWindowRateLimiter, moving_item),
    ):
        strategy = cls(limits_storage)
        out.append(
            (f"limits {cls.__name__}", lambda s=strategy, i=hit_item: s.hit(i, "bench", "k"))
        )
    moving = strategies.MovingWindowRateLimiter(limits_storage)
    small = RateLimitItemPerMinute(1000)
    out.append(
        (
            "limits MovingWindowRateLimiter, full (1000 in the log)",
            lambda: moving.hit(small, "bench", "full"),
        )
    )

    def pyrate() -> Callable[[], Any]:
        # Built only when measured: its limiter runs a background leak task on Redis that
        # would be counted against the other implementations.
        from pyrate_limiter import Duration, Limiter, Rate, RedisBucket

        bucket = RedisBucket.init([Rate(HUGE, Duration.SECOND)], redis.Redis(port=port), "pyrate")
        limiter = Limiter(bucket)
        return lambda: limiter.try_acquire("k", blocking=False)

    out.append(("pyrate-limiter RedisBucket", Factory(pyrate)))
    return out


def cluster_implementations(ports: list[int]) -> tuple[int, Impls]:
    """The node serving the bench key; the floor on it and buttress's decision routed to it."""
    bucket = Params(RateLimitAlgorithm.TOKEN_BUCKET, 1e-9, HUGE, 1, 1)
    store = open_storage("redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports))
    slot = key_slot(store.limit_key("bench", "k"))
    slots = redis.Redis(port=ports[0]).execute_command("CLUSTER", "SLOTS")
    owner = next(int(node[1]) for low, high, node, *_ in slots if low <= slot <= high)

    def decide() -> Any:
        return store.reserve("bench", "k", bucket, 1, 0.0)

    return owner, [_floor(owner), ("buttress TOKEN_BUCKET via redis+cluster://", decide)]


Row = tuple[float, float, tuple[float, float], float]


def measure(port: int, impls: Impls) -> list[Row]:
    """(ns, decisions/s vs the floor, commands, EVALSHA) of each implementation (the first is
    the floor), against the server on ``port``."""
    counts: list[tuple[float, float]] = []
    evalshas: list[float] = []
    deciders: list[Callable[[], Any]] = []
    for _, entry in impls:
        decide = entry.make() if isinstance(entry, Factory) else entry
        for _ in range(1100):  # warm up: scripts loaded, the "full" logs filled
            decide()
        counts.append(count_commands(port, decide))
        evalshas.append(evalsha_per_decision(port, decide))
        deciders.append(decide)
    # The round trip on this kind of machine drifts by 2x within minutes, so every
    # implementation is timed in many short rounds, each between two timings of the floor,
    # and its figure is the median over rounds of (floor in that round) / (its time).
    runs: list[list[float]] = [[] for _ in impls]
    ratios: list[list[float]] = [[] for _ in impls]
    floor_decide = deciders[0]
    for _ in range(ROUNDS):
        for decide, times, rel in zip(deciders, runs, ratios, strict=True):
            before = _ns(floor_decide)
            ns = _ns(decide)
            after = _ns(floor_decide)
            times.append(ns)
            rel.append((before + after) / 2 / ns)
    timings = [statistics.median(times) for times in runs]
    relative = [statistics.median(rel) for rel in ratios]
    return list(zip(timings, relative, counts, evalshas, strict=True))


def table(title: str, impls: Impls, rows: list[Row]) -> None:
    print(title)
    print()
    print(
        "| implementation | µs/decision | decisions/s | decisions/s vs floor "
        "| round trips/decision | EVALSHA/decision (INFO commandstats) "
        "| server commands/decision (incl. inside scripts) |"
    )
    print("|---|---|---|---|---|---|---|")
    for (name, _), (ns, ratio, (sent, ran), evalsha) in zip(impls, rows, strict=True):
        print(
            f"| {name} | {ns / 1000:,.1f} | {1e9 / ns:,.0f} | {ratio:.2f} "
            f"| {_figure(sent)} | {_figure(evalsha)} | {_figure(ran)} |"
        )
    print()


def main() -> None:
    with redis_server() as port:
        impls = implementations(port)
        rows = measure(port, impls)
        version = redis.Redis(port=port).info("server")["redis_version"]
    title = f"### Redis rate-limit decisions, one thread (redis-server {version}, 127.0.0.1)"
    table(title, impls, rows)
    with redis_cluster() as ports:
        node, impls = cluster_implementations(ports)
        rows = measure(node, impls)
    table("### The same against a 3-node Redis Cluster, on the node of the key's slot", impls, rows)


def _ns(decide: Callable[[], Any], calls: int = 300) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        decide()
    return (time.perf_counter() - start) / calls * 1e9


def _figure(x: float) -> str:
    return f"{x:.0f}" if math.isclose(x, round(x), abs_tol=0.005) else f"{x:.2f}"


if __name__ == "__main__":
    main()
