"""What a guarded callable is: sync, async, or something a policy must refuse.

A policy decides at decoration whether it guards a ``def`` or an ``async def``. Decorators,
partials and callable objects hide the answer from ``inspect.iscoroutinefunction``, so
:func:`is_async` looks through them (``functools.partial``, an object's ``__call__``). What still
looks synchronous is decided by what the call returns: a policy's sync wrapper that gets an
awaitable back (a lambda returning a coroutine, a function returning a task) does not hand it to
the caller unguarded, it returns a coroutine that awaits it under the policy (:func:`is_awaitable`
is the cheap test it uses, one attribute look-up).

Generator functions (sync or async) are refused: calling one only creates the generator, and its
body, where the work and the failures are, runs later as the caller iterates, outside any policy.

:class:`RepeatedWarnings` is where the policies' per-call warnings (a give-up, a time-out) are
summarised per operation.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from . import events as _events
from ._config import callable_name
from .clock import Clock

__all__ = [
    "F",
    "P",
    "Args",
    "Fn",
    "Kwargs",
    "RepeatedWarnings",
    "T",
    "guard_sync",
    "guarded_kind",
    "is_async",
    "is_awaitable",
    "refused_awaitable",
    "resolved",
]

#: The parts of one guarded call, as the policies' shells hand them on.
Fn = Callable[..., Any]
Args = tuple[Any, ...]
Kwargs = dict[str, Any]

#: What a decorator takes and gives back (the same type), what a call returns, and its parameters.
F = TypeVar("F", bound=Fn)
T = TypeVar("T")
P = ParamSpec("P")


def _target(fn: object) -> object:
    while isinstance(fn, functools.partial):
        fn = fn.func
    return fn


def _test(fn: object, test: Callable[[Any], bool]) -> bool:
    target = _target(fn)
    if test(target):
        return True
    if inspect.isfunction(target) or inspect.ismethod(target) or isinstance(target, type):
        return False
    return callable(target) and test(type(target).__call__)


def is_async(fn: object) -> bool:
    """Whether calling ``fn`` starts a coroutine, as far as can be told without calling it."""
    return _test(fn, inspect.iscoroutinefunction)


def is_awaitable(value: object) -> bool:
    """Whether ``value`` can be awaited (a coroutine, task, future: anything with ``__await__``)."""
    return hasattr(value, "__await__")


async def resolved(value: Any) -> Any:
    """``value`` awaited when it is awaitable, else ``value`` itself."""
    return await value if hasattr(value, "__await__") else value


def refused_awaitable(policy: str, fn: object, result: object) -> TypeError:
    """The error for a plain callable that returned an awaitable to a policy that cannot await it.

    A policy whose sync wrapper only gates the call (a breaker counting its outcome, a bulkhead
    holding a slot while it runs) would hand back work that runs later, outside it. The awaitable
    is closed when it is a coroutine (no "never awaited" warning), and the caller is told what to
    do instead.
    """
    close = getattr(result, "close", None)
    if inspect.iscoroutine(result) and close is not None:
        close()
    return TypeError(
        f"{policy}: {callable_name(fn)} is a plain callable that returned an awaitable "
        f"({type(result).__name__}); its work would run outside the {policy}. Decorate an "
        f"'async def', or use 'await <{policy}>.acall(fn, ...)'"
    )


def guarded_kind(policy: str, fn: object) -> bool:
    """Check that ``policy`` can guard ``fn``; True when ``fn`` is async.

    Raises:
        TypeError: ``fn`` is not callable, or is a generator function (sync or async).
    """
    if not callable(fn):
        raise TypeError(f"{policy} decorates a callable, got {fn!r}")
    if _test(fn, inspect.isgeneratorfunction) or _test(fn, inspect.isasyncgenfunction):
        raise TypeError(
            f"{policy} cannot guard the generator function {callable_name(fn)}: calling it only "
            "creates the generator, and its body runs later as the caller iterates, outside the "
            f"policy. Guard a function that consumes it (or returns a list) instead"
        )
    return is_async(fn)


def guard_sync(
    fn: Fn,
    catch: type[BaseException] | tuple[type[BaseException], ...],
    failed: Callable[[Fn, Args, Kwargs, Any], Any],
    awaitable: Callable[[Fn, Args, Kwargs, Any], Any],
    keep: Callable[[Args, Kwargs, Any], None] | None = None,
) -> Fn:
    """A plain function's fast path under a policy that recovers from ``catch``.

    The wrapper calls ``fn``; on ``catch`` it returns ``failed(fn, args, kwargs, error)``, on an
    awaitable result ``awaitable(fn, args, kwargs, result)`` (a coroutine that awaits it under the
    policy), and otherwise the result, untouched, after ``keep(args, kwargs, result)`` if given.
    """

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except catch as error:
            return failed(fn, args, kwargs, error)
        if hasattr(result, "__await__"):  # what is_awaitable() tests, inlined
            return awaitable(fn, args, kwargs, result)
        if keep is not None:
            keep(args, kwargs, result)
        return result

    return guarded


class RepeatedWarnings:
    """One :class:`buttress.events.Repeats` per operation and time scale, for one kind of warning.

    An operation is a call site (a code object) or a policy's given name, so policies built per
    call share it, and a fresh lambda per call does not add one. Real clocks share one entry; each
    virtual clock has its own, since its times cannot be compared with another's. Entries of
    virtual clocks (test clocks, made by the thousand) are dropped past :attr:`LIMIT` entries.

    Args:
        policy: the policy kind (the logger is ``buttress.<policy>``).
        what: the summary's noun phrase, formatted with the operation's ``name``.
    """

    LIMIT = 1024

    __slots__ = ("_table", "policy", "what")

    def __init__(self, policy: str, what: str) -> None:
        self.policy, self.what = policy, what
        self._table: dict[tuple[object, Clock | None], _events.Repeats] = {}

    def hit(
        self,
        site: object,
        name: Callable[[], str],
        clock: Clock,
        real: bool,
        now: float,
        first: Callable[[], str],
    ) -> None:
        """Count one warning of ``site`` at ``now`` on ``clock``; ``first()`` is its full text."""
        key = (site, None if real else clock)
        repeats = self._table.get(key)
        if repeats is None:
            if len(self._table) >= self.LIMIT:
                for old in [k for k in self._table if k[1] is not None]:
                    self._table.pop(old, None)
            label = name()
            made = _events.Repeats(self.policy, label, self.what.format(name=label))
            repeats = self._table.setdefault(key, made)
        repeats.hit(now, first)
