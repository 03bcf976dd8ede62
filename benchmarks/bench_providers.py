"""Provider switching: buttress's TargetPool beside LiteLLM's Router, on local stand-in providers.

Run: ``python benchmarks/bench_providers.py [--seconds 60]`` (after ``pip install -e '.[bench]'``).

Two stand-in providers speak the OpenAI chat completions API over HTTP/1.1 on 127.0.0.1 (an
asyncio server in a child process, so the routers' process measures only its own work): a
healthy ``secondary``, and a ``primary`` whose behaviour the benchmark sets. The child records
which provider served each request, in order, and every failed response it gave.

Scenarios, each run against each router with sequential calls:

1. half-broken primary: the primary answers 500 to half its calls at random for ``--seconds``.
   Reported: the primary's share of traffic (all of it, and over the second half, once a growing
   cooldown has grown), switches between providers per minute, failed round trips per minute
   (500s served), and errors surfaced to the caller.
2. outage: the primary answers 500 to every call for 10 s (plus 0, 0.3, 0.6, 0.9 or 1.2 s: five
   runs, each with a fresh router, so the recovery falls at different points of the routers'
   schedules), then recovers; calls go on for 5 s more. Reported, as the median and the worst of
   the five runs: the time from the recovery to the first call the recovered primary served, and
   to the first call of the run it kept for good (after which it carries all traffic): buttress
   returns through its probes (at most ``max_probe_interval`` apart while the primary is down; a
   variant with 0.5 s shows the trade against failed round trips), LiteLLM at its cooldown's
   expiry.
3. overhead: both providers healthy; the mean time per call of a direct HTTP call (the same httpx
   client), of buttress (pool + the same call), and of LiteLLM's ``Router.completion``, in
   alternating rounds.

buttress is driven by the loop a fallback protocol runs (``call_buttress``): choose a target,
call it, report the outcome; a provider error moves to the next target at once. It is measured again
through the public path (``make_with_fallback``): an ``async def`` under
``@with_fallback(ResourceType.API_QUOTA)`` with the targets registered on a ResilienceManager,
each call run on one event loop; its overhead is read beside the same call made directly with
httpx.AsyncClient on that loop. LiteLLM is
configured as its documentation describes for a primary with a fallback in one model group
(deployments ordered by ``order``, ``num_retries`` to reach the other, ``cooldown_time``); its
telemetry and network look-ups are off (``LITELLM_LOCAL_MODEL_COST_MAP``), and it talks only to
127.0.0.1 (``api_base``).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
os.environ.setdefault("LITELLM_TELEMETRY", "False")
os.environ.setdefault("LITELLM_LOG", "CRITICAL")
os.environ.setdefault("NO_PROXY", "127.0.0.1")

COOLDOWN = 1.0  # both routers' base cooldown, seconds (LiteLLM's default)
OUTAGE = 10.0
AFTER = 5.0
#: Added to OUTAGE, one run each: the recovery falls at a different point of each router's probe
#: or cooldown schedule (buttress probes a down primary every 1.5 s, LiteLLM re-admits every 1 s).
PHASES = (0.0, 0.3, 0.6, 0.9, 1.2)
PAYLOAD = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

# -- the stand-in providers (child process) --------------------------------------------------------

_OK = json.dumps(
    {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
).encode()
_FAIL = json.dumps({"error": {"message": "stand-in failure", "type": "server_error"}}).encode()


def serve() -> None:
    """The child: the two providers and a control port; prints the three ports, then serves."""
    state: dict[str, Any] = {
        "mode": "ok",
        "log": [],
        "times": [],
        "failures": 0,
        "rng": random.Random(1),
    }

    def respond(name: str, path: str, body: bytes) -> tuple[int, bytes]:
        if name == "control":
            if path.startswith("/mode/"):
                state["mode"] = path.removeprefix("/mode/")
                return 200, b"{}"
            if path == "/stats":
                out = json.dumps(
                    {
                        "log": "".join(state["log"]),
                        "failures": state["failures"],
                        "times": state["times"],
                    }
                )
                state["log"], state["failures"], state["times"] = [], 0, []
                return 200, out.encode()
            return 404, b"{}"
        if not path.endswith("/chat/completions"):
            return 404, b"{}"
        state["log"].append(name[0])  # "p" or "s"
        state["times"].append(time.monotonic())  # one clock for every process of the machine
        if name == "primary":
            mode = state["mode"]
            if mode == "down" or (mode == "flaky" and state["rng"].random() < 0.5):
                state["failures"] += 1
                return 500, _FAIL
        return 200, _OK

    async def handle(name: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    key, _, value = line.partition(":")
                    if key.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length) if length else b""
                status, out = respond(name, path, body)
                reason = {200: "OK", 404: "Not Found", 500: "Internal Server Error"}[status]
                writer.write(
                    f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(out)}\r\n\r\n".encode()
                    + out
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        servers = []
        for name in ("primary", "secondary", "control"):
            server = await asyncio.start_server(
                lambda r, w, n=name: handle(n, r, w), "127.0.0.1", 0
            )
            servers.append(server)
        print(" ".join(str(s.sockets[0].getsockname()[1]) for s in servers), flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the benchmark (parent process) ----------------------------------------------------------------


class Providers:
    """The child process, seen from the benchmark."""

    def __init__(self) -> None:
        import httpx

        self.process = subprocess.Popen(
            [sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        ports = [int(p) for p in self.process.stdout.readline().split()]
        self.primary, self.secondary, control = ports
        self._control = httpx.Client(base_url=f"http://127.0.0.1:{control}")

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}/v1"

    def mode(self, mode: str) -> None:
        self._control.post(f"/mode/{mode}")

    def stats(self) -> tuple[str, int, list[float]]:
        data = self._control.get("/stats").json()
        return data["log"], data["failures"], data["times"]

    def close(self) -> None:
        self._control.close()
        self.process.kill()
        self.process.wait()


class ProviderError(Exception):
    """A provider answered with an error status."""

    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status_code = status


def make_buttress(providers: Providers, **options: Any) -> tuple[Callable[[], Any], Any]:
    import httpx

    from buttress import TargetPool

    client = httpx.Client()
    urls = {
        "primary": providers.url(providers.primary) + "/chat/completions",
        "secondary": providers.url(providers.secondary) + "/chat/completions",
    }

    def target(url: str) -> Callable[[], Any]:
        def call() -> Any:
            response = client.post(url, json=PAYLOAD)
            if response.status_code >= 400:
                raise ProviderError(response.status_code)
            return response.json()

        return call

    pool = TargetPool(
        "llm",
        {name: target(url) for name, url in urls.items()},
        cooldown=COOLDOWN,
        **options,
    )

    def call_buttress() -> Any:
        tried: set[str] = set()
        while True:
            choice = pool.choose(tried)
            if choice is None:
                raise pool.exhausted_error(tried)
            try:
                result = choice.target()
            except Exception as exc:
                pool.failed(choice, exc)
                tried.add(choice.name)
                continue
            pool.succeeded(choice)
            return result

    return call_buttress, client


_teams = itertools.count()
#: One event loop for every async subject, so each pays the same loop round per call.
_loop = asyncio.new_event_loop()


def make_with_fallback(providers: Providers, **options: Any) -> tuple[Callable[[], Any], Any]:
    """The public path: an ``async def`` under ``@with_fallback(ResourceType.API_QUOTA)``, its
    targets (async callables over one httpx.AsyncClient) registered on a ResilienceManager."""
    import httpx

    from buttress import ResilienceManager, ResourceType, with_fallback

    client = httpx.AsyncClient()
    urls = {
        "primary": providers.url(providers.primary) + "/chat/completions",
        "secondary": providers.url(providers.secondary) + "/chat/completions",
    }

    def target(url: str) -> Callable[[], Any]:
        async def call() -> Any:
            response = await client.post(url, json=PAYLOAD)
            if response.status_code >= 400:
                raise ProviderError(response.status_code)
            return response.json()

        return call

    class Team:
        def __init__(self) -> None:
            self.resilience = ResilienceManager(f"bench-{next(_teams)}")
            self.resilience.register_targets(
                ResourceType.API_QUOTA,
                {name: target(url) for name, url in urls.items()},
                cooldown=COOLDOWN,
                storage=None,
                **options,
            )

        @with_fallback(ResourceType.API_QUOTA)
        async def complete(self) -> Any:
            raise AssertionError("a callable target is called instead")

    team = Team()

    def call_with_fallback() -> Any:
        return _loop.run_until_complete(team.complete())

    return call_with_fallback, client


def direct_async_call(providers: Providers) -> tuple[Callable[[], Any], Any]:
    """The direct call of :func:`direct_call` with httpx.AsyncClient, on the same loop."""
    import httpx

    client = httpx.AsyncClient()
    url = providers.url(providers.primary) + "/chat/completions"

    async def call() -> Any:
        response = await client.post(url, json=PAYLOAD)
        if response.status_code >= 400:
            raise ProviderError(response.status_code)
        return response.json()

    def run() -> Any:
        return _loop.run_until_complete(call())

    return run, client


def make_litellm(providers: Providers) -> tuple[Callable[[], Any], Any]:
    import litellm
    from litellm import Router

    litellm.telemetry = False
    litellm.suppress_debug_info = True
    deployments = [
        {
            "model_name": "chat",
            "litellm_params": {
                "model": "openai/gpt-4o-mini",  # a model in the local cost map
                "api_base": providers.url(port),
                "api_key": "sk-local",
                "order": order,
                "max_retries": 0,
            },
        }
        for order, port in ((1, providers.primary), (2, providers.secondary))
    ]
    router = Router(model_list=deployments, num_retries=2, cooldown_time=COOLDOWN, retry_after=0)

    def call_litellm() -> Any:
        return router.completion(model="chat", messages=PAYLOAD["messages"], max_tokens=4)

    return call_litellm, router


def direct_call(providers: Providers) -> tuple[Callable[[], Any], Any]:
    import httpx

    client = httpx.Client()
    url = providers.url(providers.primary) + "/chat/completions"

    def call() -> Any:
        response = client.post(url, json=PAYLOAD)
        if response.status_code >= 400:
            raise ProviderError(response.status_code)
        return response.json()

    return call, client


def switches(log: str) -> int:
    return sum(1 for a, b in itertools.pairwise(log) if a != b)


def half_broken(call: Callable[[], Any], providers: Providers, seconds: float) -> dict[str, Any]:
    providers.stats()
    providers.mode("flaky")
    errors = calls = 0
    start = time.perf_counter()
    half = start + seconds / 2
    first_half = ""
    while (now := time.perf_counter()) - start < seconds:
        if not first_half and now >= half:
            first_half, failures_first, _ = providers.stats()
        try:
            call()
        except Exception:
            errors += 1
        calls += 1
    second_half, failures_second, _ = providers.stats()
    log = first_half + second_half
    minutes = seconds / 60
    providers.mode("ok")
    return {
        "calls": calls,
        "share": log.count("p") / len(log),
        "share_late": second_half.count("p") / max(1, len(second_half)),
        "switches_per_min": switches(log) / minutes,
        "failed_per_min": (failures_first + failures_second) / minutes,
        "errors": errors,
    }


def outage(call: Callable[[], Any], providers: Providers, seconds: float) -> dict[str, Any]:
    providers.stats()
    providers.mode("down")
    errors = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        try:
            call()
        except Exception:
            errors += 1
    _, outage_failures, _ = providers.stats()
    providers.mode("ok")
    recovered = time.monotonic()
    while time.monotonic() - recovered < AFTER:
        try:
            call()
        except Exception:
            errors += 1
    log, _, times = providers.stats()
    served = [(at - recovered, who) for who, at in zip(log, times, strict=True) if at >= recovered]
    elsewhere = [t for t, who in served if who == "s"]
    on_primary = [t for t, who in served if who == "p"]
    last_elsewhere = max(elsewhere) if elsewhere else 0.0
    # the return itself: from the first call the recovered primary served to the first call
    # of the run it kept for good (buttress: its probes; LiteLLM: one call, at once)
    first_primary = min(on_primary) if on_primary else float("nan")
    for_good = min((t for t in on_primary if t > last_elsewhere), default=float("nan"))
    return {
        "outage_failed_per_min": outage_failures / (seconds / 60),
        "first_primary": first_primary,
        "back_after": for_good,
        "flaps": sum(1 for t in elsewhere if t > first_primary),
        "outage_errors": errors,
    }


def outages(
    make: Callable[[Providers], tuple[Callable[[], Any], Any]], providers: Providers
) -> dict[str, Any]:
    """:func:`outage` once per phase, each with a fresh router (no cooldown grown before)."""
    runs = [outage(make(providers)[0], providers, OUTAGE + phase) for phase in PHASES]

    def spread(key: str) -> tuple[float, float]:
        values = [run[key] for run in runs]
        return statistics.median(values), max(values)

    return {
        "outage_failed_per_min": spread("outage_failed_per_min"),
        "first_primary": spread("first_primary"),
        "back_after": spread("back_after"),
        "flaps": sum(run["flaps"] for run in runs),
        "outage_errors": sum(run["outage_errors"] for run in runs),
    }


def overhead(
    direct: Callable[[], Any], subjects: dict[str, Callable[[], Any]], seconds: float
) -> dict[str, tuple[float, float, float, float]]:
    """Per subject: its median and 10th-percentile time per call, each over the direct call's.

    The direct call and the subject alternate call by call and each call is timed on its own,
    so both see the same machine (other processes' load comes and goes). On a busy machine the
    10th percentile (calls no other process delayed) shows a fixed added cost best.
    """
    out: dict[str, tuple[float, float, float, float]] = {}
    clock = time.perf_counter_ns
    for name, call in subjects.items():
        for _ in range(20):
            call()  # warm connections and caches
            direct()
        mine: list[int] = []
        theirs: list[int] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            start = clock()
            direct()
            middle = clock()
            call()
            theirs.append(middle - start)
            mine.append(clock() - middle)
        median, low = statistics.median(mine), _p10(mine)
        out[name] = (
            median / 1e9,
            median / statistics.median(theirs),
            low / 1e9,
            low / _p10(theirs),
        )
    return out


def _p10(values: list[int]) -> float:
    return statistics.quantiles(values, n=10)[0]


def pool_cost(rounds: int = 7, n: int = 200_000) -> tuple[float, float]:
    """ns per choose + succeeded of a healthy primary, and of a hand-written floor."""
    from buttress import TargetPool

    pool = TargetPool("llm", {"primary": 1, "secondary": 2})

    class HandWritten:
        """The floor: first healthy target in order; a success resets its failure count."""

        def __init__(self) -> None:
            self.order = ("primary", "secondary")
            self.healthy = {"primary": True, "secondary": True}
            self.failures = {"primary": 0, "secondary": 0}

        def choose(self) -> str | None:
            for name in self.order:
                if self.healthy[name]:
                    return name
            return None

        def succeeded(self, name: str) -> None:
            if self.failures[name]:
                self.failures[name] = 0

    hand = HandWritten()

    def floor() -> None:
        hand.succeeded(hand.choose())  # type: ignore[arg-type]

    def pooled() -> None:
        pool.succeeded(pool.choose())  # type: ignore[arg-type]

    results = []
    for fn in (pooled, floor):
        runs = []
        for _ in range(rounds):
            start = time.perf_counter_ns()
            for _ in range(n):
                fn()
            runs.append((time.perf_counter_ns() - start) / n)
        results.append(statistics.median(runs))
    return results[0], results[1]


def _mean(call: Callable[[], Any], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="half-broken run per router")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    import importlib.metadata as metadata
    import logging

    logging.getLogger("buttress").setLevel(logging.ERROR)
    logging.getLogger("LiteLLM").setLevel(logging.CRITICAL)
    logging.getLogger("LiteLLM Router").setLevel(logging.CRITICAL)
    providers = Providers()
    try:
        routers = {
            "buttress TargetPool": make_buttress,
            "buttress @with_fallback (async)": make_with_fallback,
            "LiteLLM Router": make_litellm,
        }
        results: dict[str, dict[str, Any]] = {}
        calls: dict[str, Callable[[], Any]] = {}
        for name, make in routers.items():
            call, _ = make(providers)
            calls[name] = call
            results[name] = half_broken(call, providers, args.seconds)
            print(f"{name}: half-broken primary done", file=sys.stderr, flush=True)
        returns: dict[str, dict[str, Any]] = {}
        variants = {
            **routers,
            "buttress TargetPool, max_probe_interval=0.5 s": lambda p: make_buttress(
                p, max_probe_interval=0.5
            ),
        }
        for name, make in variants.items():
            returns[name] = outages(make, providers)
            print(f"{name}: outage done", file=sys.stderr, flush=True)
        direct, _ = direct_call(providers)
        fresh = {
            name: make(providers)[0]
            for name, make in routers.items()
            if make is not make_with_fallback
        }
        fresh["direct HTTP call again (the noise floor)"] = direct_call(providers)[0]
        costs = overhead(direct, fresh, seconds=max(5.0, args.seconds / 4))
        direct_alone = statistics.median(_mean(direct, 1000) for _ in range(1))
        # the async subject against the same call made directly with httpx.AsyncClient on the
        # same event loop: both pay the loop's round per call
        adirect, _ = direct_async_call(providers)
        acosts = overhead(
            adirect,
            {
                "buttress @with_fallback (async), vs the direct async call": make_with_fallback(
                    providers
                )[0],
                "direct async call again (the noise floor)": direct_async_call(providers)[0],
            },
            seconds=max(5.0, args.seconds / 4),
        )
        adirect_alone = _mean(adirect, 1000)
    finally:
        providers.close()
    pooled_ns, floor_ns = pool_cost()
    print(
        f"Python {sys.version.split()[0]}, litellm {metadata.version('litellm')}, "
        f"httpx {metadata.version('httpx')}; {args.seconds:.0f} s half-broken run, "
        f"{OUTAGE:.0f}-{OUTAGE + max(PHASES):.1f} s outages, base cooldown {COOLDOWN:.0f} s "
        "for both\n"
    )
    print(
        "| router | calls | primary share (all / 2nd half) | switches/min | failed round trips/min "
        "| errors surfaced |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(
            f"| {name} | {r['calls']:,} | {r['share']:.2%} / {r['share_late']:.2%} "
            f"| {r['switches_per_min']:.1f} | {r['failed_per_min']:.1f} | {r['errors']} |"
        )
    print(
        f"\n| outage of {OUTAGE:.0f} s + 0-{max(PHASES):.1f} s, then recovered "
        f"({len(PHASES)} runs: median / worst) | failed round trips/min during the outage "
        "| first call to the recovered primary | all traffic back on it "
        "| calls elsewhere after its first call | errors surfaced |"
    )
    print("|---|---|---|---|---|---|")
    for name, r in returns.items():
        print(
            f"| {name} | {r['outage_failed_per_min'][0]:.1f} / {r['outage_failed_per_min'][1]:.1f} "
            f"| {r['first_primary'][0]:.2f} s / {r['first_primary'][1]:.2f} s "
            f"| {r['back_after'][0]:.2f} s / {r['back_after'][1]:.2f} s "
            f"| {r['flaps']} | {r['outage_errors']} |"
        )
    print(
        "\n| per call (both healthy) | median µs/call | added to the direct call's median "
        "| 10th percentile µs/call | added to the direct call's |"
    )
    print("|---|---|---|---|---|")
    print(f"| direct HTTP call (httpx; mean of 1,000) | {direct_alone * 1e6:,.0f} | — | | |")
    print(
        f"| direct async HTTP call (httpx.AsyncClient, run_until_complete; mean of 1,000) "
        f"| {adirect_alone * 1e6:,.0f} | — | | |"
    )
    for name, (median, ratio, low, low_ratio) in {**costs, **acosts}.items():
        print(
            f"| {name} | {median * 1e6:,.0f} | {ratio - 1:+.1%} | {low * 1e6:,.0f} "
            f"| {low_ratio - 1:+.1%} |"
        )
    print(
        f"\nTargetPool.choose() + succeeded() of a healthy primary: {pooled_ns:,.0f} ns per call; "
        f"a hand-written pool (choose the first healthy, reset its failures): {floor_ns:,.0f} ns "
        f"({pooled_ns / (direct_alone * 1e9):.3%} of the direct call)"
    )


if __name__ == "__main__":
    main()
