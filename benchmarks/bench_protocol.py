"""Success-path cost of ``@with_fallback`` beside the bare function and a hand-written wrapper.

Run: ``python benchmarks/bench_protocol.py``. A call that succeeds first time through a fallback
protocol should cost about what a hand-written ``try``/``except`` wrapper that looks up its
team's state costs. Rows, per ``def`` and ``async def``:

* the bare method;
* a hand-written floor: a wrapper that reads ``self.resilience`` and calls in a ``try``;
* ``with_fallback`` with the team's protocol (the API quota default: no cache on the success
  path);
* ``with_fallback`` with a USE_CACHE step (every answer is kept for a later failure);
* ``with_fallback`` with registered targets (the MCP default protocol, no cache: a target chosen,
  made current and told of the success per call).
"""

from __future__ import annotations

import functools
from typing import Any

from _timing import ans_per_call, ns_per_call, table
from buttress import (
    FallbackAction,
    FallbackStrategy,
    ResilienceManager,
    ResourceType,
    with_fallback,
)


def hand_written(fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        manager = self.resilience  # the lookup with_fallback does too
        try:
            return fn(self, *args, **kwargs)
        except Exception:
            manager.record_failure("x")
            raise

    return wrapper


def ahand_written(fn: Any) -> Any:
    @functools.wraps(fn)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        manager = self.resilience
        try:
            return await fn(self, *args, **kwargs)
        except Exception:
            manager.record_failure("x")
            raise

    return wrapper


class Team:
    def __init__(self, name: str) -> None:
        self.resilience = ResilienceManager(name)

    def bare(self, x: int) -> int:
        return x + 1

    async def abare(self, x: int) -> int:
        return x + 1

    hand = hand_written(bare)
    ahand = ahand_written(abare)
    quota = with_fallback(ResourceType.API_QUOTA)(bare)
    aquota = with_fallback(ResourceType.API_QUOTA)(abare)
    cached = with_fallback(ResourceType.MEMORY)(bare)
    acached = with_fallback(ResourceType.MEMORY)(abare)
    targeted = with_fallback(ResourceType.MCP_SERVER)(bare)
    atargeted = with_fallback(ResourceType.MCP_SERVER)(abare)


ROUNDS = 3


def measure(rows: list[tuple[str, Any]], timer: Any) -> list[float]:
    """The least of ``ROUNDS`` medians per row, the rows measured in turn each round (a busy
    machine slows one round, not one row)."""
    best = [float("inf")] * len(rows)
    for _ in range(ROUNDS):
        for i, (_, call) in enumerate(rows):
            best[i] = min(best[i], timer(call))
    return best


def main() -> None:
    team = Team("bench")
    team.resilience.register_targets(ResourceType.MCP_SERVER, ["primary", "secondary"])
    team.resilience.set_protocol(ResourceType.MEMORY, [FallbackAction(FallbackStrategy.USE_CACHE)])
    sync_rows = [
        ("bare method", lambda: team.bare(1)),
        ("hand-written wrapper (floor)", lambda: team.hand(1)),
        ("with_fallback(API_QUOTA)", lambda: team.quota(1)),
        ("with_fallback + USE_CACHE", lambda: team.cached(1)),
        ("with_fallback + targets", lambda: team.targeted(1)),
    ]
    figures = measure(sync_rows, ns_per_call)
    print(
        table(
            [
                ("def", label, ns, figures[1])
                for (label, _), ns in zip(sync_rows, figures, strict=True)
            ],
            "with_fallback success path, def (ns per call, ratio to the floor)",
        )
    )
    async_rows = [
        ("bare method", lambda: team.abare(1)),
        ("hand-written wrapper (floor)", lambda: team.ahand(1)),
        ("with_fallback(API_QUOTA)", lambda: team.aquota(1)),
        ("with_fallback + USE_CACHE", lambda: team.acached(1)),
        ("with_fallback + targets", lambda: team.atargeted(1)),
    ]
    figures = measure(async_rows, ans_per_call)
    print(
        table(
            [
                ("async def", label, ns, figures[1])
                for (label, _), ns in zip(async_rows, figures, strict=True)
            ],
            "with_fallback success path, async def (ns per call, ratio to the floor)",
        )
    )


if __name__ == "__main__":
    main()
