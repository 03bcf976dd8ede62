"""The operator surface: health, readiness, metrics, state and a live event stream over HTTP.

Theory of operation
-------------------
:func:`create_app` (or :meth:`buttress.ResilienceManager.asgi_app`) makes a Starlette app for one
team, to run on its own (``buttress serve``) or to mount in an application
(``app.mount("/resilience", manager.asgi_app())``):

=================  ======================================================================
``/health``        the team's health report (the seed's JSON); with
                   ``Accept: application/health+json`` the IETF health-check draft's shape
                   (``pass``/``warn``/``fail``). 200 when healthy or degraded, 503 when
                   unhealthy.
``/live``          liveness: the process and its event loop answer. Depends on nothing
                   downstream, so a dead database never gets a pod restarted.
``/ready``         readiness: 503 in tier 4 (maintenance) or while a resource registered
                   with ``required=True`` is UNAVAILABLE or not yet checked.
``/metrics``       Prometheus text exposition, OpenMetrics when the scraper asks for it;
                   under ``PROMETHEUS_MULTIPROC_DIR`` the counters of every worker process
                   plus this process's gauges (resources, breakers, tiers).
``/state``         the dashboard's JSON snapshot (team, status, tier and its timeline,
                   circuits, rate limits, resources, queue, protocol steps).
``/events``        server-sent events: ``state`` (the ``/state`` JSON) on every change, at
                   most one per ``state_interval``; one frame per buttress event, named by
                   its class (``event: CircuitStateChanged``); a heartbeat comment. At most
                   100 streams at once (one more: 503 with ``Retry-After``).
``/``              the dashboard page (package data, no external assets).
=================  ======================================================================

No endpoint runs a check: every answer comes from the monitors' last results, rendered once and
kept until something changes or ``max_age`` passes (:mod:`buttress.server._hub`), so a thousand
probes within a check interval add no check and cost little more than a bare endpoint. Renderings
run in a worker thread; the event hook that feeds the stream does constant-time work on the
emitting thread and hands events to the loop without waiting, with bounded buffers per client, so
a slow client or a scrape never holds up a policy decision.

``token=`` requires ``Authorization: Bearer <token>`` on everything but ``/live``; a browser opens
the dashboard once at ``/?token=<token>``, which sets an HttpOnly cookie and redirects to ``/``.
Two ``Authorization`` headers, or two ``token`` parameters, are a 400: which one counts would be
a guess.
Credentials never reach an output: DSN passwords, ``password=``/``token=``/``api_key=`` values,
bearer credentials, API-key shaped tokens, the app's token and any string given in ``secrets=``
are replaced by ``***`` in every response.

Starlette (and uvicorn for ``buttress serve``) are the ``server`` extra, imported only when an app
is made.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..manager import ResilienceManager
    from ..policies.ratelimit import RateLimiter

__all__ = ["close_streams", "create_app"]


def _starlette() -> None:
    try:
        import starlette  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the operator endpoints need Starlette: pip install 'buttress[server]'"
        ) from exc


def create_app(
    manager: ResilienceManager,
    *,
    token: str | None = None,
    queue: Any = None,
    rate_limiters: Iterable[RateLimiter] = (),
    secrets: Iterable[str] = (),
    registry: Any = None,
    namespace: str = "buttress",
    metrics: bool = True,
    max_age: float = 0.5,
    metrics_max_age: float = 1.0,
    heartbeat: float = 15.0,
    state_interval: float = 0.25,
    manage: bool = False,
) -> Any:
    """The operator endpoints of ``manager`` as a Starlette app (see the module documentation).

    Args:
        manager: the team's :class:`buttress.ResilienceManager`.
        token: require ``Authorization: Bearer <token>`` everywhere but ``/live``.
        queue: a :class:`buttress.queue.RequestQueue` whose depth and dead letters ``/state``
            shows.
        rate_limiters: limiters shown in ``/state`` besides the process-wide one.
        secrets: strings never to show (replaced by ``***`` in every output).
        registry: the Prometheus registry to expose (default: the global one); Prometheus
            metrics are enabled on it (``metrics=False``: no ``/metrics``).
        namespace: the metric name prefix.
        max_age: seconds a rendering of ``/health`` and ``/state`` is reused while nothing
            changed (an event renders it again at once).
        metrics_max_age: seconds a ``/metrics`` rendering is reused.
        heartbeat: seconds between heartbeat comments on ``/events``.
        state_interval: shortest time between two ``state`` frames on ``/events``.
        manage: start the manager's monitoring with the app's lifespan and stop it after.

    Raises:
        ImportError: Starlette is not installed.
        TypeError / ValueError: a bad argument, naming it.
    """
    _starlette()
    from ..manager import ResilienceManager
    from ._app import build_app

    if not isinstance(manager, ResilienceManager):
        raise TypeError(f"manager must be a ResilienceManager, got {manager!r}")
    for name, value in (
        ("max_age", max_age),
        ("metrics_max_age", metrics_max_age),
        ("heartbeat", heartbeat),
        ("state_interval", state_interval),
    ):
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
    if token is not None and (not isinstance(token, str) or not token.strip()):
        raise ValueError("token must be a non-empty string, or None for no token")
    if isinstance(secrets, str):
        raise TypeError("secrets must be a list of strings, not one string")
    secrets = tuple(secrets)
    if not all(isinstance(s, str) for s in secrets):
        raise TypeError(f"secrets must be strings, got {secrets!r}")
    if queue is not None and not callable(getattr(queue, "stats", None)):
        raise TypeError(f"queue must be a RequestQueue (with stats()), got {queue!r}")
    return build_app(
        manager,
        token=token,
        queue=queue,
        rate_limiters=rate_limiters,
        secrets=secrets,
        registry=registry,
        namespace=namespace,
        metrics=metrics,
        max_age=float(max_age),
        metrics_max_age=float(metrics_max_age),
        heartbeat=float(heartbeat),
        state_interval=float(state_interval),
        manage=manage,
    )


def close_streams(app: Any) -> None:
    """End the ``/events`` streams of an app made by :func:`create_app`.

    Servers wait for open responses before shutting down; call this when yours begins to (``buttress
    serve`` does). Safe from any thread.
    """
    from ._app import close_streams as close

    close(app)
