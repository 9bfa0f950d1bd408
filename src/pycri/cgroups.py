"""cgroup paths of pods and containers (cgroupfs driver), and reading their counters.

Each container's cgroup is ``<pod cgroup parent>/<container id>``; pods without a parent
(crictl) go under the ``cgroup_parent`` config key (``/pycri``), which a sandbox records in
its metadata at creation. The paths are derived, not stored, so exit handling and stats
find them from the metadata alone. Reading a counter is a small file read on cgroupfs, and
``remove_cgroup`` a few rmdirs: callers on the event loop run them in a thread.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PARENT = "/pycri"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroups_path(cgroup_parent: str, object_id: str, *, default: str = DEFAULT_PARENT) -> str:
    """The cgroup (relative to each hierarchy's root) of a pod's pause or app container."""
    parent = cgroup_parent or default or DEFAULT_PARENT
    if not parent.startswith("/"):
        parent = "/" + parent
    return f"{parent.rstrip('/')}/{object_id}"


def is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").exists()


def hybrid_v2_controllers(root: Path = CGROUP_ROOT) -> list[str]:
    """In hybrid mode (v1 hierarchies, plus the v2 one at ``unified/``), the controllers bound
    to v2 (a controller no v1 hierarchy mounts lands there); empty otherwise."""
    if (root / "cgroup.controllers").exists():
        return []  # pure v2
    try:
        return (root / "unified" / "cgroup.controllers").read_text().split()
    except OSError:
        return []


def oom_kill_count(path: str) -> int:
    """How many OOM kills the kernel made in this cgroup (0 when unknown)."""
    rel = path.lstrip("/")
    if is_v2():
        return _read_keyed(f"{CGROUP_ROOT}/{rel}/memory.events").get("oom_kill", 0)
    return _read_keyed(f"{CGROUP_ROOT}/memory/{rel}/memory.oom_control").get("oom_kill", 0)


@dataclass(frozen=True, kw_only=True)
class CgroupLimits:
    """CPU and memory limits of one cgroup, in CRI units (None: leave as it is)."""

    cpu_shares: int | None = None
    cpu_quota: int | None = None  # µs per period; -1: no limit
    cpu_period: int | None = None  # µs
    memory_limit: int | None = None  # bytes; -1: no limit
    cpuset_cpus: str | None = None
    cpuset_mems: str | None = None


class CgroupWriteError(OSError):
    """The kernel refused a limit (a memory limit below the usage, a quota its children
    exceed, a cpuset outside the parent's); the previous values were put back."""


def shares_to_weight(shares: int) -> int:
    """cgroup v1 cpu.shares (2..262144) as v2 cpu.weight (1..10000), kubelet's formula."""
    return 1 + ((shares - 2) * 9999) // 262142


def _limit_writes(path: str, limits: CgroupLimits, *, root: Path) -> list[tuple[Path, str]]:
    """(file, value) in the order the kernel accepts them: period before quota."""
    rel = path.strip("/")
    writes: list[tuple[Path, str]] = []
    if (root / "cgroup.controllers").exists():  # v2: one directory, other file names
        d = root / rel
        if limits.cpu_shares is not None:
            writes.append((d / "cpu.weight", str(shares_to_weight(limits.cpu_shares))))
        if limits.cpu_quota is not None or limits.cpu_period is not None:
            quota = limits.cpu_quota
            period = limits.cpu_period or 100_000
            value = "max" if quota is None or quota < 0 else str(quota)
            writes.append((d / "cpu.max", f"{value} {period}"))
        if limits.memory_limit is not None:
            limit = limits.memory_limit
            writes.append((d / "memory.max", "max" if limit < 0 else str(limit)))
        if limits.cpuset_cpus is not None:
            writes.append((d / "cpuset.cpus", limits.cpuset_cpus))
        if limits.cpuset_mems is not None:
            writes.append((d / "cpuset.mems", limits.cpuset_mems))
        return writes
    if limits.cpu_shares is not None:
        writes.append((root / "cpu" / rel / "cpu.shares", str(limits.cpu_shares)))
    if limits.cpu_period is not None:
        writes.append((root / "cpu" / rel / "cpu.cfs_period_us", str(limits.cpu_period)))
    if limits.cpu_quota is not None:
        writes.append((root / "cpu" / rel / "cpu.cfs_quota_us", str(limits.cpu_quota)))
    if limits.memory_limit is not None:
        limit = limits.memory_limit
        writes.append((root / "memory" / rel / "memory.limit_in_bytes", str(limit)))
    if limits.cpuset_cpus is not None:
        writes.append((root / "cpuset" / rel / "cpuset.cpus", limits.cpuset_cpus))
    if limits.cpuset_mems is not None:
        writes.append((root / "cpuset" / rel / "cpuset.mems", limits.cpuset_mems))
    return writes


def apply_limits(path: str, limits: CgroupLimits, *, root: Path = CGROUP_ROOT) -> None:
    """Write ``limits`` into the existing cgroup ``path`` (blocking: call from a thread).

    All or nothing: the old values are read first, and if the kernel refuses one write the ones
    already made are put back before ``CgroupWriteError`` is raised. A cgroup that does not
    exist raises ``FileNotFoundError`` before anything is written.
    """
    writes = _limit_writes(path, limits, root=root)
    for file, _ in writes:
        if not file.parent.is_dir():
            raise FileNotFoundError(f"cgroup {file.parent} does not exist")
    old = [(file, file.read_text().strip()) for file, _ in writes]
    done: list[tuple[Path, str]] = []
    for (file, value), (_, previous) in zip(writes, old, strict=True):
        try:
            file.write_text(value)
        except OSError as err:
            for undo_file, undo_value in reversed(done):
                with contextlib.suppress(OSError):
                    undo_file.write_text(undo_value)
            raise CgroupWriteError(
                err.errno, f"{file.name} = {value}: {err.strerror or err}"
            ) from None
        done.append((file, previous))


# cgroup v1 reports "no memory limit" as the largest page-aligned int64.
_V1_UNLIMITED = 0x7FFFFFFFFFFFF000


@dataclass(frozen=True, kw_only=True)
class CgroupCounters:
    """One cgroup's counters and limits, as cAdvisor reads them (0 when not available).

    Memory follows cAdvisor: working set = usage - inactive file pages; rss and cache are the
    hierarchical (v1 ``total_*``) or v2 ``anon``/``file`` values; an unlimited limit is 0.
    """

    cpu_usage_ns: int = 0
    cpu_user_ns: int = 0
    cpu_system_ns: int = 0
    cfs_periods: int = 0
    cfs_throttled_periods: int = 0
    cfs_throttled_ns: int = 0
    memory_usage: int = 0
    memory_max_usage: int = 0
    memory_working_set: int = 0
    memory_rss: int = 0
    memory_cache: int = 0
    memory_swap: int = 0
    memory_mapped_file: int = 0
    memory_failcnt: int = 0
    oom_kills: int = 0
    processes: int = 0
    threads: int = 0
    cpu_shares: int = 0
    cpu_quota: int = 0  # 0: no quota
    cpu_period: int = 0
    memory_limit: int = 0  # 0: no limit


def _read(path: str) -> bytes:
    """A small cgroupfs/procfs file, raw (b"" when absent): one open, one read, one close.
    Scrapes read thousands of these; pathlib and text I/O would cost several times more."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, 65536)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _read_int(path: str) -> int:
    try:
        return int(_read(path).split()[0])
    except (ValueError, IndexError):
        return 0


def _read_keyed(path: str) -> dict[str, int]:
    values: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(b" ")
        try:
            values[key.decode()] = int(value)
        except ValueError:
            continue
    return values


def _count_lines(path: str) -> int:
    return len(_read(path).splitlines())


def read_counters(path: str, *, root: Path = CGROUP_ROOT) -> CgroupCounters | None:
    """The counters of cgroup ``path`` (blocking: a dozen small reads; call from a thread);
    None when the cgroup does not exist (the container stopped meanwhile)."""
    rel = path.strip("/")
    if (root / "cgroup.controllers").exists():
        return _read_v2(f"{root}/{rel}")
    return _read_v1(str(root), rel)


def _read_v1(root: str, rel: str) -> CgroupCounters | None:
    cpuacct, cpu = f"{root}/cpuacct/{rel}/", f"{root}/cpu/{rel}/"
    memory, pids = f"{root}/memory/{rel}/", f"{root}/pids/{rel}/"
    usage_text = _read(memory + "memory.usage_in_bytes")
    if not usage_text:
        return None  # no such cgroup (any more)
    usage = int(usage_text)
    stat = _read_keyed(memory + "memory.stat")
    cpu_stat = _read_keyed(cpu + "cpu.stat")
    quota = _read_int(cpu + "cpu.cfs_quota_us")
    limit = _read_int(memory + "memory.limit_in_bytes")
    oom = _read_keyed(memory + "memory.oom_control")
    return CgroupCounters(
        cpu_usage_ns=_read_int(cpuacct + "cpuacct.usage"),
        cpu_user_ns=_read_int(cpuacct + "cpuacct.usage_user"),
        cpu_system_ns=_read_int(cpuacct + "cpuacct.usage_sys"),
        cfs_periods=cpu_stat.get("nr_periods", 0),
        cfs_throttled_periods=cpu_stat.get("nr_throttled", 0),
        cfs_throttled_ns=cpu_stat.get("throttled_time", 0),
        memory_usage=usage,
        memory_max_usage=_read_int(memory + "memory.max_usage_in_bytes"),
        memory_working_set=max(usage - stat.get("total_inactive_file", 0), 0),
        memory_rss=stat.get("total_rss", 0),
        memory_cache=stat.get("total_cache", 0),
        memory_swap=stat.get("total_swap", 0),
        memory_mapped_file=stat.get("total_mapped_file", 0),
        memory_failcnt=_read_int(memory + "memory.failcnt"),
        oom_kills=oom.get("oom_kill", 0),
        processes=_count_lines(pids + "cgroup.procs"),
        threads=_read_int(pids + "pids.current"),
        cpu_shares=_read_int(cpu + "cpu.shares"),
        cpu_quota=max(quota, 0),
        cpu_period=_read_int(cpu + "cpu.cfs_period_us"),
        memory_limit=0 if limit >= _V1_UNLIMITED else limit,
    )


def _read_v2(d: str) -> CgroupCounters | None:
    usage_text = _read(f"{d}/memory.current")
    if not usage_text:
        return None
    usage = int(usage_text)
    cpu_stat = _read_keyed(f"{d}/cpu.stat")
    stat = _read_keyed(f"{d}/memory.stat")
    events = _read_keyed(f"{d}/memory.events")
    quota, period = 0, 0
    with contextlib.suppress(ValueError, IndexError):
        max_quota, max_period = _read(f"{d}/cpu.max").split()[:2]
        quota = 0 if max_quota == b"max" else int(max_quota)
        period = int(max_period)
    weight = _read_int(f"{d}/cpu.weight")
    limit_text = _read(f"{d}/memory.max").strip()
    limit = int(limit_text) if limit_text.isdigit() else 0
    return CgroupCounters(
        cpu_usage_ns=cpu_stat.get("usage_usec", 0) * 1000,
        cpu_user_ns=cpu_stat.get("user_usec", 0) * 1000,
        cpu_system_ns=cpu_stat.get("system_usec", 0) * 1000,
        cfs_periods=cpu_stat.get("nr_periods", 0),
        cfs_throttled_periods=cpu_stat.get("nr_throttled", 0),
        cfs_throttled_ns=cpu_stat.get("throttled_usec", 0) * 1000,
        memory_usage=usage,
        memory_max_usage=_read_int(f"{d}/memory.peak"),
        memory_working_set=max(usage - stat.get("inactive_file", 0), 0),
        memory_rss=stat.get("anon", 0),
        memory_cache=stat.get("file", 0),
        memory_swap=_read_int(f"{d}/memory.swap.current"),
        memory_mapped_file=stat.get("file_mapped", 0),
        memory_failcnt=events.get("max", 0),
        oom_kills=events.get("oom_kill", 0),
        processes=_count_lines(f"{d}/cgroup.procs"),
        threads=_read_int(f"{d}/pids.current"),
        # kubelet's inverse of shares_to_weight, so the spec metric speaks in shares
        cpu_shares=2 + ((weight - 1) * 262142) // 9999 if weight else 0,
        cpu_quota=quota,
        cpu_period=period,
        memory_limit=limit,
    )


def cgroup_dirs(path: str, *, root: Path = CGROUP_ROOT) -> list[Path]:
    """Where the cgroup ``path`` lives: one dir per v1 hierarchy, or the one v2 dir."""
    rel = path.strip("/")
    if not rel:
        return []
    if (root / "cgroup.controllers").exists():
        return [root / rel]
    try:
        hierarchies = sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())
    except OSError:
        return []
    return [h / rel for h in hierarchies]


def remove_cgroup(path: str, *, root: Path = CGROUP_ROOT, kill_timeout: float = 2.0) -> None:
    """rmdir the cgroup of one container in every hierarchy where it exists.

    runc does it when its container is deleted; this is for a container whose delete never
    ran (its shim died with containerd in the middle of a create). Processes still in it
    belong to that container alone (the cgroup is named by its ID): they are SIGKILLed
    first, as ``runc delete --force`` would. OSError (EBUSY) if they do not go within
    ``kill_timeout``; a cgroup that does not exist is fine.
    """
    directories = [d for d in cgroup_dirs(path, root=root) if d.is_dir()]
    if not directories:
        return
    deadline = time.monotonic() + kill_timeout
    while True:
        busy = []
        for directory in directories:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                continue
            except OSError as err:
                if err.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                busy.append(directory)
        if not busy:
            return
        for directory in busy:
            _kill_members(directory)
        directories = busy
        time.sleep(0.05)


def _kill_members(directory: Path) -> None:
    try:
        pids = [int(p) for p in (directory / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
