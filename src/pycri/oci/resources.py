"""CRI Linux resources (CPU, memory, huge pages, unified) as OCI ``linux.resources``, for
create and for UpdateContainerResources, and their validation.

``validate_linux_resources`` refuses, before anything is made, what runc or the kernel
would refuse only at start or update (with an error naming neither the field nor the value):
negative shares or memory, a CFS period outside 1 ms to 1 s, a quota below 1 ms, a memory
limit too small for runc to start the container, a swap limit below the memory limit, an
``oom_score_adj`` outside -1000..1000, a cpuset that does not parse or names CPUs or memory
nodes this machine lacks, a huge page size that is not a size (or not one the machine
has), and ``unified`` settings on cgroup v1 (runc only applies them on v2).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from cri_api.v1 import api_pb2

from pycri.errors import quote
from pycri.oci.common import JsonDict
from pycri.oci.host import HostFeatures, parse_cpuset

CFS_PERIOD_MIN_US = 1000  # the kernel's bounds for cpu.cfs_period_us
CFS_PERIOD_MAX_US = 1_000_000
CFS_QUOTA_MIN_US = 1000
# Below this runc cannot even start the container: its init is charged to the cgroup before
# the limit is applied, and setting a limit below that fails ("error setting cgroup config
# for procHooks"). Measured with runc 1.1 on Debian 12: 2 MiB fails, 3 MiB runs a shell that
# echoes and exits. Refusing only what cannot work (Docker refuses below 6 MiB).
MIN_MEMORY_BYTES = 3 * 1024 * 1024
OOM_SCORE_ADJ_MIN = -1000
OOM_SCORE_ADJ_MAX = 1000
_HUGEPAGE_SIZE = re.compile(r"[1-9][0-9]*(KB|MB|GB|TB|PB)")


def _check_cpuset(text: str, *, what: str, available: frozenset[int] | None) -> None:
    try:
        members = parse_cpuset(text)
    except ValueError as err:
        raise ValueError(f"{what}: {err}") from None
    if available is not None and not members <= available:
        missing = ",".join(str(m) for m in sorted(members - available)[:8])
        raise ValueError(f"{what} {quote(text)} names {missing}, which this node does not have")


def validate_linux_resources(
    resources: api_pb2.LinuxContainerResources, *, host: HostFeatures
) -> None:
    """ValueError (a message naming the field) for what runc or the kernel would refuse."""
    r = resources
    if r.cpu_shares < 0:
        raise ValueError(f"cpu_shares {r.cpu_shares} must not be negative")
    if r.cpu_period and not CFS_PERIOD_MIN_US <= r.cpu_period <= CFS_PERIOD_MAX_US:
        raise ValueError(
            f"cpu_period {r.cpu_period} must be between {CFS_PERIOD_MIN_US} and "
            f"{CFS_PERIOD_MAX_US} microseconds"
        )
    if r.cpu_quota < -1 or 0 < r.cpu_quota < CFS_QUOTA_MIN_US:
        raise ValueError(
            f"cpu_quota {r.cpu_quota} must be -1 (unlimited), 0 (unset) or at least "
            f"{CFS_QUOTA_MIN_US} microseconds"
        )
    if r.memory_limit_in_bytes < 0:
        raise ValueError(f"memory_limit_in_bytes {r.memory_limit_in_bytes} must not be negative")
    if 0 < r.memory_limit_in_bytes < MIN_MEMORY_BYTES:
        raise ValueError(
            f"memory_limit_in_bytes {r.memory_limit_in_bytes} is below the minimum of "
            f"{MIN_MEMORY_BYTES} bytes a container needs to start"
        )
    swap = r.memory_swap_limit_in_bytes
    if swap < -1:
        raise ValueError(f"memory_swap_limit_in_bytes {swap} must be -1 (unlimited) or more")
    if swap > 0 and r.memory_limit_in_bytes and swap < r.memory_limit_in_bytes:
        raise ValueError(
            f"memory_swap_limit_in_bytes {swap} (memory + swap) must not be below "
            f"memory_limit_in_bytes {r.memory_limit_in_bytes}"
        )
    if not OOM_SCORE_ADJ_MIN <= r.oom_score_adj <= OOM_SCORE_ADJ_MAX:
        raise ValueError(
            f"oom_score_adj {r.oom_score_adj} must be between {OOM_SCORE_ADJ_MIN} and "
            f"{OOM_SCORE_ADJ_MAX}"
        )
    if r.cpuset_cpus:
        _check_cpuset(r.cpuset_cpus, what="cpuset_cpus", available=host.online_cpus)
    if r.cpuset_mems:
        _check_cpuset(r.cpuset_mems, what="cpuset_mems", available=host.online_mems)
    for limit in r.hugepage_limits:
        if not _HUGEPAGE_SIZE.fullmatch(limit.page_size):
            raise ValueError(
                f"hugepage_limits page_size {quote(limit.page_size)} is not a size like 2MB"
            )
        if host.hugepage_sizes is not None and limit.page_size not in host.hugepage_sizes:
            sizes = ", ".join(sorted(host.hugepage_sizes)) or "none"
            raise ValueError(
                f"hugepage_limits page_size {limit.page_size} is not one this node has ({sizes})"
            )
    if r.unified:
        if not host.cgroup_v2:
            raise ValueError("unified cgroup settings need cgroup v2; this node has v1")
        for key, value in r.unified.items():
            if not key or "/" in key or key.startswith(".") or "\n" in value:
                raise ValueError(f"unified setting {quote(key)} is not a cgroup file name")


def linux_resources_to_oci(
    resources: api_pb2.LinuxContainerResources, *, host: HostFeatures | None = None
) -> JsonDict:
    """The ``linux.resources`` fields for CPU, memory, huge pages and unified cgroup settings.

    Zero or empty CRI fields mean "not set" and are left out. Device rules are not included (they
    depend on the container's devices, not on the resources). ``oom_score_adj`` belongs to the
    process, not to ``linux.resources``, and is not included either.
    """
    host = host or HostFeatures()
    result: JsonDict = {}

    cpu: JsonDict = {}
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares
    if resources.cpu_quota:
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    if cpu:
        result["cpu"] = cpu

    memory: JsonDict = {}
    if resources.memory_limit_in_bytes:
        memory["limit"] = resources.memory_limit_in_bytes
        if host.swap_limit_supported and not resources.memory_swap_limit_in_bytes:
            # memory+swap equal to memory: no swap unless asked for, as kubelet expects.
            memory["swap"] = resources.memory_limit_in_bytes
    if resources.memory_swap_limit_in_bytes and host.swap_limit_supported:
        memory["swap"] = resources.memory_swap_limit_in_bytes
    if memory:
        result["memory"] = memory

    if resources.hugepage_limits and host.hugetlb_supported:
        result["hugepageLimits"] = [
            {"pageSize": limit.page_size, "limit": limit.limit}
            for limit in resources.hugepage_limits
        ]

    if resources.unified:
        result["unified"] = dict(sorted(resources.unified.items()))
    return result


def with_linux_resources(
    spec: Mapping[str, Any],
    resources: api_pb2.LinuxContainerResources,
    *,
    host: HostFeatures | None = None,
) -> JsonDict:
    """A copy of ``spec`` with ``resources`` applied, for UpdateContainerResources.

    Fields the update sets replace the old ones; fields it leaves at zero keep their old value
    (kubelet sends the whole set, crictl may send a few). Device rules are kept.
    """
    update = linux_resources_to_oci(resources, host=host)
    new_spec: JsonDict = _deep_copy(spec)
    linux = new_spec.setdefault("linux", {})
    old = linux.setdefault("resources", {})
    for section in ("cpu", "memory"):
        if section in update:
            old[section] = {**old.get(section, {}), **update[section]}
    for section in ("hugepageLimits", "unified"):
        if section in update:
            old[section] = update[section]
    return new_spec


def _deep_copy(value: Any) -> Any:
    # Specs are plain JSON data; copying by structure is exact and much cheaper than copy.deepcopy.
    if isinstance(value, Mapping):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value
