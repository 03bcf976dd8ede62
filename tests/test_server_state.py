"""What ``/state`` gathers (rate limits, queue, protocol steps, tier timeline) and how the event
stream treats a slow client: bounded buffers, and an emitting thread that never waits."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from buttress import RateLimitConfig, RateLimiter, ResilienceManager
from buttress.degradation import DegradationManager
from buttress.errors import RateLimitExceeded
from buttress.events import Event, emit
from buttress.queue import RequestQueue
from buttress.server import create_app
from buttress.server._hub import CLIENT_BUFFER, Hub
from server_helpers import running


@dataclass(frozen=True, slots=True, kw_only=True)
class ProtocolStep(Event):
    """Stands for the fallback protocols' event: the hub knows it by its class name only."""

    kind: ClassVar[str] = "protocol_step"
    resource: str
    strategy: str
    target: str | None
    outcome: str


def team(name: str) -> ResilienceManager:
    return ResilienceManager(
        name, {"check_interval": 60}, degradation=DegradationManager(name=name, min_dwell=0)
    )


def test_rate_limits_queue_and_protocol_steps_appear_in_the_state() -> None:
    manager = team("server-state")
    limiter = RateLimiter()
    limiter.configure("server-state.api", RateLimitConfig(requests_per_second=1, burst_size=3))
    queue = RequestQueue("server-state", storage="memory://")

    @queue.handler("noop")
    def noop() -> None:
        return None

    for i in range(4):
        queue.put("noop", key=f"k{i}")
    app = create_app(manager, queue=queue, rate_limiters=[limiter], max_age=0.01)
    with running(app, manager=manager) as base, httpx.Client(base_url=base, timeout=5) as http:
        for _ in range(3):
            limiter.check_limit("server-state.api")
        for _ in range(2):
            with pytest.raises(RateLimitExceeded):
                limiter.check_limit("server-state.api")
        emit(
            ProtocolStep(
                policy="protocol",
                name="server-state",
                at=0.0,
                resource="database:orders",
                strategy="read_replica",
                target="replica-1",
                outcome="switched",
            )
        )

        def settled() -> dict[str, Any] | None:
            state: dict[str, Any] = http.get("/state").json()
            return state if state["rate_limits"]["server-state.api"]["rejections"] == 2 else None

        deadline = time.monotonic() + 10
        state = settled()
        while state is None and time.monotonic() < deadline:
            time.sleep(0.02)
            state = settled()
        assert state is not None
        limit = state["rate_limits"]["server-state.api"]
        assert limit["limit"] == 3.0
        assert 2.0 <= limit["used"] <= 3.0  # three admitted just now, refilling at 1/s
        assert state["queue"] == {"depth": 4, "dead_letters": 0}
        (step,) = state["protocol_steps"]
        assert step["resource"] == "database:orders"
        assert (step["strategy"], step["target"], step["outcome"]) == (
            "read_replica",
            "replica-1",
            "switched",
        )
        assert abs(step["at"] - time.time()) < 60


def test_the_state_reads_the_queue_without_counting_its_done_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On SQLite, stats() counts the done keys a queue remembers (a week of handled requests by
    # default): the state polls the backlog instead, the depth and the dead letters.
    queue = RequestQueue("server-state-done", storage=f"sqlite:///{tmp_path / 'q.db'}")

    @queue.handler("noop")
    def noop() -> None:
        return None

    for i in range(5):
        queue.put("noop", key=f"k{i}")
    assert queue.process(limit=3) == 3

    def no_stats() -> None:
        raise AssertionError("the state counted the done keys")

    monkeypatch.setattr(queue, "stats", no_stats)
    hub = Hub(team("server-state-done"), queue=queue)
    try:
        assert hub._queue() == {"depth": 2, "dead_letters": 0}
    finally:
        queue.close()


def test_a_slow_client_never_holds_up_the_emitting_thread() -> None:
    manager = team("server-slow")
    app = create_app(manager, heartbeat=60)
    hub: Hub = app.state.buttress_hub
    with running(app, manager=manager) as base:
        # A client that asks for the stream and then never reads a byte.
        slow = socket.create_connection(("127.0.0.1", int(base.rsplit(":", 1)[1])))
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            deadline = time.monotonic() + 10
            while not hub.clients:
                assert time.monotonic() < deadline, "the stream did not start"
                time.sleep(0.01)
            emitted = threading.Event()

            def storm() -> None:
                for i in range(20_000):
                    emit(
                        ProtocolStep(
                            policy="protocol",
                            name="server-slow",
                            at=float(i),
                            resource="network:api",
                            strategy="x" * 2000,
                            target=None,
                            outcome="switched",
                        )
                    )
                emitted.set()

            thread = threading.Thread(target=storm)
            thread.start()
            thread.join(timeout=60)
            assert emitted.is_set()  # every emit returned although nobody reads the stream
            while hub.outbox:
                assert time.monotonic() < deadline + 60, "the loop never drained the outbox"
                time.sleep(0.01)
            (client,) = hub.clients
            assert len(client.buffer) <= CLIENT_BUFFER
            assert client.dropped + hub.dropped > 0
            assert httpx.get(f"{base}/live", timeout=5).status_code == 200
        finally:
            slow.close()


def test_the_tier_timeline_records_each_change_with_its_reason() -> None:
    manager = team("server-timeline")
    manager.degradation.register_service("orders_db")
    app = create_app(manager, max_age=0.01)
    with running(app, manager=manager) as base, httpx.Client(base_url=base, timeout=5) as http:
        manager.degradation.update_health("orders_db", healthy=False, error="down")
        manager.degradation.update_health("orders_db", healthy=True)
        manager.degradation.get_current_tier()
        timeline = http.get("/state").json()["tier"]["timeline"]
    assert [entry["level"] for entry in timeline] == [1, 4, 1]
    assert "orders_db" in timeline[1]["reason"]
    assert timeline[0]["at"] <= timeline[1]["at"] <= timeline[2]["at"]
