"""What resource monitoring costs a process: CPU time of 100 monitors checked every second.

Run: ``python benchmarks/bench_monitoring.py [--seconds 20] [--monitors 100]``. Each scenario
runs the monitors for ``--seconds`` of real time and reads the process's CPU time (all threads,
user + system) before and after; the figure is that CPU time as a percentage of one core over
the wall time, next to the same measure of an idle event loop (the floor). The checks are
trivial, so what is measured is buttress's part: scheduling, starting a task (or a worker
thread's job) per check, thresholds, hysteresis, the Theil-Sen trend over 20 samples and the
latency baseline over 30, and building the new state.

Scenarios:

* ``idle loop``: an event loop with nothing to do (the floor);
* ``async checks``: ``async def`` checks returning a usage reading, all due together;
* ``async checks, staggered``: the same with intervals 1.000 s, 1.001 s ... so the scheduler
  wakes for nearly every check on its own (the worst case for wake-ups);
* ``def checks``: plain functions, each run in a worker thread;
* ``thread mode``: async checks on the manager's own thread (``start_in_thread``) while the
  main thread sleeps, as a sync application runs them.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import random
import sys
import time
from collections.abc import Callable
from typing import Any

from buttress.health import Reading, ResourceManager, ResourceType


def make_async_check(seed: int) -> Callable[[], Any]:
    rng = random.Random(seed)

    async def check() -> Reading:
        return Reading(usage=40.0 + rng.random() * 20.0)

    return check


def make_def_check(seed: int) -> Callable[[], Any]:
    rng = random.Random(seed)

    def check() -> float:
        return 40.0 + rng.random() * 20.0

    return check


def manager_with(monitors: int, factory: Callable[[int], Any], staggered: bool) -> ResourceManager:
    manager = ResourceManager("bench", check_interval=1.0)
    for i in range(monitors):
        interval = 1.0 + i * 0.001 if staggered else 1.0
        manager.register(ResourceType.NETWORK, f"m{i}", factory(i), interval=interval)
    return manager


def measure(run: Callable[[], ResourceManager | None], seconds: float) -> tuple[float, int]:
    """(percent of one core, checks started) while ``run`` runs for ``seconds``."""
    cpu, wall = time.process_time(), time.perf_counter()
    manager = run()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return 100.0 * cpu / wall, (manager.executions if manager is not None else 0)


def idle(seconds: float) -> Callable[[], None]:
    def run() -> None:
        asyncio.run(asyncio.sleep(seconds))

    return run


def on_loop(seconds: float, manager: ResourceManager) -> Callable[[], ResourceManager]:
    async def main() -> None:
        async with manager:
            await asyncio.sleep(seconds)

    def run() -> ResourceManager:
        asyncio.run(main())
        return manager

    return run


def on_thread(seconds: float, manager: ResourceManager) -> Callable[[], ResourceManager]:
    def run() -> ResourceManager:
        manager.start_in_thread()
        time.sleep(seconds)
        manager.stop()
        return manager

    return run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--monitors", type=int, default=100)
    args = parser.parse_args(argv)
    seconds, n = args.seconds, args.monitors
    print(
        f"{n} monitors, 1 s interval, {seconds:g} s per scenario; CPython "
        f"{platform.python_version()} on {platform.machine()}\n"
    )
    scenarios: list[tuple[str, Callable[[], Any]]] = [
        ("idle loop (floor)", idle(seconds)),
        ("async checks", on_loop(seconds, manager_with(n, make_async_check, False))),
        ("async checks, staggered", on_loop(seconds, manager_with(n, make_async_check, True))),
        ("def checks (worker threads)", on_loop(seconds, manager_with(n, make_def_check, False))),
        ("thread mode, async checks", on_thread(seconds, manager_with(n, make_async_check, False))),
    ]
    print("| scenario | CPU, % of one core | net of the idle loop | checks | CPU µs per check |")
    print("|---|---|---|---|---|")
    floor = 0.0
    for label, run in scenarios:
        percent, checks = measure(run, seconds)
        if not checks:
            floor = percent
            print(f"| {label} | {percent:.2f} | — | — | — |")
            continue
        per_check = (percent - floor) / 100.0 * seconds / checks * 1e6
        print(f"| {label} | {percent:.2f} | {percent - floor:.2f} | {checks:,} | {per_check:.0f} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
