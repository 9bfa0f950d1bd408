"""Facts about the host that decide what runc can do, read once at start-up.

The spec builders never ask for what the host cannot give (a capability outside the bounding
set, more open files than the hard limit, swap or hugetlb limits without their cgroup
support): runc would fail at start with an error that names none of them.
"""

from __future__ import annotations

import os
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass

from pycri.oci.capabilities import ALL_CAPABILITIES, capabilities_from_mask

_CPUSET = re.compile(r"[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*")


@dataclass(frozen=True, kw_only=True)
class HostFeatures:
    """What the host lets runc do, so a spec never asks for something that makes runc fail.

    The defaults describe an unrestricted host; :func:`probe_host_features` reads the real values.
    """

    # The runtime's capability bounding set: runc cannot grant a capability it does not hold.
    available_capabilities: frozenset[str] = frozenset(ALL_CAPABILITIES)
    # The runtime's hard RLIMIT_NOFILE; raising it needs CAP_SYS_RESOURCE. None: do not clamp.
    nofile_hard_limit: int | None = None
    # cgroup v1 has memory.memsw.* only with swap accounting on; without it a swap limit fails.
    swap_limit_supported: bool = True
    # kubelet sends limits for every huge page size; without the hugetlb controller they must go.
    hugetlb_supported: bool = True
    # CPUs and memory nodes a cpuset may name, huge page sizes ("2MB") a limit may name;
    # None: not known, anything that parses is accepted.
    online_cpus: frozenset[int] | None = None
    online_mems: frozenset[int] | None = None
    hugepage_sizes: frozenset[str] | None = None
    # runc applies ``unified`` resources only on cgroup v2
    cgroup_v2: bool = False


def probe_host_features(*, cgroup_root: str = "/sys/fs/cgroup") -> HostFeatures:
    """Read :class:`HostFeatures` from this process and the cgroup v1 hierarchy.

    Call it once at start-up: pycri and containerd run as root under the same bounding set and
    limits, so this process's values stand for the runtime's.
    """
    bounding_mask = 0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapBnd:"):
                bounding_mask = int(line.split(":", 1)[1].strip(), 16)
                break
    _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return HostFeatures(
        available_capabilities=capabilities_from_mask(bounding_mask),
        nofile_hard_limit=None if nofile_hard == resource.RLIM_INFINITY else nofile_hard,
        swap_limit_supported=os.path.exists(
            os.path.join(cgroup_root, "memory", "memory.memsw.limit_in_bytes")
        ),
        hugetlb_supported=os.path.isdir(os.path.join(cgroup_root, "hugetlb")),
        online_cpus=_read_set("/sys/devices/system/cpu/online", parse_cpuset),
        # a machine without NUMA has no node directory: node 0 only
        online_mems=_read_set("/sys/devices/system/node/online", parse_cpuset) or frozenset({0}),
        hugepage_sizes=_hugepage_sizes("/sys/kernel/mm/hugepages"),
        cgroup_v2=os.path.exists(os.path.join(cgroup_root, "cgroup.controllers")),
    )


def parse_cpuset(text: str) -> frozenset[int]:
    """``0-3,5`` → {0, 1, 2, 3, 5}; ValueError if it is not a cpuset list."""
    if not _CPUSET.fullmatch(text):
        raise ValueError(f"{text[:64]!r} is not a list of numbers and ranges like 0-3,5")
    members: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        first, last = int(low), int(high or low)
        if last < first:
            raise ValueError(f"{text[:64]!r}: range {part} goes backwards")
        if last - first > 65536:
            raise ValueError(f"{text[:64]!r}: range {part} is too large")
        members.update(range(first, last + 1))
    return frozenset(members)


def _read_set(path: str, parse: Callable[[str], frozenset[int]]) -> frozenset[int] | None:
    try:
        with open(path, encoding="ascii") as f:
            return parse(f.read().strip())
    except (OSError, ValueError):
        return None


_UNITS = (("PB", 1 << 40), ("TB", 1 << 30), ("GB", 1 << 20), ("MB", 1 << 10), ("KB", 1))


def hugepage_size_name(kib: int) -> str:
    """2048 (kB) → ``2MB``, kubelet's (and the hugetlb controller's) name of a page size."""
    for unit, size in _UNITS:
        if kib % size == 0:
            return f"{kib // size}{unit}"
    return f"{kib}KB"


def _hugepage_sizes(directory: str) -> frozenset[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return frozenset()
    sizes = set()
    for name in names:  # hugepages-2048kB
        digits = name.removeprefix("hugepages-").removesuffix("kB")
        if digits.isdigit():
            sizes.add(hugepage_size_name(int(digits)))
    return frozenset(sizes)
