"""``@with_fallback(ResourceType.X)``: a function's failures follow its team's fallback protocol.

Theory of operation
-------------------
The decorator does not hold a manager: each call finds one, so one class serves every team that
instantiates it. The manager is, in order: the ``resilience`` attribute of the call's first
argument (a method of a team object, as in ``self.resilience = ResilienceManager("marketing")``),
the manager made current with :func:`use_manager`, the process default set with
:func:`set_default_manager`, and otherwise a process default named ``"default"`` made on first
use. The call then runs through the manager's protocol host
(:class:`buttress.protocol.engine.ProtocolHost`).

``def``, ``async def`` and async generator functions (streamed answers) are all accepted; plain
generator functions are refused. ``@fn.degraded`` registers the cheaper variant a
DEGRADE_SERVICE step runs instead (same arguments); without one that step runs the function again
with :func:`buttress.degraded` true.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import threading
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar, cast

from .._config import callable_name
from ..health.manager import resource_type
from ..health.types import ResourceType
from .engine import ProtocolHost, _refuse_awaitable

__all__ = ["current_manager", "set_default_manager", "use_manager", "with_fallback"]

F = TypeVar("F", bound=Callable[..., Any])

_CURRENT: ContextVar[Any] = ContextVar("buttress_current_manager", default=None)
_DEFAULT: list[Any] = []
_DEFAULT_LOCK = threading.Lock()


def _host_of(manager: Any) -> ProtocolHost:
    host = getattr(manager, "protocol_host", None)
    if not isinstance(host, ProtocolHost):
        raise TypeError(f"expected a ResilienceManager, got {manager!r}")
    return host


def set_default_manager(manager: Any) -> None:
    """Make ``manager`` (a :class:`~buttress.ResilienceManager`, or ``None`` to forget it) the
    process default for ``with_fallback`` calls that find no other."""
    if manager is not None:
        _host_of(manager)
    with _DEFAULT_LOCK:
        _DEFAULT[:] = [] if manager is None else [manager]


@contextlib.contextmanager
def use_manager(manager: Any) -> Iterator[Any]:
    """Within the block (and the tasks it starts), ``with_fallback`` calls use ``manager``."""
    _host_of(manager)
    token = _CURRENT.set(manager)
    try:
        yield manager
    finally:
        _CURRENT.reset(token)


def current_manager() -> Any:
    """The manager a ``with_fallback`` call outside a team object would use now."""
    manager = _CURRENT.get()
    if manager is not None:
        return manager
    with _DEFAULT_LOCK:
        if not _DEFAULT:
            module = importlib.import_module("buttress.manager")
            _DEFAULT.append(module.ResilienceManager("default"))
        return _DEFAULT[0]


def _find(args: tuple[Any, ...]) -> tuple[ProtocolHost, bool]:
    if args:
        host = getattr(getattr(args[0], "resilience", None), "protocol_host", None)
        if isinstance(host, ProtocolHost):
            return host, True
    return _host_of(current_manager()), False


def with_fallback(
    resource: ResourceType | str, *, name: str | None = None, write: bool = False
) -> Callable[[F], F]:
    """Run the decorated function under its team's fallback protocol for ``resource``.

    Args:
        resource: the :class:`~buttress.ResourceType` the function depends on.
        name: the name in events and logs (default: the function's qualified name).
        write: the call writes (a database write): it goes to the first target (the primary)
            only, never switched to a replica; queued by a QUEUE_REQUEST step or failing clearly.

    Raises:
        ValueError: an unknown resource type. TypeError: a plain generator function.
    """
    rtype = resource_type(resource)
    if not isinstance(write, bool):
        raise TypeError(f"write must be True or False, got {write!r}")

    def decorate(fn: F) -> F:
        if not callable(fn):
            raise TypeError(f"with_fallback decorates a function, got {fn!r}")
        if inspect.isgeneratorfunction(fn):
            raise TypeError(
                f"with_fallback cannot guard the generator function {callable_name(fn)}: "
                "return a list, or make it an async generator (streamed)"
            )
        label = name or callable_name(fn)
        variant: list[Callable[..., Any] | None] = [None]
        wrapper: Any
        if inspect.isasyncgenfunction(fn):

            @functools.wraps(fn)
            def stream_wrapper(*args: Any, **kwargs: Any) -> Any:
                host, bound = _find(args)
                return host.stream(
                    rtype,
                    fn,
                    args,
                    kwargs,
                    variant=variant[0],
                    bound=bound,
                    name=label,
                    write=write,
                )

            wrapper = stream_wrapper
        elif inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                host, bound = _find(args)
                plan = host._plans.get(rtype)
                if plan is not None and plan.inline and not write:
                    # The success path inline: nothing in force but the protocol (and a cache).
                    try:
                        result = await fn(*args, **kwargs)
                    except Exception as error:
                        return await host.arecover(
                            plan, rtype, fn, args, kwargs, error, variant[0], bound, label
                        )
                    cache = plan.cache
                    if cache is not None:  # kept for USE_CACHE
                        host._remember(cache, fn, args, kwargs, result)
                    return result
                return await host.acall(
                    rtype,
                    fn,
                    args,
                    kwargs,
                    variant=variant[0],
                    bound=bound,
                    name=label,
                    write=write,
                )

            wrapper = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                host, bound = _find(args)
                plan = host._plans.get(rtype)
                if plan is not None and plan.inline and not write:
                    try:
                        result = fn(*args, **kwargs)
                    except Exception as error:
                        return host.recover(
                            plan, rtype, fn, args, kwargs, error, variant[0], bound, label
                        )
                    if hasattr(result, "__await__"):
                        _refuse_awaitable(fn, result)
                    cache = plan.cache
                    if cache is not None:  # kept for USE_CACHE
                        host._remember(cache, fn, args, kwargs, result)
                    return result
                return host.call(
                    rtype,
                    fn,
                    args,
                    kwargs,
                    variant=variant[0],
                    bound=bound,
                    name=label,
                    write=write,
                )

            wrapper = sync_wrapper

        def degraded(alternative: Callable[..., Any]) -> Callable[..., Any]:
            """Register the cheaper variant a DEGRADE_SERVICE step runs (same arguments)."""
            if not callable(alternative):
                raise TypeError(f"a degraded variant must be callable, got {alternative!r}")
            variant[0] = alternative
            return alternative

        wrapper.degraded = degraded
        wrapper.resource = rtype
        return cast(F, wrapper)

    return decorate
