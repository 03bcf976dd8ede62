"""What the kernel's control groups say about this process's memory and CPU.

Theory of operation
-------------------
Inside a container, ``/proc/meminfo`` and ``os.cpu_count()`` describe the host: a process limited
to 512 MiB on a 64 GiB machine sees 64 GiB. The limits that matter live in the cgroup the process
belongs to. :func:`read_cgroup` finds it and reads it:

1. ``<proc_root>/self/cgroup`` names the process's cgroup: ``0::/path`` under cgroup v2 (one
   unified tree), ``N:memory:/path`` and ``N:cpu,cpuacct:/path`` lines under v1 (one tree per
   controller).
2. The path is resolved under ``cgroup_root``. A container usually sees only its own subtree
   mounted at ``cgroup_root``, while ``/proc/self/cgroup`` may still print the host's path:
   ``<proc_root>/self/mountinfo`` gives the mounted root of each tree, which is stripped from
   the path; failing that, leading components are dropped until a directory exists.
3. Limits are read from the process's own cgroup **and every ancestor up to the mount point**, and
   the tightest one wins: a limit is often set on a parent (a Kubernetes pod's cgroup, a systemd
   slice) with none on the leaf. Usage figures come from the leaf.

Figures (bytes, microseconds, counts), v2 file / v1 file:

- memory limit: ``memory.max`` (``max``: none) / ``memory.limit_in_bytes`` (>= 2**62: none) and
  ``hierarchical_memory_limit`` in ``memory.stat`` (the kernel's own tightest ancestor);
- memory usage: ``memory.current`` / ``memory.usage_in_bytes``;
- working set: usage less ``inactive_file`` / less ``total_inactive_file`` (``memory.stat``);
- OOM kills: ``oom_kill`` in ``memory.events`` / in ``memory.oom_control`` (kernel 4.13+);
- limit hits: ``max`` in ``memory.events`` / ``memory.failcnt``;
- CPU limit in CPUs: ``cpu.max`` quota over period (``max``: none) / ``cpu.cfs_quota_us`` over
  ``cpu.cfs_period_us`` (-1: none);
- CPU time used: ``usage_usec`` in ``cpu.stat`` / ``cpuacct.usage`` (nanoseconds, converted);
- throttling: ``nr_periods``, ``nr_throttled``, ``throttled_usec`` in ``cpu.stat`` / the same
  with ``throttled_time`` (nanoseconds, converted);
- pressure stall (PSI): ``memory.pressure``, ``cpu.pressure`` / the same files in the v2 tree of a
  hybrid mount (``cgroup_root/unified``), when present.

The working set is what container runtimes and the kubelet compare with the limit to decide an
OOM kill: page cache that is inactive can be dropped under pressure, so counting it would report a
container "full" that is not.

Everything here is pure over files: the parsers take text, the walker takes ``cgroup_root`` and
``proc_root``, so a test points them at a fixture tree in the kernel's documented formats.
:class:`CgroupReader` (what a check holds) works out where the cgroup lives once, again only when
``/proc/<pid>/cgroup`` changes, and then reads just the figure files of the resource asked for.
Missing files give ``None`` figures; no cgroup at all gives ``None`` (the caller falls back to the
host's figures). A file with content the kernel never writes is a
``ValueError`` naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TypeVar

__all__ = [
    "UNLIMITED_V1",
    "CgroupReader",
    "CgroupStats",
    "Membership",
    "Pressure",
    "cpus_from_quota",
    "parse_cpu_max",
    "parse_keyed",
    "parse_membership",
    "parse_mountinfo",
    "parse_pressure",
    "parse_v1_limit",
    "parse_v2_limit",
    "read_cgroup",
]

_T = TypeVar("_T")
_N = TypeVar("_N", int, float)

#: cgroup v1 writes "no limit" as the largest page-aligned counter (9223372036854771712 with 4 KiB
#: pages, other values with other page sizes); anything this large is no limit.
UNLIMITED_V1 = 2**62


@dataclass(frozen=True, slots=True)
class Membership:
    """Where ``/proc/<pid>/cgroup`` places a process.

    Attributes:
        unified: the cgroup v2 path (the ``0::`` line), if any.
        controllers: cgroup v1 paths by controller name (``memory``, ``cpu``, ``cpuacct``...).
    """

    unified: str | None
    controllers: dict[str, str]


@dataclass(frozen=True, slots=True)
class Pressure:
    """One pressure-stall file: share of wall time (percent) some/all tasks stalled."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    some_total_usec: int
    full_avg10: float | None = None
    full_avg60: float | None = None
    full_avg300: float | None = None
    full_total_usec: int | None = None


@dataclass(frozen=True, slots=True)
class CgroupStats:
    """One reading of the process's cgroup (see the module documentation for the sources)."""

    version: int
    path: str
    memory_limit: int | None = None
    memory_limit_path: str | None = None
    memory_usage: int | None = None
    memory_working_set: int | None = None
    memory_oom_kills: int | None = None
    memory_limit_hits: int | None = None
    cpu_limit: float | None = None
    cpu_limit_path: str | None = None
    cpu_usage_usec: int | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_usec: int | None = None
    memory_pressure: Pressure | None = None
    cpu_pressure: Pressure | None = None
    files: tuple[str, ...] = field(default=(), repr=False)


# -- parsers: text in, figures out ------------------------------------------------------------


def parse_membership(text: str) -> Membership:
    """Parse ``/proc/<pid>/cgroup`` (``hierarchy-ID:controller-list:path`` lines)."""
    unified: str | None = None
    controllers: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not parts[2].startswith("/"):
            raise ValueError(f"line {number} is not 'id:controllers:/path': {line!r}")
        hierarchy, names, path = parts
        if hierarchy == "0" and names == "":
            unified = path
            continue
        for name in names.split(","):
            if name:
                controllers[name.removeprefix("name=")] = path
    return Membership(unified=unified, controllers=controllers)


def parse_mountinfo(text: str) -> dict[str, str]:
    """The mounted root of each cgroup tree in ``/proc/<pid>/mountinfo``.

    Returns:
        ``{controller: root}`` for v1 mounts and ``{"": root}`` for the v2 mount. A root other
        than ``/`` means only that subtree is visible (a container's namespaced view).
    """
    roots: dict[str, str] = {}
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        head, tail = line.split(" - ", 1)
        after = tail.split()
        if len(after) < 3:
            continue
        fstype, options = after[0], after[2]
        root = _unescape(head.split()[3])
        if fstype == "cgroup2":
            roots.setdefault("", root)
        elif fstype == "cgroup":
            for option in options.split(","):
                if (option not in ("rw", "ro") and "=" not in option) or option.startswith("name="):
                    roots.setdefault(option.removeprefix("name="), root)
    return roots


def parse_keyed(text: str) -> dict[str, int]:
    """Parse a flat keyed file (``memory.stat``, ``cpu.stat``, ``memory.events``): ``key value``."""
    values: dict[str, int] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"expected 'key value', got {line!r}")
        try:
            values[parts[0]] = int(parts[1])
        except ValueError:
            raise ValueError(f"expected an integer value, got {line!r}") from None
    return values


def parse_v2_limit(text: str) -> int | None:
    """A cgroup v2 limit file (``memory.max``): bytes, or ``None`` for ``max``."""
    value = text.strip()
    if value == "max":
        return None
    return _non_negative_int(value)


def parse_v1_limit(text: str) -> int | None:
    """A cgroup v1 limit file (``memory.limit_in_bytes``): bytes, or ``None`` when unlimited."""
    value = _non_negative_int(text.strip())
    return None if value >= UNLIMITED_V1 else value


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """``cpu.max`` (``"$MAX $PERIOD"``): ``(quota_usec or None for max, period_usec)``."""
    parts = text.split()
    if len(parts) == 1:  # the kernel accepts a bare quota on write and defaults the period
        parts.append("100000")
    if len(parts) != 2:
        raise ValueError(f"expected '$MAX $PERIOD', got {text.strip()!r}")
    quota = None if parts[0] == "max" else _non_negative_int(parts[0])
    period = _non_negative_int(parts[1])
    if period == 0:
        raise ValueError(f"period must be > 0, got {text.strip()!r}")
    if quota == 0:  # the kernel refuses a quota under 1 ms; none would leave no CPU at all
        raise ValueError(f"quota must be > 0, got {text.strip()!r}")
    return quota, period


def cpus_from_quota(quota_usec: int | None, period_usec: int) -> float | None:
    """Effective CPUs a CFS quota allows (``150000`` per ``100000`` is 1.5); ``None``: unlimited."""
    if quota_usec is None or quota_usec < 0:
        return None
    return quota_usec / period_usec


def parse_pressure(text: str) -> Pressure:
    """A PSI file: ``some avg10=0.00 avg60=0.00 avg300=0.00 total=0``, maybe a ``full`` line."""
    lines: dict[str, dict[str, str]] = {}
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        try:
            lines[parts[0]] = dict(part.split("=", 1) for part in parts[1:])
        except ValueError:
            raise ValueError(f"expected 'some|full key=value...', got {line!r}") from None
    if "some" not in lines:
        raise ValueError(f"no 'some' line in {text.strip()!r}")
    try:
        some = lines["some"]
        full = lines.get("full")
        return Pressure(
            some_avg10=float(some["avg10"]),
            some_avg60=float(some["avg60"]),
            some_avg300=float(some["avg300"]),
            some_total_usec=int(some["total"]),
            full_avg10=None if full is None else float(full["avg10"]),
            full_avg60=None if full is None else float(full["avg60"]),
            full_avg300=None if full is None else float(full["avg300"]),
            full_total_usec=None if full is None else int(full["total"]),
        )
    except (KeyError, ValueError) as exc:
        raise ValueError(f"malformed pressure figures ({exc}) in {text.strip()!r}") from None


def _non_negative_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"expected an integer, got {value!r}") from None
    if number < 0:
        raise ValueError(f"expected an integer >= 0, got {value!r}")
    return number


def _unescape(path: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal
    if "\\" not in path:
        return path
    out, i = [], 0
    while i < len(path):
        if path[i] == "\\" and path[i + 1 : i + 4].isdigit() and len(path[i + 1 : i + 4]) == 3:
            out.append(chr(int(path[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(path[i])
            i += 1
    return "".join(out)


# -- the tree walker ----------------------------------------------------------------------------


class _Files:
    """Reads files, recording which it used; a file that is absent or unreadable is ``None``."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used: list[str] = []

    def text(self, path: str) -> str | None:
        try:
            with open(path, "rb") as file:
                content = file.read()
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            return None
        self.used.append(path)
        return content.decode("utf-8", "replace")

    def parsed(self, path: str, parse: Callable[[str], _T]) -> _T | None:
        content = self.text(path)
        if content is None:
            return None
        try:
            return parse(content)
        except ValueError as exc:
            raise ValueError(f"cannot parse {path}: {exc}") from None


@dataclass(frozen=True, slots=True)
class _Tree:
    """The process's cgroup in one mounted hierarchy: its directory and its ancestors'.

    ``chain`` runs from the leaf up to the mount point, each directory with the name the kernel
    prints for it in ``/proc/self/cgroup`` (a namespaced view mounts only a subtree: the hidden
    components above it are kept in the names).
    """

    leaf: str
    chain: tuple[tuple[str, str], ...]  # (directory, cgroup name), leaf first

    @property
    def name(self) -> str:
        return self.chain[0][1]

    def tightest(self, limit: Callable[[str], _N | None]) -> tuple[_N | None, str | None]:
        """The smallest limit set on the leaf or an ancestor, and the cgroup that sets it."""
        best: _N | None = None
        where: str | None = None
        for directory, name in self.chain:
            value = limit(directory)
            if value is not None and (best is None or value < best):
                best, where = value, name
        return best, where


def _resolve(mount: str | None, path: str | None, mount_root: str | None) -> _Tree | None:
    """Where cgroup ``path`` lives in the hierarchy mounted at ``mount``."""
    if mount is None or path is None:
        return None
    parts = tuple(part for part in path.split("/") if part)
    if ".." in parts:  # a path outside this namespace's view: all we can see is the mount
        return _Tree(mount, ((mount, "/"),)) if os.path.isdir(mount) else None
    skip = 0
    if mount_root and mount_root != "/":
        root_parts = tuple(part for part in mount_root.split("/") if part)
        if parts[: len(root_parts)] == root_parts:
            skip = len(root_parts)
    # without mountinfo, a view rooted deeper than the path says shows up as missing directories:
    # drop leading components until one exists
    for start in range(skip, len(parts) + 1):
        visible = parts[start:]
        leaf = os.path.join(mount, *visible)
        if os.path.isdir(leaf):
            chain = [
                (os.path.join(mount, *visible[:depth]), "/" + "/".join(parts[: start + depth]))
                for depth in range(len(visible), -1, -1)
            ]
            return _Tree(leaf, tuple(chain))
    return None


def _controller_mount(root: str, controller: str) -> str | None:
    """The v1 hierarchy holding ``controller``: ``root/memory``, or ``root/cpu,cpuacct``..."""
    direct = os.path.join(root, controller)
    if os.path.isdir(direct):
        return direct
    try:
        entries = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    for entry in entries:
        path = os.path.join(root, entry)
        if controller in entry.split(",") and os.path.isdir(path):
            return path
    return None


@dataclass(frozen=True, slots=True)
class _Layout:
    version: int
    path: str
    memory: _Tree | None
    cpu: _Tree | None
    cpuacct: _Tree | None  # v1 only: v2 keeps CPU time in cpu.stat
    pressure: _Tree | None


class CgroupReader:
    """Reads a process's cgroup figures, again and again (what a check holds).

    Where the process's cgroup lives is worked out once and kept until ``/proc/<pid>/cgroup``
    changes (a process moved to another cgroup); each :meth:`read` then reads only the figure
    files. :func:`read_cgroup` is a one-off read.
    """

    __slots__ = ("_layout", "_membership", "cgroup_root", "pid", "proc_root")

    def __init__(
        self,
        *,
        cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
        proc_root: str | os.PathLike[str] = "/proc",
        pid: int | str = "self",
    ) -> None:
        self.cgroup_root = os.fspath(cgroup_root)
        self.proc_root = os.fspath(proc_root)
        self.pid = str(pid)
        self._membership: str | None = None
        self._layout: _Layout | None = None

    def read(self, *, memory: bool = True, cpu: bool = True) -> CgroupStats | None:
        """The figures now (only the memory or the CPU ones when the other is ``False``).

        Returns:
            The figures, or ``None`` when the process is in no cgroup that can be found under
            ``cgroup_root`` (not Linux, cgroups not mounted, ``/proc`` not readable).

        Raises:
            ValueError: a cgroup file holds something the kernel never writes (names the file).
        """
        files = _Files()
        membership = files.text(os.path.join(self.proc_root, self.pid, "cgroup"))
        if membership is None:
            return None
        if membership != self._membership:
            self._layout = self._locate(membership, files)
            self._membership = membership
        layout = self._layout
        if layout is None:
            return None
        stats = CgroupStats(version=layout.version, path=layout.path)
        if layout.version == 2:
            stats = _read_v2(files, layout, stats, memory=memory, cpu=cpu)
        else:
            stats = _read_v1(files, layout, stats, memory=memory, cpu=cpu)
        if layout.pressure is not None:
            leaf = layout.pressure.leaf
            stats = replace(
                stats,
                memory_pressure=files.parsed(os.path.join(leaf, "memory.pressure"), parse_pressure)
                if memory
                else None,
                cpu_pressure=files.parsed(os.path.join(leaf, "cpu.pressure"), parse_pressure)
                if cpu
                else None,
            )
        return replace(stats, files=tuple(files.used))

    def _locate(self, membership_text: str, files: _Files) -> _Layout | None:
        path = os.path.join(self.proc_root, self.pid, "cgroup")
        try:
            own = parse_membership(membership_text)
        except ValueError as exc:
            raise ValueError(f"cannot parse {path}: {exc}") from None
        mountinfo = os.path.join(self.proc_root, self.pid, "mountinfo")
        mounts = files.parsed(mountinfo, parse_mountinfo) or {}
        root = self.cgroup_root
        if own.unified is not None and os.path.isfile(os.path.join(root, "cgroup.controllers")):
            tree = _resolve(root, own.unified, mounts.get(""))
            if tree is None:
                return None
            return _Layout(2, tree.name, memory=tree, cpu=tree, cpuacct=None, pressure=tree)

        def tree_of(controller: str) -> _Tree | None:
            return _resolve(
                _controller_mount(root, controller),
                own.controllers.get(controller),
                mounts.get(controller),
            )

        memory, cpu = tree_of("memory"), tree_of("cpu")
        first = memory or cpu
        if first is None:
            return None
        # a hybrid mount keeps the pressure files in its v2 tree
        unified = os.path.join(root, "unified")
        pressure = None
        if os.path.isfile(os.path.join(unified, "cgroup.procs")):
            pressure = _resolve(unified, own.unified, mounts.get(""))
        return _Layout(1, first.name, memory, cpu, tree_of("cpuacct"), pressure)


def read_cgroup(
    *,
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
    proc_root: str | os.PathLike[str] = "/proc",
    pid: int | str = "self",
) -> CgroupStats | None:
    """Read the memory and CPU figures of ``pid``'s cgroup once (see :class:`CgroupReader`)."""
    return CgroupReader(cgroup_root=cgroup_root, proc_root=proc_root, pid=pid).read()


def _read_v2(
    files: _Files, layout: _Layout, stats: CgroupStats, *, memory: bool, cpu: bool
) -> CgroupStats:
    tree = layout.memory
    assert tree is not None
    leaf = tree.leaf
    if memory:
        limit, limit_at = tree.tightest(
            lambda d: files.parsed(os.path.join(d, "memory.max"), parse_v2_limit)
        )
        usage = files.parsed(os.path.join(leaf, "memory.current"), _non_negative_int_text)
        memory_stat = files.parsed(os.path.join(leaf, "memory.stat"), parse_keyed) or {}
        events = files.parsed(os.path.join(leaf, "memory.events"), parse_keyed) or {}
        stats = replace(
            stats,
            memory_limit=limit,
            memory_limit_path=limit_at,
            memory_usage=usage,
            memory_working_set=_working_set(usage, memory_stat.get("inactive_file")),
            memory_oom_kills=events.get("oom_kill"),
            memory_limit_hits=events.get("max"),
        )
    if cpu:
        cpu_limit, cpu_limit_at = tree.tightest(
            lambda d: _v2_cpus(files, os.path.join(d, "cpu.max"))
        )
        cpu_stat = files.parsed(os.path.join(leaf, "cpu.stat"), parse_keyed) or {}
        stats = replace(
            stats,
            cpu_limit=cpu_limit,
            cpu_limit_path=cpu_limit_at,
            cpu_usage_usec=cpu_stat.get("usage_usec"),
            cpu_periods=cpu_stat.get("nr_periods"),
            cpu_throttled_periods=cpu_stat.get("nr_throttled"),
            cpu_throttled_usec=cpu_stat.get("throttled_usec"),
        )
    return stats


def _read_v1(
    files: _Files, layout: _Layout, stats: CgroupStats, *, memory: bool, cpu: bool
) -> CgroupStats:
    if memory and layout.memory is not None:
        tree = layout.memory
        leaf = tree.leaf
        limit, limit_at = tree.tightest(
            lambda d: files.parsed(os.path.join(d, "memory.limit_in_bytes"), parse_v1_limit)
        )
        stat = files.parsed(os.path.join(leaf, "memory.stat"), parse_keyed) or {}
        hierarchical = stat.get("hierarchical_memory_limit")
        # the kernel's own answer, which sees ancestors above a namespaced mount too
        if (
            hierarchical is not None
            and hierarchical < UNLIMITED_V1
            and (limit is None or hierarchical < limit)
        ):
            limit, limit_at = hierarchical, None
        usage = files.parsed(os.path.join(leaf, "memory.usage_in_bytes"), _non_negative_int_text)
        oom = files.parsed(os.path.join(leaf, "memory.oom_control"), parse_keyed) or {}
        stats = replace(
            stats,
            memory_limit=limit,
            memory_limit_path=limit_at,
            memory_usage=usage,
            memory_working_set=_working_set(
                usage, stat.get("total_inactive_file", stat.get("inactive_file"))
            ),
            memory_oom_kills=oom.get("oom_kill"),
            memory_limit_hits=files.parsed(
                os.path.join(leaf, "memory.failcnt"), _non_negative_int_text
            ),
        )
    if cpu and layout.cpu is not None:
        cpu_limit, cpu_limit_at = layout.cpu.tightest(lambda d: _v1_cpus(files, d))
        stat = files.parsed(os.path.join(layout.cpu.leaf, "cpu.stat"), parse_keyed) or {}
        throttled_ns = stat.get("throttled_time")
        stats = replace(
            stats,
            cpu_limit=cpu_limit,
            cpu_limit_path=cpu_limit_at,
            cpu_periods=stat.get("nr_periods"),
            cpu_throttled_periods=stat.get("nr_throttled"),
            cpu_throttled_usec=None if throttled_ns is None else throttled_ns // 1000,
        )
    if cpu and layout.cpuacct is not None:
        usage_ns = files.parsed(
            os.path.join(layout.cpuacct.leaf, "cpuacct.usage"), _non_negative_int_text
        )
        stats = replace(stats, cpu_usage_usec=None if usage_ns is None else usage_ns // 1000)
    return stats


def _non_negative_int_text(text: str) -> int:
    return _non_negative_int(text.strip())


def _working_set(usage: int | None, inactive_file: int | None) -> int | None:
    if usage is None:
        return None
    return max(0, usage - (inactive_file or 0))


def _v2_cpus(files: _Files, path: str) -> float | None:
    parsed = files.parsed(path, parse_cpu_max)
    return None if parsed is None else cpus_from_quota(*parsed)


def _v1_cpus(files: _Files, directory: str) -> float | None:
    path = os.path.join(directory, "cpu.cfs_quota_us")
    quota = files.parsed(path, _int_text)
    if quota is None or quota < 0:
        return None
    if quota == 0:  # the kernel refuses it (-1 is "no limit"); none would leave no CPU at all
        raise ValueError(f"cannot parse {path}: quota must be > 0 or -1, got 0")
    period = files.parsed(os.path.join(directory, "cpu.cfs_period_us"), _non_negative_int_text)
    if not period:
        return None
    return cpus_from_quota(quota, period)


def _int_text(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"expected an integer, got {text.strip()!r}") from None
