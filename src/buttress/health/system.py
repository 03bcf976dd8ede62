"""Memory and CPU checks for this process, its container and the host.

Theory of operation
-------------------
``memory_check()`` and ``cpu_check()`` report usage in percent of what is actually available,
which depends on the *scope*:

``"container"``
    The process's cgroup (:mod:`buttress.health.cgroup`): memory is the working set (usage less
    inactive page cache) over the tightest limit of the cgroup and its ancestors; CPU is the
    cgroup's CPU time over wall time times its effective CPUs (``cpu.max`` quota / period, or the
    CPUs the process may run on when no quota is set). OOM kills, limit hits, throttling and
    pressure-stall figures go into the reading's detail. A limit larger than the host's memory
    counts as the host's memory.
``"host"``
    The machine, through psutil: memory in use (total less available), CPU busy time over all
    CPU time since the previous check.
``"process"``
    This process, through psutil: resident memory over the container's limit (or the host's
    memory), CPU time over wall time times the CPUs available to it.
``"auto"`` (the default)
    ``"container"`` when the cgroup has a limit for that resource (memory limit, CPU quota), else
    ``"host"``: inside a limited container psutil's host figures would be wrong, outside one the
    cgroup is the whole machine. Decided at every check, so a limit set later is picked up.

CPU usage is a rate, so it needs two samples: each check keeps the sample it took and the next
check reports usage over the time between them. The first sample is taken when the check is
built, so the first check already has a window; a window shorter than
:data:`MIN_CPU_WINDOW` seconds (two checks in quick succession) gives ``usage=None`` and keeps the
older sample. Wall time comes from the default :class:`buttress.clock.Clock` (so a fake clock
makes the arithmetic exact in tests); host CPU needs no wall time (busy over total CPU time).

Reading ``/proc`` and ``/sys/fs/cgroup`` is served from kernel memory and psutil's calls are the
same reads, so these checks run inline on the event loop (microseconds) rather than in a worker
thread. A new OOM kill since the previous check sets ``Reading.status`` to DEGRADED: the kernel
itself says the container ran out of memory. Nothing else here decides a status.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..clock import get_clock
from .cgroup import CgroupReader, CgroupStats, Pressure
from .types import Reading, ResourceStatus

__all__ = ["MIN_CPU_WINDOW", "SCOPES", "CpuCheck", "MemoryCheck", "cpu_check", "memory_check"]

Scope = Literal["auto", "process", "host", "container"]

#: The scopes a system check accepts.
SCOPES: tuple[str, ...] = ("auto", "process", "host", "container")

#: Seconds two CPU samples must be apart for a usage figure.
MIN_CPU_WINDOW = 0.05


def memory_check(
    *,
    scope: Scope = "auto",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
    proc_root: str | os.PathLike[str] = "/proc",
) -> MemoryCheck:
    """A check of memory usage in percent (see the module documentation for ``scope``).

    Raises:
        ValueError: an unknown ``scope``, or ``scope="container"`` with no cgroup found.
        TypeError: a root that is not a path.
        ImportError: psutil is missing and the scope needs it (``pip install 'buttress[system]'``).
    """
    return MemoryCheck(scope=scope, cgroup_root=cgroup_root, proc_root=proc_root)


def cpu_check(
    *,
    scope: Scope = "auto",
    cgroup_root: str | os.PathLike[str] = "/sys/fs/cgroup",
    proc_root: str | os.PathLike[str] = "/proc",
) -> CpuCheck:
    """A check of CPU usage in percent since the previous check (see the module documentation).

    Raises:
        ValueError: an unknown ``scope``, or ``scope="container"`` with no cgroup found.
        TypeError: a root that is not a path.
        ImportError: psutil is missing and the scope needs it (``pip install 'buttress[system]'``).
    """
    return CpuCheck(scope=scope, cgroup_root=cgroup_root, proc_root=proc_root)


def _psutil() -> Any:
    try:
        import psutil
    except ImportError:
        raise ImportError(
            "the memory and CPU checks of the host and the process need psutil: "
            "pip install 'buttress[system]'"
        ) from None
    return psutil


class _SystemCheck:
    _resource = ""

    def __init__(
        self,
        *,
        scope: object,
        cgroup_root: object,
        proc_root: object,
    ) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(map(repr, SCOPES))}, got {scope!r}")
        for name, value in (("cgroup_root", cgroup_root), ("proc_root", proc_root)):
            if not isinstance(value, str | os.PathLike):
                raise TypeError(f"{name} must be a path, got {value!r}")
        self.scope: str = str(scope)
        self.cgroup_root = Path(cgroup_root)  # type: ignore[arg-type]
        self.proc_root = Path(proc_root)  # type: ignore[arg-type]
        self._psutil: Any = None if scope == "container" else _psutil()
        self._reader = CgroupReader(cgroup_root=self.cgroup_root, proc_root=self.proc_root)
        self._process: Any = None
        self._pid = 0
        self._host_total: int | None = None
        stats = self._cgroup() if scope in ("auto", "container") else None
        if scope == "container" and stats is None:
            raise ValueError(
                f"scope='container' but this process is in no cgroup found under "
                f"cgroup_root={str(self.cgroup_root)!r} (proc_root={str(self.proc_root)!r})"
            )
        self.target = self._describe(stats)

    def _describe(self, stats: CgroupStats | None) -> str:
        what = self._resource
        if self.scope == "process":
            return f"{what} of process {os.getpid()}"
        if self.scope == "host" or stats is None:
            return f"host {what}"
        cgroup = f"cgroup v{stats.version} {stats.path}"
        if self.scope == "container":
            return f"{what} of {cgroup}"
        return f"{what} of {cgroup} when limited, else the host"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.target}>"

    def _cgroup(self) -> CgroupStats | None:
        # only the figures of this check's resource
        return self._reader.read(memory=self._resource == "memory", cpu=self._resource == "CPU")

    def _own_process(self) -> Any:
        pid = os.getpid()
        if self._process is None or pid != self._pid:  # a forked child must not report its parent
            self._process, self._pid = self._psutil.Process(pid), pid
        return self._process

    def _host_memory(self) -> int | None:
        # the machine's memory does not change under a running process: read it once
        if self._host_total is None:
            self._host_total = self._read_host_memory()
        return self._host_total

    def _read_host_memory(self) -> int | None:
        if self._psutil is not None:
            return int(self._psutil.virtual_memory().total)
        try:
            text = (self.proc_root / "meminfo").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
        return None


class MemoryCheck(_SystemCheck):
    """Memory usage of the process, its container or the host (made by :func:`memory_check`)."""

    _resource = "memory"

    def __init__(self, *, scope: object, cgroup_root: object, proc_root: object) -> None:
        self._oom_kills: int | None = None
        super().__init__(scope=scope, cgroup_root=cgroup_root, proc_root=proc_root)

    async def __call__(self) -> Reading:
        return self.read()

    def read(self) -> Reading:
        """The reading, taken now (what awaiting the check returns)."""
        if self.scope == "host":
            return self._host()
        if self.scope == "process":
            return self._process_reading(self._cgroup())
        stats = self._cgroup()
        if self.scope == "container":
            if stats is None:
                raise RuntimeError(f"the process's cgroup is gone from {self.cgroup_root}")
            return self._container(stats)
        host_total = self._host_memory()
        limited = (
            stats is not None
            and stats.memory_limit is not None
            and stats.memory_working_set is not None
            and (host_total is None or stats.memory_limit < host_total)
        )
        return self._container(stats) if limited else self._host()  # type: ignore[arg-type]

    def _host(self) -> Reading:
        memory = self._psutil.virtual_memory()
        total, available = int(memory.total), int(memory.available)
        return Reading(
            usage=_percent(total - available, total),
            detail={
                "scope": "host",
                "total_bytes": total,
                "available_bytes": available,
                "used_bytes": total - available,
            },
        )

    def _process_reading(self, stats: CgroupStats | None) -> Reading:
        rss = int(self._own_process().memory_info().rss)
        host_total = self._host_memory()
        limit, source = host_total, "host"
        if (
            stats is not None
            and stats.memory_limit is not None
            and (host_total is None or stats.memory_limit < host_total)
        ):
            limit, source = stats.memory_limit, "cgroup"
        return Reading(
            usage=None if limit is None else _percent(rss, limit),
            detail={"scope": "process", "rss_bytes": rss, "limit_bytes": limit, "limit": source},
        )

    def _container(self, stats: CgroupStats) -> Reading:
        host_total = self._host_memory()
        limit = stats.memory_limit
        if limit is None or (host_total is not None and host_total < limit):
            limit = host_total
        used = stats.memory_working_set
        detail: dict[str, object] = {
            "scope": "container",
            "cgroup": stats.path,
            "cgroup_version": stats.version,
            "limit_bytes": limit,
            "limit_cgroup": stats.memory_limit_path,
            "usage_bytes": stats.memory_usage,
            "working_set_bytes": used,
            "oom_kills": stats.memory_oom_kills,
            "limit_hits": stats.memory_limit_hits,
        }
        detail.update(_pressure(stats.memory_pressure))
        status = message = None
        previous, self._oom_kills = self._oom_kills, stats.memory_oom_kills
        if previous is not None and stats.memory_oom_kills is not None:
            new = stats.memory_oom_kills - previous
            if new > 0:
                status = ResourceStatus.DEGRADED
                kills = "1 OOM kill" if new == 1 else f"{new} OOM kills"
                message = f"{kills} in cgroup {stats.path} since the previous check"
        return Reading(
            usage=None if used is None or not limit else _percent(used, limit),
            status=status,
            detail=detail,
            message=message,
        )


@dataclass(frozen=True, slots=True)
class _CpuSample:
    scope: str
    at: float  # clock seconds
    busy: float  # seconds of CPU time (cgroup/process) or busy CPU time (host)
    total: float = 0.0  # host only: all CPU time
    periods: int | None = None
    throttled_periods: int | None = None
    throttled_usec: int | None = None


class CpuCheck(_SystemCheck):
    """CPU usage of the process, its container or the host (made by :func:`cpu_check`)."""

    _resource = "CPU"

    def __init__(self, *, scope: object, cgroup_root: object, proc_root: object) -> None:
        self._previous: dict[str, _CpuSample] = {}
        super().__init__(scope=scope, cgroup_root=cgroup_root, proc_root=proc_root)
        # the first check needs an earlier sample to compare with
        sample = self._sample(self._cgroup() if self.scope != "host" else None)[0]
        self._previous[sample.scope] = sample

    async def __call__(self) -> Reading:
        return self.read()

    def read(self) -> Reading:
        """The reading, taken now (what awaiting the check returns)."""
        stats = self._cgroup() if self.scope != "host" else None
        if self.scope == "container" and stats is None:
            raise RuntimeError(f"the process's cgroup is gone from {self.cgroup_root}")
        sample, cpus, detail = self._sample(stats)
        previous = self._previous.get(sample.scope)
        if previous is None:
            self._previous[sample.scope] = sample
            return Reading(detail=detail, message="first sample; usage from the next check")
        if sample.scope == "host":
            window = sample.total - previous.total
            short = window <= 0
        else:
            window = sample.at - previous.at
            short = window < MIN_CPU_WINDOW
        if short:  # keep the older sample so the next check has a real window
            return Reading(detail=detail, message="samples too close together for a usage figure")
        self._previous[sample.scope] = sample
        busy = sample.busy - previous.busy
        usage = busy / window if sample.scope == "host" else busy / (window * cpus)
        detail["window_seconds"] = round(sample.at - previous.at, 6)
        if sample.periods is not None and previous.periods is not None:
            periods = sample.periods - previous.periods
            throttled = (sample.throttled_periods or 0) - (previous.throttled_periods or 0)
            detail["throttled_percent"] = _percent(throttled, periods) if periods > 0 else 0.0
            if sample.throttled_usec is not None and previous.throttled_usec is not None:
                throttled_usec = sample.throttled_usec - previous.throttled_usec
                detail["throttled_seconds"] = throttled_usec / 1e6
        return Reading(usage=min(100.0, max(0.0, usage * 100.0)), detail=detail)

    def _sample(self, stats: CgroupStats | None) -> tuple[_CpuSample, float, dict[str, object]]:
        now = get_clock().now()
        available = _available_cpus()
        scope = self.scope
        if scope == "auto":
            limited = stats is not None and stats.cpu_limit is not None
            scope = "container" if limited and stats.cpu_usage_usec is not None else "host"  # type: ignore[union-attr]
        if scope == "host":
            times = self._psutil.cpu_times()
            total = sum(times)
            # Linux counts guest time inside user time too
            total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
            idle = times.idle + getattr(times, "iowait", 0.0)
            cpus = float(self._psutil.cpu_count() or available)
            sample = _CpuSample("host", now, busy=total - idle, total=total)
            detail: dict[str, object] = {"scope": "host", "cpus": cpus}
            if hasattr(os, "getloadavg"):
                detail["load_1m"] = os.getloadavg()[0]
            return sample, cpus, detail
        if scope == "process":
            times = self._own_process().cpu_times()
            cpus = float(available)
            if stats is not None and stats.cpu_limit is not None:
                cpus = min(cpus, stats.cpu_limit)
            sample = _CpuSample("process", now, busy=float(times.user + times.system))
            return sample, cpus, {"scope": "process", "cpus": cpus}
        assert stats is not None
        if stats.cpu_usage_usec is None:
            raise RuntimeError(f"cgroup {stats.path} reports no CPU usage (no cpu.stat/cpuacct)")
        cpus = float(available) if stats.cpu_limit is None else min(available, stats.cpu_limit)
        sample = _CpuSample(
            "container",
            now,
            busy=stats.cpu_usage_usec / 1e6,
            periods=stats.cpu_periods,
            throttled_periods=stats.cpu_throttled_periods,
            throttled_usec=stats.cpu_throttled_usec,
        )
        detail = {
            "scope": "container",
            "cgroup": stats.path,
            "cgroup_version": stats.version,
            "cpus": cpus,
            "cpu_limit": stats.cpu_limit,
            "limit_cgroup": stats.cpu_limit_path,
        }
        detail.update(_pressure(stats.cpu_pressure))
        return sample, cpus, detail


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _percent(part: float, whole: float) -> float:
    return min(100.0, max(0.0, part / whole * 100.0)) if whole > 0 else 0.0


def _pressure(pressure: Pressure | None) -> dict[str, object]:
    if pressure is None:
        return {}
    figures: dict[str, object] = {"pressure_some_avg10": pressure.some_avg10}
    if pressure.full_avg10 is not None:
        figures["pressure_full_avg10"] = pressure.full_avg10
    return figures
