"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats.

Numbers come from containerd's task metrics (cgroups v1 or v2 stats, decoded with the
cgroups protos). ``usage_nano_cores`` needs two samples: the previous one per object is
kept in memory, so the first call reports 0 for it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from cri_api.v1 import api_pb2

from pycri.containerd import api
from pycri.containerd.errors import ContainerdError
from pycri.service.context import RuntimeContext
from pycri.service.filters import labels_match
from pycri.store.container import Container
from pycri.store.sandbox import Sandbox

_last_cpu: dict[str, tuple[int, int]] = {}  # id → (timestamp ns, cumulative usage ns)


def _decode(metric: Any) -> tuple[int, int, int, int]:
    """(cpu usage ns, memory usage, working set, rss) from a task metric."""
    data = metric.data
    if data.type_url.endswith("io.containerd.cgroups.v1.Metrics"):
        m1 = api.cgroups_v1.Metrics.FromString(data.value)
        usage = int(m1.memory.usage.usage)
        inactive = int(m1.memory.total_inactive_file)
        working = max(usage - inactive, 0)
        return int(m1.cpu.usage.total), usage, working, int(m1.memory.total_rss)
    if data.type_url.endswith("io.containerd.cgroups.v2.Metrics"):
        m2 = api.cgroups_v2.Metrics.FromString(data.value)
        usage = int(m2.memory.usage)
        working = max(usage - int(m2.memory.inactive_file), 0)
        return int(m2.cpu.usage_usec) * 1000, usage, working, int(m2.memory.anon)
    return 0, 0, 0, 0


async def _metrics(rt: RuntimeContext, ids: list[str]) -> dict[str, Any]:
    if not ids:
        return {}
    try:
        resp = await rt.containerd.tasks.metrics([f"id=={i}" for i in ids], timeout=10)
    except ContainerdError:
        return {}
    return {m.id: m for m in resp.metrics}


def _cpu_memory(object_id: str, metric: Any | None) -> tuple[api_pb2.CpuUsage, api_pb2.MemoryUsage]:
    now = time.time_ns()
    if metric is None:
        return api_pb2.CpuUsage(timestamp=now), api_pb2.MemoryUsage(timestamp=now)
    cpu_total, usage, working, rss = _decode(metric)
    nano_cores = 0
    previous = _last_cpu.get(object_id)
    if previous is not None and now > previous[0]:
        nano_cores = max(cpu_total - previous[1], 0) * 1_000_000_000 // (now - previous[0])
    _last_cpu[object_id] = (now, cpu_total)
    cpu = api_pb2.CpuUsage(timestamp=now)
    cpu.usage_core_nano_seconds.value = cpu_total
    cpu.usage_nano_cores.value = nano_cores
    memory = api_pb2.MemoryUsage(timestamp=now)
    memory.working_set_bytes.value = working
    memory.usage_bytes.value = usage
    memory.rss_bytes.value = rss
    return cpu, memory


def _container_stats(
    rt: RuntimeContext, c: Container, metric: Any | None
) -> api_pb2.ContainerStats:
    cpu, memory = _cpu_memory(c.id, metric)
    writable = api_pb2.FilesystemUsage(
        timestamp=time.time_ns(),
        fs_id=api_pb2.FilesystemIdentifier(
            mountpoint=f"{rt.config.root}/containerd/io.containerd.snapshotter.v1.overlayfs"
        ),
    )
    return api_pb2.ContainerStats(
        attributes=api_pb2.ContainerAttributes(
            id=c.id,
            metadata=c.metadata.config.metadata,
            labels=c.metadata.config.labels,
            annotations=c.metadata.config.annotations,
        ),
        cpu=cpu,
        memory=memory,
        writable_layer=writable,
    )


async def container_stats(
    rt: RuntimeContext, request: api_pb2.ContainerStatsRequest
) -> api_pb2.ContainerStatsResponse:
    container = rt.containers.get(request.container_id)
    metrics = await _metrics(rt, [container.id])
    return api_pb2.ContainerStatsResponse(
        stats=_container_stats(rt, container, metrics.get(container.id))
    )


async def list_container_stats(
    rt: RuntimeContext, request: api_pb2.ListContainerStatsRequest
) -> api_pb2.ListContainerStatsResponse:
    flt = request.filter
    chosen = [
        c
        for c in rt.containers.all()
        if (not flt.id or c.id.startswith(flt.id))
        and (not flt.pod_sandbox_id or c.metadata.sandbox_id.startswith(flt.pod_sandbox_id))
        and labels_match(c.metadata.config.labels, flt.label_selector)
        and c.status.state == api_pb2.CONTAINER_RUNNING
    ]
    metrics = await _metrics(rt, [c.id for c in chosen])
    return api_pb2.ListContainerStatsResponse(
        stats=[_container_stats(rt, c, metrics.get(c.id)) for c in chosen]
    )


async def _sandbox_stats(rt: RuntimeContext, sandbox: Sandbox) -> api_pb2.PodSandboxStats:
    containers = [
        c
        for c in rt.containers.in_sandbox(sandbox.id)
        if c.status.state == api_pb2.CONTAINER_RUNNING
    ]
    metrics = await _metrics(rt, [sandbox.id, *(c.id for c in containers)])
    container_stats = [_container_stats(rt, c, metrics.get(c.id)) for c in containers]
    cpu, memory = _cpu_memory(sandbox.id, metrics.get(sandbox.id))
    # The pod's usage is its pause container's plus its containers'.
    cpu.usage_core_nano_seconds.value += sum(
        s.cpu.usage_core_nano_seconds.value for s in container_stats
    )
    cpu.usage_nano_cores.value += sum(s.cpu.usage_nano_cores.value for s in container_stats)
    memory.working_set_bytes.value += sum(s.memory.working_set_bytes.value for s in container_stats)
    memory.usage_bytes.value += sum(s.memory.usage_bytes.value for s in container_stats)
    config = sandbox.metadata.config
    return api_pb2.PodSandboxStats(
        attributes=api_pb2.PodSandboxAttributes(
            id=sandbox.id,
            metadata=config.metadata,
            labels=config.labels,
            annotations=config.annotations,
        ),
        linux=api_pb2.LinuxPodSandboxStats(cpu=cpu, memory=memory, containers=container_stats),
    )


async def pod_sandbox_stats(
    rt: RuntimeContext, request: api_pb2.PodSandboxStatsRequest
) -> api_pb2.PodSandboxStatsResponse:
    sandbox = rt.sandboxes.get(request.pod_sandbox_id)
    return api_pb2.PodSandboxStatsResponse(stats=await _sandbox_stats(rt, sandbox))


async def list_pod_sandbox_stats(
    rt: RuntimeContext, request: api_pb2.ListPodSandboxStatsRequest
) -> api_pb2.ListPodSandboxStatsResponse:
    flt = request.filter
    chosen = [
        s
        for s in rt.sandboxes.all()
        if (not flt.id or s.id.startswith(flt.id))
        and labels_match(s.metadata.config.labels, flt.label_selector)
    ]
    stats = await asyncio.gather(*(_sandbox_stats(rt, s) for s in chosen))
    return api_pb2.ListPodSandboxStatsResponse(stats=list(stats))


def forget(object_id: str) -> None:
    _last_cpu.pop(object_id, None)
