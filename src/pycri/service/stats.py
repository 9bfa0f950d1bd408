"""ContainerStats, ListContainerStats, PodSandboxStats, ListPodSandboxStats.

Numbers come from containerd's task metrics (cgroups v1 or v2 stats, decoded with the
cgroups protos). ``usage_nano_cores`` needs two samples: the previous one per object is
kept in memory, so the first call reports 0 for it.
"""

from __future__ import annotations

import asyncio
import time

from cri_api.v1 import api_pb2

from pycri.containerd.errors import ContainerdError
from pycri.containerd.types import TaskMetrics
from pycri.service.context import RuntimeContext
from pycri.service.filters import labels_match
from pycri.store.container import Container
from pycri.store.sandbox import Sandbox

_last_cpu: dict[str, tuple[int, int]] = {}  # id → (timestamp ns, cumulative usage ns)


async def _metrics(rt: RuntimeContext, ids: list[str]) -> dict[str, TaskMetrics]:
    try:
        return await rt.containerd.tasks.metrics(ids, timeout=10)
    except ContainerdError:
        return {}


def _cpu_memory(
    object_id: str, metric: TaskMetrics | None
) -> tuple[api_pb2.CpuUsage, api_pb2.MemoryUsage]:
    now = time.time_ns()
    if metric is None:
        return api_pb2.CpuUsage(timestamp=now), api_pb2.MemoryUsage(timestamp=now)
    cpu_total = metric.cpu_usage_ns
    nano_cores = 0
    previous = _last_cpu.get(object_id)
    if previous is not None and now > previous[0]:
        nano_cores = max(cpu_total - previous[1], 0) * 1_000_000_000 // (now - previous[0])
    _last_cpu[object_id] = (now, cpu_total)
    cpu = api_pb2.CpuUsage(timestamp=now)
    cpu.usage_core_nano_seconds.value = cpu_total
    cpu.usage_nano_cores.value = nano_cores
    memory = api_pb2.MemoryUsage(timestamp=now)
    memory.working_set_bytes.value = metric.memory_working_set_bytes
    memory.usage_bytes.value = metric.memory_usage_bytes
    memory.rss_bytes.value = metric.memory_rss_bytes
    return cpu, memory


def _container_stats(
    rt: RuntimeContext, c: Container, metric: TaskMetrics | None
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
