"""The cgroup reader on fixture trees in the kernel's documented formats, and on this machine.

Fixtures (``tests/fixtures/cgroup/<name>/{proc,sys/fs/cgroup}``), each a process's view:

- ``v2-pod``: cgroup v2, a Kubernetes container under systemd. The limits sit on the pod's cgroup
  (a parent): ``memory.max`` 536870912 and ``cpu.max`` "150000 100000"; the container's own files
  say ``max``. ``memory.current`` 268435456 with ``inactive_file`` 67108864 (working set
  201326592), ``memory.events`` oom_kill 2 / max 7, ``cpu.stat`` usage_usec 123456789 and
  nr_periods 1000 / nr_throttled 50 / throttled_usec 2500000, PSI files.
- ``v1-docker``: cgroup v1 as Docker mounts it: each hierarchy shows only the container's subtree
  (mountinfo root ``/docker/<id>``) while ``/proc/self/cgroup`` prints the host path.
  ``memory.limit_in_bytes`` 268435456, usage 104857600 less ``total_inactive_file`` 20971520,
  failcnt 3, oom_kill 1; ``cpu,cpuacct`` (with ``cpu`` and ``cpuacct`` symlinks) quota 50000 per
  100000 (0.5 CPUs), ``cpuacct.usage`` 5000000000 ns, throttled_time 3000000000 ns.
- ``v1-nested``: cgroup v1 with the host's whole tree and no mountinfo: the leaf says unlimited
  (the 9223372036854771712 sentinel) and quota 2.5 CPUs, the pod above it 1 GiB and 2 CPUs, the
  ``kubepods`` slice 8 GiB.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from buttress.health.cgroup import (
    UNLIMITED_V1,
    CgroupReader,
    Pressure,
    cpus_from_quota,
    parse_cpu_max,
    parse_keyed,
    parse_membership,
    parse_mountinfo,
    parse_pressure,
    parse_v1_limit,
    parse_v2_limit,
    read_cgroup,
)

FIXTURES = Path(__file__).parent / "fixtures" / "cgroup"


def roots(tree: Path) -> dict[str, Path]:
    return {"cgroup_root": tree / "sys" / "fs" / "cgroup", "proc_root": tree / "proc"}


@pytest.fixture
def fixture_copy(tmp_path: Path):
    """A writable copy of a fixture tree (symlinks kept)."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(FIXTURES / name, target, symlinks=True)
        return target

    return copy


# -- parsers ------------------------------------------------------------------------------------


def test_cpu_max_quota_over_period_is_effective_cpus() -> None:
    assert parse_cpu_max("150000 100000\n") == (150000, 100000)
    assert cpus_from_quota(*parse_cpu_max("150000 100000\n")) == 1.5
    assert cpus_from_quota(*parse_cpu_max("50000 100000")) == 0.5
    assert cpus_from_quota(*parse_cpu_max("200000 50000")) == 4.0


def test_cpu_max_of_max_is_unlimited() -> None:
    assert parse_cpu_max("max 100000\n") == (None, 100000)
    assert cpus_from_quota(*parse_cpu_max("max 100000\n")) is None


def test_v1_quota_of_minus_one_is_unlimited() -> None:
    assert cpus_from_quota(-1, 100000) is None


@pytest.mark.parametrize("text", ["", "1 2 3", "abc 100000", "100000 0", "-5 100000", "0 100000"])
def test_malformed_cpu_max_is_refused_with_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected|period|quota must be > 0"):
        parse_cpu_max(text)


def test_v2_memory_max() -> None:
    assert parse_v2_limit("max\n") is None
    assert parse_v2_limit("536870912\n") == 536870912
    with pytest.raises(ValueError, match="'lots'"):
        parse_v2_limit("lots")


def test_v1_limit_sentinel_is_unlimited_for_every_page_size() -> None:
    assert parse_v1_limit("9223372036854771712\n") is None  # 4 KiB pages
    assert parse_v1_limit("9223372036854710272\n") is None  # 64 KiB pages
    assert parse_v1_limit(f"{UNLIMITED_V1 - 1}") == UNLIMITED_V1 - 1
    assert parse_v1_limit("268435456") == 268435456


def test_keyed_files() -> None:
    assert parse_keyed("usage_usec 10\nnr_throttled 2\n\n") == {"usage_usec": 10, "nr_throttled": 2}
    with pytest.raises(ValueError, match="'usage_usec'"):
        parse_keyed("usage_usec\n")
    with pytest.raises(ValueError, match="integer"):
        parse_keyed("usage_usec ten\n")


def test_pressure_with_and_without_full_line() -> None:
    some_only = parse_pressure("some avg10=1.50 avg60=0.75 avg300=0.25 total=4200000\n")
    assert some_only == Pressure(1.5, 0.75, 0.25, 4200000)
    both = parse_pressure(
        "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
        "full avg10=2.00 avg60=1.00 avg300=0.50 total=77\n"
    )
    assert (both.full_avg10, both.full_total_usec) == (2.0, 77)
    with pytest.raises(ValueError, match="no 'some' line"):
        parse_pressure("full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n")
    with pytest.raises(ValueError, match="malformed"):
        parse_pressure("some avg10=x avg60=0.00 avg300=0.00 total=0\n")


def test_membership_v1_v2_and_hybrid() -> None:
    hybrid = parse_membership(
        "12:pids:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/docker/abc\n0::/init\n"
    )
    assert hybrid.unified == "/init"
    assert hybrid.controllers == {
        "pids": "/docker/abc",
        "cpu": "/docker/abc",
        "cpuacct": "/docker/abc",
        "systemd": "/docker/abc",
    }
    assert parse_membership("0::/\n").controllers == {}
    with pytest.raises(ValueError, match="line 1"):
        parse_membership("garbage\n")


def test_mountinfo_gives_each_hierarchy_its_mounted_root() -> None:
    text = (FIXTURES / "v1-docker" / "proc" / "self" / "mountinfo").read_text()
    assert parse_mountinfo(text) == {
        "memory": "/docker/0123456789abcdef",
        "cpu": "/docker/0123456789abcdef",
        "cpuacct": "/docker/0123456789abcdef",
        "pids": "/docker/0123456789abcdef",
    }
    v2 = "25 30 0:26 /a\\040b /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"
    assert parse_mountinfo(v2) == {"": "/a b"}


# -- the walker on fixture trees ----------------------------------------------------------------


def test_v2_pod_figures_with_limits_on_the_parent() -> None:
    stats = read_cgroup(**roots(FIXTURES / "v2-pod"))
    assert stats is not None
    pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice"
    assert stats.version == 2
    assert stats.path == pod + "/cri-containerd-abc.scope"
    assert (stats.memory_limit, stats.memory_limit_path) == (536870912, pod)
    assert stats.memory_usage == 268435456
    assert stats.memory_working_set == 268435456 - 67108864
    assert (stats.memory_oom_kills, stats.memory_limit_hits) == (2, 7)
    assert (stats.cpu_limit, stats.cpu_limit_path) == (1.5, pod)
    assert stats.cpu_usage_usec == 123456789
    assert (stats.cpu_periods, stats.cpu_throttled_periods) == (1000, 50)
    assert stats.cpu_throttled_usec == 2500000
    assert stats.memory_pressure == Pressure(1.5, 0.75, 0.25, 4200000, 0.5, 0.25, 0.1, 1300000)
    assert stats.cpu_pressure is not None
    assert stats.cpu_pressure.some_avg10 == 12.34


def test_v2_a_tighter_limit_on_the_leaf_wins(fixture_copy) -> None:
    tree = fixture_copy("v2-pod")
    stats = read_cgroup(**roots(tree))
    assert stats is not None
    leaf = roots(tree)["cgroup_root"] / stats.path.lstrip("/")
    (leaf / "memory.max").write_text("104857600\n")
    (leaf / "cpu.max").write_text("25000 100000\n")
    tighter = read_cgroup(**roots(tree))
    assert tighter is not None
    assert (tighter.memory_limit, tighter.memory_limit_path) == (104857600, stats.path)
    assert (tighter.cpu_limit, tighter.cpu_limit_path) == (0.25, stats.path)


def test_v2_max_everywhere_is_unlimited(fixture_copy) -> None:
    tree = fixture_copy("v2-pod")
    for path in roots(tree)["cgroup_root"].rglob("memory.max"):
        path.write_text("max\n")
    for path in roots(tree)["cgroup_root"].rglob("cpu.max"):
        path.write_text("max 100000\n")
    stats = read_cgroup(**roots(tree))
    assert stats is not None
    assert (stats.memory_limit, stats.memory_limit_path) == (None, None)
    assert (stats.cpu_limit, stats.cpu_limit_path) == (None, None)
    assert stats.memory_working_set == 201326592  # usage figures stay


def test_v1_docker_namespaced_view() -> None:
    stats = read_cgroup(**roots(FIXTURES / "v1-docker"))
    assert stats is not None
    container = "/docker/0123456789abcdef"
    assert (stats.version, stats.path) == (1, container)
    assert (stats.memory_limit, stats.memory_limit_path) == (268435456, container)
    assert stats.memory_usage == 104857600
    assert stats.memory_working_set == 104857600 - 20971520
    assert (stats.memory_oom_kills, stats.memory_limit_hits) == (1, 3)
    assert (stats.cpu_limit, stats.cpu_limit_path) == (0.5, container)
    assert stats.cpu_usage_usec == 5000000
    assert (stats.cpu_periods, stats.cpu_throttled_periods) == (200, 20)
    assert stats.cpu_throttled_usec == 3000000
    assert stats.memory_pressure is None
    assert stats.cpu_pressure is None


def test_v1_namespaced_view_without_mountinfo_still_finds_the_container(fixture_copy) -> None:
    tree = fixture_copy("v1-docker")
    (tree / "proc" / "self" / "mountinfo").unlink()
    stats = read_cgroup(**roots(tree))
    assert stats is not None
    assert (stats.memory_limit, stats.cpu_limit, stats.cpu_usage_usec) == (268435456, 0.5, 5000000)


def test_v1_limit_on_a_parent_and_the_unlimited_sentinel_on_the_leaf() -> None:
    stats = read_cgroup(**roots(FIXTURES / "v1-nested"))
    assert stats is not None
    assert stats.path == "/kubepods/burstable/pod42/ctr1"
    assert (stats.memory_limit, stats.memory_limit_path) == (
        1073741824,
        "/kubepods/burstable/pod42",
    )
    assert stats.memory_working_set == 536870912 - 134217728
    assert stats.memory_oom_kills is None  # an older kernel's memory.oom_control
    # the leaf allows 2.5 CPUs but its pod 2: the tighter one counts
    assert (stats.cpu_limit, stats.cpu_limit_path) == (2.0, "/kubepods/burstable/pod42")
    assert stats.cpu_usage_usec == 7000000


def test_v1_hierarchical_limit_counts_when_the_tightest_ancestor_is_not_visible(
    fixture_copy,
) -> None:
    tree = fixture_copy("v1-docker")
    memory = roots(tree)["cgroup_root"] / "memory"
    (memory / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    stat = (memory / "memory.stat").read_text()
    (memory / "memory.stat").write_text(
        stat.replace("hierarchical_memory_limit 268435456", "hierarchical_memory_limit 134217728")
    )
    stats = read_cgroup(**roots(tree))
    assert stats is not None
    assert (stats.memory_limit, stats.memory_limit_path) == (134217728, None)


def test_hybrid_v1_reads_pressure_from_the_unified_tree(fixture_copy) -> None:
    tree = fixture_copy("v1-docker")
    unified = roots(tree)["cgroup_root"] / "unified" / "system.slice" / "containerd.service"
    unified.mkdir(parents=True)
    (unified.parents[1] / "cgroup.procs").write_text("1\n")
    (unified / "cpu.pressure").write_text("some avg10=3.00 avg60=2.00 avg300=1.00 total=5\n")
    stats = read_cgroup(**roots(tree))
    assert stats is not None
    assert stats.cpu_pressure == Pressure(3.0, 2.0, 1.0, 5)
    assert stats.memory_pressure is None


def test_a_reader_follows_the_process_to_another_cgroup(fixture_copy) -> None:
    tree = fixture_copy("v2-pod")
    reader = CgroupReader(**roots(tree))
    first = reader.read()
    assert first is not None
    assert first.path.endswith("/cri-containerd-abc.scope")
    pod = first.path.rsplit("/", 1)[0]
    (tree / "proc" / "self" / "cgroup").write_text(f"0::{pod}\n")
    moved = reader.read()
    assert moved is not None
    assert moved.path == pod
    assert (moved.memory_limit, moved.memory_limit_path) == (536870912, pod)
    assert moved.memory_usage is None  # the fixture has no usage files at the pod level


def test_a_reader_reads_only_what_is_asked(fixture_copy) -> None:
    reader = CgroupReader(**roots(fixture_copy("v1-docker")))
    memory_only = reader.read(cpu=False)
    assert memory_only is not None
    assert memory_only.memory_limit == 268435456
    assert (memory_only.cpu_limit, memory_only.cpu_usage_usec) == (None, None)
    assert not any("cpu" in path for path in memory_only.files)
    cpu_only = reader.read(memory=False)
    assert cpu_only is not None
    assert (cpu_only.cpu_limit, cpu_only.memory_limit) == (0.5, None)


def test_no_cgroup_gives_none(tmp_path: Path) -> None:
    assert read_cgroup(cgroup_root=tmp_path / "sys", proc_root=tmp_path / "proc") is None
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "self" / "cgroup").write_text("0::/app\n")
    assert read_cgroup(cgroup_root=tmp_path / "sys", proc_root=tmp_path / "proc") is None


def test_a_malformed_file_is_an_error_naming_it(fixture_copy) -> None:
    tree = fixture_copy("v2-pod")
    stats = read_cgroup(**roots(tree))
    assert stats is not None
    leaf = roots(tree)["cgroup_root"] / stats.path.lstrip("/")
    (leaf / "cpu.max").write_text("lots 100000\n")
    with pytest.raises(
        ValueError, match=r"cannot parse .*cpu\.max: expected an integer, got 'lots'"
    ):
        read_cgroup(**roots(tree))


# -- this machine's real files ------------------------------------------------------------------

REAL_CGROUP = Path("/proc/self/cgroup")


@pytest.mark.skipif(not REAL_CGROUP.is_file(), reason="no /proc/self/cgroup (not Linux)")
def test_this_machines_cgroup_matches_its_files() -> None:
    stats = read_cgroup()
    membership = parse_membership(REAL_CGROUP.read_text())
    if stats is None:
        pytest.skip("no cgroup hierarchy mounted under /sys/fs/cgroup")
    if stats.version == 1:
        memory_path = membership.controllers.get("memory")
        if memory_path is not None:
            assert stats.path == memory_path
            leaf = Path("/sys/fs/cgroup/memory") / memory_path.lstrip("/")
            if leaf.is_dir():
                assert stats.memory_limit_hits == int((leaf / "memory.failcnt").read_text())
                leaf_limit = parse_v1_limit((leaf / "memory.limit_in_bytes").read_text())
                if leaf_limit is not None:
                    assert stats.memory_limit is not None
                    assert stats.memory_limit <= leaf_limit
        quota = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
        if membership.controllers.get("cpu") == "/" and quota.is_file():
            raw = int(quota.read_text())
            if raw < 0:
                assert stats.cpu_limit is None
    else:
        assert stats.path == membership.unified
    assert stats.memory_usage is None or stats.memory_usage > 0
    if stats.memory_usage is not None:
        assert stats.memory_working_set is not None
        assert 0 <= stats.memory_working_set <= stats.memory_usage
    assert stats.cpu_usage_usec is None or stats.cpu_usage_usec > 0
    assert all(os.path.isfile(path) for path in stats.files)
