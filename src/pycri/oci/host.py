"""Facts about the host that decide what runc can do, read once at start-up.

The spec builders never ask for what the host cannot give (a capability outside the bounding
set, more open files than the hard limit, swap or hugetlb limits without their cgroup
support): runc would fail at start with an error that names none of them.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

from pycri.oci.capabilities import ALL_CAPABILITIES, capabilities_from_mask


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
    )
