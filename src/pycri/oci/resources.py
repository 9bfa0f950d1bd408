"""CRI Linux resources (CPU, memory, huge pages, unified) as OCI ``linux.resources``, for
create and for UpdateContainerResources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cri_api.v1 import api_pb2

from pycri.oci.common import JsonDict
from pycri.oci.host import HostFeatures


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
