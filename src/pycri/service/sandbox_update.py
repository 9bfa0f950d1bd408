"""UpdatePodSandboxResources: in-place pod resize, applied to the pod's own cgroup.

kubelet (InPlacePodVerticalScaling) sends the pod's new pod-level resources (and its
overhead) after resizing its containers. pycri writes the CPU and memory limits into the pod's
cgroup, the ``cgroup_parent`` kubelet gave the pod, under which every container of the pod
lives, so the whole pod is held to them at once; then it records them in the sandbox's status
(``Sandbox.record_resources``, checkpointed) and shows them in PodSandboxStatus' verbose info.

Checks before anything is written: the pod is READY; its cgroup parent is a pod's own cgroup
(kubelet names it ``.../pod<uid>``), never the shared default ``/pycri`` (pods started without
a parent, e.g. by crictl) nor a parent that other pods share, whose limits would hold them
all; the values are in the kernel's ranges. The write is all or nothing
(``cgroups.apply_limits`` puts back what it changed if the kernel refuses one value, e.g. a
memory limit below what the pod uses: FAILED_PRECONDITION with the kernel's reason). Zero
fields mean "unchanged", as in UpdateContainerResources.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
from typing import Any

from cri_api.v1 import api_pb2

from pycri.cgroups import DEFAULT_PARENT, CgroupLimits, CgroupWriteError, apply_limits
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.service.context import RuntimeContext
from pycri.store.sandbox import Sandbox, SandboxState

log = logging.getLogger(__name__)

MIN_CPU_SHARES, MAX_CPU_SHARES = 2, 262144
MIN_CPU_PERIOD, MAX_CPU_PERIOD = 1000, 1_000_000  # µs, the kernel's bounds
MIN_CPU_QUOTA = 1000  # µs


def _normalized(parent: str) -> str:
    return posixpath.normpath("/" + parent.strip("/")) if parent else ""


def pod_cgroup(rt: RuntimeContext, sandbox: Sandbox) -> str:
    """The pod's own cgroup; FailedPrecondition when it has none of its own."""
    parent = sandbox.metadata.config.linux.cgroup_parent
    normalized = _normalized(parent)
    if not normalized or normalized in ("/", DEFAULT_PARENT, _normalized(rt.config.cgroup_parent)):
        raise FailedPrecondition(
            f"sandbox {sandbox.id} has no cgroup of its own (cgroup_parent "
            f"{parent or '(none)'!r}): other pods share it, so a pod-level resize cannot apply"
        )
    if not posixpath.basename(normalized).startswith("pod"):
        raise FailedPrecondition(
            f"sandbox {sandbox.id}: cgroup_parent {parent!r} is not a pod's own cgroup "
            "(kubelet names them .../pod<uid>); refusing to change the limits of a shared one"
        )
    sharing = [
        other.id
        for other in rt.sandboxes.all()
        if other.id != sandbox.id
        and other.status.state is SandboxState.READY
        and _normalized(other.metadata.config.linux.cgroup_parent) == normalized
    ]
    if sharing:
        raise FailedPrecondition(
            f"sandbox {sandbox.id}: its cgroup {normalized} is shared with sandbox "
            f"{sharing[0]}; refusing a pod-level resize that would hold both"
        )
    return normalized


def validate_limits(resources: api_pb2.LinuxContainerResources) -> CgroupLimits:
    """The CPU and memory limits to write; InvalidArgument for values the kernel refuses."""
    r = resources
    if r.cpu_shares and not MIN_CPU_SHARES <= r.cpu_shares <= MAX_CPU_SHARES:
        raise InvalidArgument(
            f"cpu_shares {r.cpu_shares} is out of range ({MIN_CPU_SHARES}..{MAX_CPU_SHARES})"
        )
    if r.cpu_period and not MIN_CPU_PERIOD <= r.cpu_period <= MAX_CPU_PERIOD:
        raise InvalidArgument(
            f"cpu_period {r.cpu_period} is out of range ({MIN_CPU_PERIOD}..{MAX_CPU_PERIOD} µs)"
        )
    if r.cpu_quota and r.cpu_quota != -1 and r.cpu_quota < MIN_CPU_QUOTA:
        raise InvalidArgument(f"cpu_quota {r.cpu_quota} must be -1 or at least {MIN_CPU_QUOTA} µs")
    if r.memory_limit_in_bytes < 0 and r.memory_limit_in_bytes != -1:
        raise InvalidArgument(f"memory_limit_in_bytes {r.memory_limit_in_bytes} is negative")
    if r.hugepage_limits or r.unified or r.memory_swap_limit_in_bytes:
        raise InvalidArgument(
            "only cpu_shares, cpu_quota, cpu_period, cpuset_cpus, cpuset_mems and "
            "memory_limit_in_bytes can be resized in place at pod level"
        )
    return CgroupLimits(
        cpu_shares=r.cpu_shares or None,
        cpu_quota=r.cpu_quota or None,
        cpu_period=r.cpu_period or None,
        memory_limit=r.memory_limit_in_bytes or None,
        cpuset_cpus=r.cpuset_cpus or None,
        cpuset_mems=r.cpuset_mems or None,
    )


async def update_pod_sandbox_resources(
    rt: RuntimeContext, request: api_pb2.UpdatePodSandboxResourcesRequest
) -> api_pb2.UpdatePodSandboxResourcesResponse:
    sandbox = rt.sandboxes.get(request.pod_sandbox_id)
    if not request.HasField("resources"):
        return api_pb2.UpdatePodSandboxResourcesResponse()
    limits = validate_limits(request.resources)
    if sandbox.status.state is not SandboxState.READY:
        raise FailedPrecondition(f"sandbox {sandbox.id} is not ready")
    path = pod_cgroup(rt, sandbox)
    try:
        await asyncio.to_thread(apply_limits, path, limits)
    except FileNotFoundError as err:
        raise FailedPrecondition(f"sandbox {sandbox.id}: {err}") from None
    except CgroupWriteError as err:
        raise FailedPrecondition(
            f"sandbox {sandbox.id}: the kernel refused the new limits of {path} ({err.strerror}); "
            "nothing was changed"
        ) from None
    await sandbox.record_resources(applied_resources(limits))
    log.info(
        "pod resources updated",
        extra={"sandbox_id": sandbox.id, "cgroup": path, "resources": applied_resources(limits)},
    )
    return api_pb2.UpdatePodSandboxResourcesResponse()


def applied_resources(limits: CgroupLimits) -> dict[str, Any]:
    """What was written, as OCI ``linux.resources`` (only the fields that were set)."""
    cpu = {
        key: value
        for key, value in (
            ("shares", limits.cpu_shares),
            ("quota", limits.cpu_quota),
            ("period", limits.cpu_period),
            ("cpus", limits.cpuset_cpus),
            ("mems", limits.cpuset_mems),
        )
        if value is not None
    }
    resources: dict[str, Any] = {"cpu": cpu} if cpu else {}
    if limits.memory_limit is not None:
        resources["memory"] = {"limit": limits.memory_limit}
    return resources
