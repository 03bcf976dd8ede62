"""Memory and CPU checks: container figures from fixture cgroups (exact, under the fake clock),
host and process figures from psutil on this machine, and the fallback to the host."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from buttress.health import system
from buttress.health.system import MIN_CPU_WINDOW, cpu_check, memory_check
from buttress.health.types import Reading, ResourceStatus
from buttress.testing import FakeClock

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"
POD = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
LEAF = POD + "/cri-containerd-abc.scope"

psutil = pytest.importorskip("psutil", reason="the host and process checks need psutil")


@pytest.fixture
def tree(tmp_path: Path):
    def copy(name: str) -> tuple[Path, dict[str, Path]]:
        target = tmp_path / name
        shutil.copytree(FIXTURES / name, target, symlinks=True)
        return target, {
            "cgroup_root": target / "sys" / "fs" / "cgroup",
            "proc_root": target / "proc",
        }

    return copy


@pytest.fixture
def four_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """The process may run on four CPUs, whatever this machine has."""
    monkeypatch.setattr(system, "_available_cpus", lambda: 4)


def read(check) -> Reading:
    return asyncio.run(check())


def set_keyed(path: Path, **values: int) -> None:
    lines = []
    for line in path.read_text().splitlines():
        key = line.split()[0]
        lines.append(f"{key} {values.pop(key)}" if key in values else line)
    path.write_text("\n".join(lines) + "\n")


# -- memory ---------------------------------------------------------------------------------------


def test_container_memory_is_working_set_over_the_parents_limit(tree) -> None:
    _, roots = tree("v2-pod")
    check = memory_check(scope="container", **roots)
    reading = read(check)
    assert reading.usage == 201326592 / 536870912 * 100 == 37.5
    assert reading.status is None
    assert reading.detail["limit_bytes"] == 536870912
    assert reading.detail["limit_cgroup"] == POD
    assert reading.detail["working_set_bytes"] == 201326592
    assert reading.detail["usage_bytes"] == 268435456
    assert reading.detail["oom_kills"] == 2
    assert reading.detail["pressure_some_avg10"] == 1.5
    assert check.target == f"memory of cgroup v2 {LEAF}"


def test_v1_container_memory(tree) -> None:
    _, roots = tree("v1-docker")
    reading = read(memory_check(scope="container", **roots))
    assert reading.usage == (104857600 - 20971520) / 268435456 * 100 == 31.25
    assert reading.detail["limit_hits"] == 3


def test_a_new_oom_kill_degrades_the_reading_once(tree) -> None:
    _, roots = tree("v2-pod")
    check = memory_check(scope="container", **roots)
    assert read(check).status is None
    events = roots["cgroup_root"] / LEAF.lstrip("/") / "memory.events"
    set_keyed(events, oom_kill=5)
    reading = read(check)
    assert reading.status is ResourceStatus.DEGRADED
    assert reading.message == f"3 OOM kills in cgroup {LEAF} since the previous check"
    assert read(check).status is None  # no new kill since


def test_auto_uses_the_container_when_limited(tree) -> None:
    _, roots = tree("v2-pod")
    check = memory_check(**roots)
    reading = read(check)
    assert reading.detail["scope"] == "container"
    host_total = psutil.virtual_memory().total
    # the fixture's limit (512 MiB) counts only when the host has more
    if host_total > 536870912:
        assert reading.usage == 37.5
    assert "when limited, else the host" in check.target


def test_auto_falls_back_to_the_host_when_unlimited(tree) -> None:
    _, roots = tree("v2-pod")
    for path in roots["cgroup_root"].rglob("memory.max"):
        path.write_text("max\n")
    reading = read(memory_check(**roots))
    assert reading.detail["scope"] == "host"
    assert reading.usage is not None
    assert 0 < reading.usage <= 100


def test_auto_falls_back_to_the_host_without_a_cgroup(tmp_path: Path) -> None:
    check = memory_check(cgroup_root=tmp_path / "none", proc_root=tmp_path / "none")
    assert check.target == "host memory"
    reading = read(check)
    assert reading.detail["scope"] == "host"
    memory = psutil.virtual_memory()
    assert reading.detail["total_bytes"] == memory.total


def test_container_scope_without_a_cgroup_is_refused_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"scope='container' but .* cgroup_root='.*none'"):
        memory_check(scope="container", cgroup_root=tmp_path / "none", proc_root=tmp_path)
    with pytest.raises(ValueError, match="scope='container'"):
        cpu_check(scope="container", cgroup_root=tmp_path / "none", proc_root=tmp_path)


def test_a_limit_above_the_hosts_memory_counts_as_the_host(tree) -> None:
    _, roots = tree("v1-docker")  # fixture host: MemTotal 4 GiB
    (roots["cgroup_root"] / "memory" / "memory.limit_in_bytes").write_text(f"{64 * 2**30}\n")
    stat = roots["cgroup_root"] / "memory" / "memory.stat"
    set_keyed(stat, hierarchical_memory_limit=64 * 2**30)
    reading = read(memory_check(scope="container", **roots))
    assert reading.detail["limit_bytes"] == 4 * 2**30
    assert reading.usage == 83886080 / (4 * 2**30) * 100


def test_host_memory_matches_psutil() -> None:
    reading = read(memory_check(scope="host"))
    memory = psutil.virtual_memory()
    assert reading.detail["total_bytes"] == memory.total
    assert reading.usage is not None
    assert 0 < reading.usage <= 100


def test_process_memory_is_rss_over_the_available_memory() -> None:
    check = memory_check(scope="process")
    reading = read(check)
    assert reading.detail["scope"] == "process"
    assert isinstance(reading.detail["rss_bytes"], int)
    assert reading.detail["rss_bytes"] > 0
    assert reading.usage is not None
    assert 0 < reading.usage < 100
    assert check.target.startswith("memory of process ")


@pytest.mark.parametrize("scope", ["everything", "", None, "HOST"])
def test_unknown_scope_is_refused(scope: object) -> None:
    with pytest.raises(ValueError, match=r"scope must be one of 'auto', .* got"):
        memory_check(scope=scope)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scope must be one of"):
        cpu_check(scope=scope)  # type: ignore[arg-type]


def test_a_root_that_is_not_a_path_is_refused() -> None:
    with pytest.raises(TypeError, match="cgroup_root must be a path, got 5"):
        memory_check(cgroup_root=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="proc_root must be a path, got None"):
        cpu_check(proc_root=None)  # type: ignore[arg-type]


def test_missing_psutil_names_the_extra(monkeypatch: pytest.MonkeyPatch, tree) -> None:
    import builtins

    real_import = builtins.__import__

    def no_psutil(name: str, *args, **kwargs):
        if name == "psutil":
            raise ImportError("No module named 'psutil'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_psutil)
    with pytest.raises(ImportError, match=r"pip install 'buttress\[system\]'"):
        memory_check(scope="host")
    # the container's figures need no psutil
    _, roots = tree("v2-pod")
    assert read(memory_check(scope="container", **roots)).usage == 37.5


# -- CPU ----------------------------------------------------------------------------------------


def test_container_cpu_usage_over_the_quota(tree, clock: FakeClock, four_cpus) -> None:
    _, roots = tree("v2-pod")
    check = cpu_check(scope="container", **roots)  # first sample: usage_usec 123456789
    stat = roots["cgroup_root"] / LEAF.lstrip("/") / "cpu.stat"
    clock.advance(2.0)
    # 1.5 s of CPU in 2 s of wall time on 1.5 CPUs (the pod's cpu.max "150000 100000") is 50 %
    set_keyed(
        stat, usage_usec=123456789 + 1_500_000, nr_periods=1020, nr_throttled=55,
        throttled_usec=2_500_000 + 250_000,
    )  # fmt: skip
    reading = read(check)
    assert reading.usage == pytest.approx(50.0)
    assert reading.detail["cpus"] == 1.5
    assert reading.detail["cpu_limit"] == 1.5
    assert reading.detail["limit_cgroup"] == POD
    assert reading.detail["throttled_percent"] == 25.0  # 5 of 20 periods
    assert reading.detail["throttled_seconds"] == 0.25
    assert reading.detail["window_seconds"] == 2.0
    assert reading.detail["pressure_some_avg10"] == 12.34


def test_v1_container_cpu_from_cpuacct(tree, clock: FakeClock, four_cpus) -> None:
    _, roots = tree("v1-docker")
    check = cpu_check(scope="container", **roots)
    usage = roots["cgroup_root"] / "cpu,cpuacct" / "cpuacct.usage"
    clock.advance(4.0)
    usage.write_text(f"{5_000_000_000 + 1_000_000_000}\n")  # 1 s of CPU (ns) in 4 s on 0.5 CPU
    assert read(check).usage == pytest.approx(50.0)


def test_container_without_quota_counts_the_cpus_it_may_use(
    tree, clock: FakeClock, four_cpus
) -> None:
    _, roots = tree("v2-pod")
    for path in roots["cgroup_root"].rglob("cpu.max"):
        path.write_text("max 100000\n")
    check = cpu_check(scope="container", **roots)
    clock.advance(1.0)
    set_keyed(
        roots["cgroup_root"] / LEAF.lstrip("/") / "cpu.stat", usage_usec=123456789 + 1_000_000
    )
    reading = read(check)
    assert reading.usage == pytest.approx(25.0)  # one CPU-second per second out of four CPUs
    assert reading.detail["cpus"] == 4.0


@pytest.mark.parametrize(
    ("fixture", "file", "content", "message"),
    [
        ("v2-pod", LEAF.lstrip("/") + "/cpu.max", "0 100000\n", "cpu.max: quota must be > 0"),
        ("v1-docker", "cpu,cpuacct/cpu.cfs_quota_us", "0\n", "cpu.cfs_quota_us: quota must be"),
    ],
)
def test_a_zero_cpu_quota_is_an_error_naming_the_file(
    tree, clock: FakeClock, four_cpus, fixture: str, file: str, content: str, message: str
) -> None:
    _, roots = tree(fixture)
    check = cpu_check(scope="container", **roots)
    (roots["cgroup_root"] / file).write_text(content)
    clock.advance(1.0)
    with pytest.raises(ValueError, match=message):
        read(check)


def test_usage_is_capped_at_100(tree, clock: FakeClock, four_cpus) -> None:
    _, roots = tree("v1-docker")
    check = cpu_check(scope="container", **roots)
    clock.advance(1.0)
    usage = roots["cgroup_root"] / "cpu,cpuacct" / "cpuacct.usage"
    usage.write_text(f"{5_000_000_000 + 2_000_000_000}\n")
    assert read(check).usage == 100.0


def test_checks_too_close_together_keep_the_older_sample(tree, clock: FakeClock, four_cpus) -> None:
    _, roots = tree("v1-docker")
    check = cpu_check(scope="container", **roots)
    usage = roots["cgroup_root"] / "cpu,cpuacct" / "cpuacct.usage"
    clock.advance(MIN_CPU_WINDOW / 2)
    usage.write_text(f"{5_000_000_000 + 100_000_000}\n")
    early = read(check)
    assert early.usage is None
    assert "too close" in (early.message or "")
    clock.advance(2.0 - MIN_CPU_WINDOW / 2)
    usage.write_text(f"{5_000_000_000 + 500_000_000}\n")
    # measured from the sample taken at construction: 0.5 s of CPU in 2 s on 0.5 CPU
    assert read(check).usage == pytest.approx(50.0)


def test_auto_cpu_uses_the_container_quota_else_the_host(tree, clock: FakeClock, four_cpus) -> None:
    _, roots = tree("v1-docker")
    clock.advance(1.0)
    assert read(cpu_check(**roots)).detail["scope"] == "container"
    (roots["cgroup_root"] / "cpu,cpuacct" / "cpu.cfs_quota_us").write_text("-1\n")
    assert read(cpu_check(**roots)).detail["scope"] == "host"


def test_host_cpu_needs_no_clock() -> None:
    check = cpu_check(scope="host")
    assert check.target == "host CPU"
    # host usage is busy over total CPU time: spin until the kernel's counters have moved
    for _ in range(1000):
        reading = read(check)
        if reading.usage is not None:
            break
        sum(range(10_000))
    assert reading.usage is not None
    assert 0 <= reading.usage <= 100
    assert reading.detail["cpus"] == psutil.cpu_count()


def test_process_cpu(clock: FakeClock) -> None:
    check = cpu_check(scope="process")
    sum(range(200_000))
    clock.advance(1.0)
    reading = read(check)
    assert reading.detail["scope"] == "process"
    assert reading.usage is not None
    assert 0 <= reading.usage <= 100
    assert reading.detail["window_seconds"] == 1.0


def test_a_check_is_an_async_callable_with_a_target(tree) -> None:
    _, roots = tree("v2-pod")
    for check in (memory_check(**roots), cpu_check(**roots)):
        assert asyncio.iscoroutinefunction(check.__call__)
        assert isinstance(check.target, str)
        assert check.target
        assert check.target in repr(check)
