"""A call that ends neither way (cancelled, interrupted) gives back the probe it was sent on.

A target that failed is probed back one call at a time after its cooldown. The probe slot is
taken when a call is sent to the target and freed by the call's outcome; a call that has no
outcome (its task cancelled, ``KeyboardInterrupt`` in it) must free it too, or the target is
skipped until the probe's lease ends (a shared pool) or for good (a pool in memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any

import pytest

from buttress import (
    FallbackAction,
    FallbackStrategy,
    ResilienceManager,
    ResourceType,
    current_target,
)
from buttress.backends.base import MemoryStore
from buttress.testing import FakeClock

QUOTA = ResourceType.API_QUOTA


def cooled(clock: FakeClock, names: list[str], **options: Any) -> ResilienceManager:
    """A team whose target "primary" failed once and has cooled down: it takes one probe."""
    manager = ResilienceManager("probing", clock=clock, **options)
    pool = manager.register_targets(QUOTA, names, cooldown=2.0, probes=1)
    manager.set_protocol(QUOTA, [FallbackAction(FallbackStrategy.SWITCH_PROVIDER)])
    choice = pool.choose(exclude=[name for name in names if name != "primary"])
    assert choice is not None
    pool.failed(choice, ConnectionError("down"))
    clock.advance(2.5)
    return manager


def probe_is_free(manager: ResilienceManager) -> bool:
    """Whether "primary" can be probed now (its one probe is not held by a call)."""
    pool = manager.protocol_host.pool(QUOTA)
    assert pool is not None
    choice = pool.choose(exclude=[name for name in pool.names if name != "primary"])
    if choice is None:
        return False
    assert choice.probe
    pool.release(choice)
    return True


def test_an_interrupted_sync_call_gives_back_its_probe(clock: FakeClock) -> None:
    manager = cooled(clock, ["primary", "secondary"])
    sent: list[str | None] = []

    def interrupted() -> str:
        sent.append(current_target())
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        manager.call_with_resilience(interrupted, QUOTA)
    assert sent == ["primary"]  # the fast path sent it as the probe
    assert probe_is_free(manager)


@pytest.mark.parametrize(
    "names", [["primary", "secondary"], ["spare", "primary"]], ids=["fast-path", "walk"]
)
def test_a_cancelled_async_call_gives_back_its_probe(clock: FakeClock, names: list[str]) -> None:
    # "walk": the first attempt goes to a healthy "spare" that fails, the switch sends the
    # second to "primary" as its probe, from inside the protocol's walk
    manager = cooled(clock, names)
    sent: list[str | None] = []
    probing = asyncio.Event()

    async def hangs_on_primary() -> str:
        sent.append(current_target())
        if current_target() == "spare":
            raise ConnectionError("spare down")
        probing.set()
        await asyncio.Event().wait()
        return "never"

    async def scenario() -> None:
        task = asyncio.create_task(manager.with_resilience(hangs_on_primary, QUOTA))
        await probing.wait()
        assert not probe_is_free(manager)  # the call holds it
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert sent == names[: names.index("primary") + 1]
    assert probe_is_free(manager)


def test_a_call_cancelled_while_its_target_is_chosen_in_a_thread_gives_back_the_probe(
    clock: FakeClock,
) -> None:
    # a shared pool: the fast path chooses in a worker thread, which goes on after the cancel
    entered, gate = threading.Event(), threading.Event()

    class GatedStore(MemoryStore):
        hold = False

        def targets(self, pool: str) -> dict[str, str]:
            if self.hold:
                self.hold = False
                entered.set()
                gate.wait(10)
            return super().targets(pool)

    store = GatedStore()
    manager = cooled(clock, ["primary", "secondary"], storage=store)
    sent: list[str | None] = []

    async def works() -> str:
        sent.append(current_target())
        return "served"

    async def scenario() -> None:
        store.hold = True
        task = asyncio.create_task(manager.with_resilience(works, QUOTA))
        assert await asyncio.to_thread(entered.wait, 10)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        gate.set()

    try:
        asyncio.run(scenario())  # its shutdown waits for the worker thread
        assert sent == []
        assert probe_is_free(manager)
    finally:
        gate.set()
        manager.close()
