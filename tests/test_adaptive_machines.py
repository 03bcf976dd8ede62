"""The limit algorithms against a simulated server on a fake clock: where the limit settles for
capacities 4, 16 and 64, that a 10% overload held for 10,000 windows keeps it within 1.5x the
capacity and never under ``min_limit``, no growth while the application is the limit, a dependency
that slows down by itself, and bad settings."""

from __future__ import annotations

import random
import statistics

import pytest

from buttress.machines.limit import AIMD, Gradient2, LimitAlgorithm, LimitChange
from buttress.testing import FakeClock


class Server:
    """A dependency with capacity ``capacity`` calls at once; more queue inside it.

    Processor sharing: with ``n`` calls inside, each progresses at ``min(1, capacity / n)`` of full
    speed, so latency grows in proportion to the queue. A call needs ``base`` seconds of work
    (give or take ``noise``). Stepped in ``dt`` on a fake clock.
    """

    def __init__(self, capacity: int, base: float = 1.0, noise: float = 0.1, seed: int = 7) -> None:
        self.capacity = capacity
        self.base = base
        self.noise = noise
        self.random = random.Random(seed)
        # [remaining work, start time, in flight at start]
        self.calls: list[list[float]] = []

    def start(self, now: float, inflight: int) -> None:
        work = self.base * (1 + self.noise * (2 * self.random.random() - 1))
        self.calls.append([work, now, float(inflight)])

    def step(self, now: float, dt: float) -> list[tuple[float, int]]:
        """Advance ``dt``; the (round trip, in flight at start) of every call that finished."""
        if not self.calls:
            return []
        speed = min(1.0, self.capacity / len(self.calls)) * dt
        done, left = [], []
        for call in self.calls:
            call[0] -= speed
            if call[0] <= 0:
                done.append((now - call[1], int(call[2])))
            else:
                left.append(call)
        self.calls = left
        return done


def drive(
    algorithm: LimitAlgorithm,
    server: Server,
    *,
    windows: int,
    demand: float | None = None,
    clock: FakeClock | None = None,
    dt: float = 0.1,
    change: tuple[int, int] | None = None,
) -> list[int]:
    """Run until ``windows`` windows closed; the limit after each window.

    ``demand`` is the offered load as a multiple of the capacity (Poisson arrivals, open loop);
    ``None`` means closed loop, the limit always full. ``change`` is (window, new capacity).
    """
    clock = clock or FakeClock()
    rng = random.Random(11)
    limits: list[int] = []
    opened = algorithm._opened
    while len(limits) < windows:
        now = clock.now()
        if change is not None and len(limits) >= change[0]:
            server.capacity = change[1]
        if demand is None:
            wanted = algorithm.limit - len(server.calls)
        else:
            rate = demand * server.capacity / server.base
            wanted = _poisson(rng, rate * dt)
        for _ in range(max(0, wanted)):
            if len(server.calls) < algorithm.limit:
                server.start(now, len(server.calls) + 1)
        clock.advance(dt)
        for rtt, inflight in server.step(clock.now(), dt):
            algorithm.sample(clock.now(), rtt, inflight)
            if algorithm._opened != opened:
                opened = algorithm._opened
                limits.append(algorithm.limit)
    return limits


def _poisson(rng: random.Random, mean: float) -> int:
    # Knuth's method: fine for the small means of one step.
    limit, k, p = pow(2.718281828459045, -mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def gradient(**kwargs: object) -> Gradient2:
    settings: dict[str, object] = {"window": 2.0, "min_samples": 10, "initial_limit": 10}
    settings.update(kwargs)
    return Gradient2(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize("capacity", [4, 16, 64])
def test_gradient2_settles_within_30_percent_of_the_capacity(capacity: int) -> None:
    limits = drive(gradient(), Server(capacity), windows=300)
    settled = statistics.mean(limits[-150:])
    assert 0.7 * capacity <= settled <= 1.3 * capacity, (settled, limits[-30:])


def aimd(**kwargs: object) -> AIMD:
    settings: dict[str, object] = {"window": 2.0, "min_samples": 10, "initial_limit": 10}
    settings.update(kwargs)
    return AIMD(**settings)  # type: ignore[arg-type]


ALGORITHMS = {"gradient2": gradient, "aimd": aimd}


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("capacity", [4, 16, 64])
def test_both_settle_within_30_percent_of_the_capacity(capacity: int, name: str) -> None:
    limits = drive(ALGORITHMS[name](), Server(capacity), windows=300)
    settled = statistics.mean(limits[-150:])
    assert 0.7 * capacity <= settled <= 1.3 * capacity, (settled, limits[-30:])


@pytest.mark.parametrize("name", ALGORITHMS)
@pytest.mark.parametrize("capacity", [4, 16])
def test_a_10_percent_overload_for_10000_windows_stays_within_1_5x_and_above_min_limit(
    capacity: int, name: str
) -> None:
    algorithm = ALGORITHMS[name](min_limit=2)
    limits = drive(algorithm, Server(capacity), windows=10_000, demand=1.1, dt=0.25)
    assert max(limits[50:]) <= 1.5 * capacity, max(limits[50:])
    assert min(limits) >= 2
    # Not a slow climb either: the last thousand windows look like the first thousand after start.
    assert statistics.mean(limits[-1000:]) <= 1.1 * statistics.mean(limits[100:1100]) + 1


def test_aimd_under_overload_stays_within_1_5x_when_the_dependency_drops_past_its_queue() -> None:
    algorithm = AIMD(window=2.0, min_samples=4, initial_limit=10, min_limit=2, timeout=1.25)
    limits = drive(algorithm, Server(16), windows=2000, demand=1.1, dt=0.25)
    assert max(limits[100:]) <= 1.5 * 16
    assert min(limits) >= 2


def test_no_growth_while_the_application_uses_under_half_the_limit() -> None:
    algorithm = gradient(initial_limit=40)
    changes: list[LimitChange] = []
    clock = FakeClock()
    for _ in range(1000):
        clock.advance(0.5)
        for inflight in (5, 19, 12):
            change = algorithm.sample(clock.now(), 0.5, inflight)
            if change:
                changes.append(change)
    assert algorithm.limit == 40
    assert changes == []


def test_aimd_does_not_grow_while_app_limited_but_does_once_it_reaches_the_limit() -> None:
    algorithm = AIMD(window=1.0, min_samples=2, initial_limit=10)
    clock = FakeClock()
    for _ in range(100):
        clock.advance(1.0)
        algorithm.sample(clock.now(), 0.1, 4)
        algorithm.sample(clock.now(), 0.1, 9)
    assert algorithm.limit == 10
    clock.advance(1.0)
    algorithm.sample(clock.now(), 0.1, 10)
    change = algorithm.sample(clock.now(), 0.1, 10)
    assert change == LimitChange(10, 11, "increase")


@pytest.mark.parametrize("name", ALGORITHMS)
def test_both_follow_a_capacity_drop_from_64_to_8(name: str) -> None:
    limits = drive(ALGORITHMS[name](), Server(64), windows=400, change=(200, 8))
    assert statistics.mean(limits[150:200]) > 50
    assert statistics.mean(limits[-100:]) <= 8 * 1.3
    assert statistics.mean(limits[-100:]) >= 8 * 0.7


def test_a_slower_dependency_is_rebaselined_without_shedding_to_the_floor() -> None:
    """Latency doubles at every load (the dependency itself slowed): one cut, then the baseline is
    re-measured and the limit given back, instead of cutting on until ``min_limit``."""
    algorithm = gradient(initial_limit=10, min_limit=1, max_limit=10)
    clock = FakeClock()
    reasons: list[str] = []

    def window(rtt: float) -> None:
        clock.advance(2.0)
        for _ in range(algorithm.limit):
            change = algorithm.sample(clock.now(), rtt, algorithm.limit)
            if change:
                reasons.append(change.reason)

    for _ in range(10):
        window(0.1)
    assert algorithm.limit == 10
    for _ in range(10):
        window(0.2)
    assert reasons == ["latency", "rebaseline"]
    assert algorithm.limit == 10
    assert algorithm.baseline == pytest.approx(0.2)


def test_drops_cut_the_limit_but_never_below_min_limit() -> None:
    for algorithm in (
        AIMD(window=1.0, min_samples=1, initial_limit=50, min_limit=3),
        gradient(window=1.0, min_samples=1, initial_limit=50, min_limit=3),
    ):
        clock = FakeClock()
        for _ in range(200):
            clock.advance(1.0)
            algorithm.sample(clock.now(), 0.1, algorithm.limit, dropped=True)
        assert algorithm.limit == 3
        assert algorithm.reason == "drop"


def test_samples_of_calls_admitted_before_a_change_are_left_out() -> None:
    algorithm = AIMD(window=1.0, min_samples=1, initial_limit=10)
    clock = FakeClock()
    clock.advance(1.0)
    assert algorithm.sample(clock.now(), 0.5, 10, dropped=True) == LimitChange(10, 9, "drop")
    # This call started before the cut: a second drop from the same burst is not a second cut.
    clock.advance(1.0)
    assert algorithm.sample(clock.now(), 1.5, 10, dropped=True) is None
    assert algorithm.limit == 9


def test_set_clamps_to_the_bounds() -> None:
    algorithm = AIMD(initial_limit=5, min_limit=2, max_limit=8)
    assert algorithm.set(0.0, 100) == LimitChange(5, 8, "set")
    assert algorithm.set(0.0, 0) == LimitChange(8, 2, "set")
    assert algorithm.set(0.0, 2) is None


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: AIMD(min_limit=0), "min_limit must be >= 1"),
        (lambda: AIMD(min_limit=5, max_limit=4), "max_limit (4) must be >= min_limit (5)"),
        (lambda: AIMD(initial_limit=2000), "initial_limit must be within"),
        (lambda: AIMD(backoff=1.0), "backoff must be < 1"),
        (lambda: AIMD(backoff=0.2), "backoff must be >= 0.5"),
        (lambda: AIMD(timeout=0), "timeout must be > 0"),
        (lambda: Gradient2(tolerance=1.0), "tolerance must be > 1.0"),
        (lambda: Gradient2(window=0), "window must be > 0"),
        (lambda: Gradient2(baseline_windows=0), "baseline_windows must be >= 1"),
    ],
)
def test_bad_settings_are_refused_by_name(make: object, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make()  # type: ignore[operator]


def test_a_cut_still_draining_is_not_mistaken_for_a_slower_dependency() -> None:
    """Right after a cut the calls admitted before it are still queued in the dependency (and in
    flight here): latency has not fallen yet, but neither has the load, so that is no reason to
    take the queued latency as the new baseline."""
    algorithm = gradient(initial_limit=40, max_limit=40)
    clock = FakeClock()

    def window(rtt: float, inflight: int) -> list[str]:
        clock.advance(2.0)
        changes = [algorithm.sample(clock.now(), rtt, inflight) for _ in range(10)]
        return [change.reason for change in changes if change]

    for _ in range(5):
        assert window(0.1, 40) == []
    assert window(0.4, 40) == ["latency"]
    assert window(0.4, 40) == []
    assert window(0.4, 40) == []
    assert window(0.2, 20) == ["latency"]
    assert algorithm.baseline == pytest.approx(0.1)
    assert algorithm.limit == 10


def aimd_windows(algorithm: AIMD, clock: FakeClock, rtts: list[float]) -> list[str]:
    """One window per round trip in ``rtts`` (5 calls at the limit each); the reasons seen."""
    reasons = []
    for rtt in rtts:
        clock.advance(1.0)
        for _ in range(5):
            change = algorithm.sample(clock.now(), rtt, algorithm.limit)
            if change:
                reasons.append(change.reason)
    return reasons


def test_aimd_cuts_on_latency_over_the_tolerance_without_any_timeout() -> None:
    """No drop is reported and no timeout set: latency 1.5x the baseline is what cuts."""
    algorithm = aimd(initial_limit=20, window=1.0, min_samples=5)
    clock = FakeClock()
    assert set(aimd_windows(algorithm, clock, [0.1] * 5)) == {"increase"}
    grown = algorithm.limit
    assert aimd_windows(algorithm, clock, [0.15]) == ["latency"]
    assert algorithm.limit < grown


def test_aimd_keeps_cutting_while_cuts_bring_latency_down() -> None:
    """A baseline first measured while overloaded sits above the knee: each cut lowers latency
    in proportion, so AIMD cuts on below the tolerance and the baseline follows down."""
    algorithm = aimd(initial_limit=40, min_limit=1)
    limits = drive(algorithm, Server(8), windows=60)
    assert statistics.mean(limits[-20:]) <= 1.3 * 8, limits
    assert algorithm.baseline is not None
    assert algorithm.baseline < 1.3


def test_aimd_rebaselines_a_slower_dependency_instead_of_cutting_to_the_floor() -> None:
    algorithm = aimd(initial_limit=10, max_limit=10, window=2.0, min_samples=10)
    clock = FakeClock()
    reasons: list[str] = []

    def window(rtt: float) -> None:
        clock.advance(2.0)
        for _ in range(10):
            change = algorithm.sample(clock.now(), rtt, algorithm.limit)
            if change:
                reasons.append(change.reason)

    for _ in range(10):
        window(0.1)
    for _ in range(10):
        window(0.2)
    assert reasons[-1] == "rebaseline"
    assert reasons.count("latency") <= 2
    assert algorithm.limit == 10
    assert algorithm.baseline == pytest.approx(0.2)


def test_aimd_without_tolerance_reacts_to_drops_only() -> None:
    algorithm = aimd(tolerance=None, window=1.0, min_samples=5, initial_limit=5)
    clock = FakeClock()
    assert set(aimd_windows(algorithm, clock, [0.1] * 3 + [0.5] * 3)) == {"increase"}
    limit = algorithm.limit
    clock.advance(1.0)
    change = algorithm.sample(clock.now(), 0.1, limit, dropped=True)
    assert change == LimitChange(limit, limit - 1, "drop")


def test_a_capacity_drop_is_not_taken_for_a_slower_dependency_while_its_queue_drains() -> None:
    # After a cut, fewer calls are in flight at once, but the dependency's queue (built under the
    # old limit) drains at its capacity: latency lags the cut for a window or two. Taking that lag
    # for the dependency's new pace would rebaseline and give the whole cut back.
    limiter = Gradient2(initial_limit=64, max_limit=64)
    clock = 0.0

    def window(rtt: float, inflight: int) -> None:
        nonlocal clock
        opened = limiter._opened
        while True:
            clock += rtt / 10
            limiter.sample(clock + rtt, rtt, inflight)  # admitted at `clock`
            if opened is None:
                opened = limiter._opened
            elif limiter._opened != opened:
                clock += rtt
                return

    for _ in range(5):
        window(0.1, 64)  # the baseline
    window(0.8, 64)  # the capacity drops: latency 8x
    assert limiter.limit <= 32
    assert limiter.reason == "latency"
    window(0.8, 32)  # calls admitted after the cut still wait behind the old queue
    window(0.8, 32)
    assert limiter.limit <= 32
    assert limiter.reason != "rebaseline"
    window(0.4, 32)  # the queue drains: latency falls with the cut, so cut again
    assert limiter.limit <= 16


def test_a_cut_judged_on_the_start_of_an_overload_cuts_again_as_latency_climbs() -> None:
    # The window that saw the capacity fall held mostly calls admitted just before: it measured
    # 1.25x the baseline and cut a little. Latency then climbs to 6x under the remaining limit;
    # holding (and then giving the cut back as a "slower dependency") would leave the limit far
    # above the new capacity for seconds. Latency that rises past the tolerance since the cut
    # is a new cut.
    limiter = Gradient2(initial_limit=64, max_limit=64)
    clock = 0.0

    def window(rtt: float, inflight: int) -> None:
        nonlocal clock
        opened = limiter._opened
        while True:
            clock += rtt / 10
            limiter.sample(clock + rtt, rtt, inflight)
            if opened is None:
                opened = limiter._opened
            elif limiter._opened != opened:
                clock += rtt
                return

    for _ in range(5):
        window(0.1, 64)
    window(0.125, 64)
    assert limiter.reason == "latency"
    first = limiter.limit
    assert first > 32
    window(0.6, first)
    assert limiter.reason == "latency"
    assert limiter.limit <= first // 2 + 1
    window(0.3, limiter.limit)  # the cut brought latency down: the knee is lower still
    assert limiter.reason == "latency"
    assert limiter.limit <= 16
    assert limiter.baseline == pytest.approx(0.1)
