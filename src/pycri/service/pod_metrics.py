"""ListMetricDescriptors and ListPodSandboxMetrics: cAdvisor's container metrics, from the CRI.

With ``PodAndContainerStatsFromCRI`` kubelet serves ``/metrics/cadvisor`` from these two RPCs
instead of running cAdvisor: it asks for the descriptors once, then for the metrics on every
scrape (Prometheus, typically every 10-30 s), and turns each into a Prometheus sample. The
names are cAdvisor's (``container_cpu_usage_seconds_total``, ``container_memory_working_set_bytes``,
``container_network_receive_bytes_total``, ...), so dashboards and alerts keep working. Label
keys follow CRI-O, which kubelet was built against: ``id``, ``name``, ``image`` (kubelet itself
adds ``namespace``, ``pod`` and ``container``), plus ``cpu`` on the CPU usage counter and
``interface`` on network ones. A container's values are ``[container id, container name,
image]``; the pod's own (network) ones ``[sandbox id, "POD", ""]``.

Sources, read fresh on every call (no background sampler, nothing cached but file-system
usage):

- every running container's cgroup (``pycri.cgroups.read_counters``, cgroup v1 or v2): CPU,
  memory, OOM kills, processes and threads, and the limits (``container_spec_*``). The pause
  container is left out, as CRI-O does: it is the pod's plumbing, not a workload;
- the pod's network namespace: ``/proc/<pause pid>/net/dev`` (``pycri.net.counters``), every
  interface but loopback; none for host-network pods (those counters are the node's);
- the writable layer's disk use (``container_fs_usage_bytes``): a walk of the snapshot's upper
  dir (``pycri.images.fs_usage.measure``), the one costly source, so a sample is reused for
  ``FS_USAGE_MAX_AGE`` seconds (kubelet's own cAdvisor refreshed it every minute or so).

All file reads of one call run in one worker thread: for 100 pods that is about 2,000 small
reads of cgroupfs and procfs, each a few microseconds, and the loop only builds the answer.
The values are ``uint64`` in the CRI, so seconds are whole seconds (as CRI-O reports them).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2

from pycri.cgroups import CgroupCounters, read_counters
from pycri.containerd.errors import ContainerdError
from pycri.images.fs_usage import measure
from pycri.net.counters import InterfaceCounters, pod_interfaces
from pycri.service import records
from pycri.service.context import RuntimeContext
from pycri.store.container import Container
from pycri.store.sandbox import Sandbox, SandboxState

BASE_LABELS = ("id", "name", "image")
POD_NAME_LABEL = "POD"
FS_USAGE_MAX_AGE = 30.0  # seconds a writable layer's measured size is reused
NS_PER_S = 1_000_000_000
COUNTER, GAUGE = api_pb2.COUNTER, api_pb2.GAUGE


@dataclass(frozen=True)
class _Metric:
    name: str
    help: str
    kind: api_pb2.MetricType.ValueType
    extra_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class _CgroupMetric(_Metric):
    value: Callable[[CgroupCounters], int] = lambda c: 0
    extra_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class _NetworkMetric(_Metric):
    value: Callable[[InterfaceCounters], int] = lambda i: 0


CGROUP_METRICS: tuple[_CgroupMetric, ...] = (
    _CgroupMetric(
        "container_cpu_usage_seconds_total",
        "Cumulative cpu time consumed in seconds.",
        COUNTER,
        ("cpu",),
        lambda c: c.cpu_usage_ns // NS_PER_S,
        ("total",),
    ),
    _CgroupMetric(
        "container_cpu_user_seconds_total",
        "Cumulative user cpu time consumed in seconds.",
        COUNTER,
        value=lambda c: c.cpu_user_ns // NS_PER_S,
    ),
    _CgroupMetric(
        "container_cpu_system_seconds_total",
        "Cumulative system cpu time consumed in seconds.",
        COUNTER,
        value=lambda c: c.cpu_system_ns // NS_PER_S,
    ),
    _CgroupMetric(
        "container_cpu_cfs_periods_total",
        "Number of elapsed enforcement period intervals.",
        COUNTER,
        value=lambda c: c.cfs_periods,
    ),
    _CgroupMetric(
        "container_cpu_cfs_throttled_periods_total",
        "Number of throttled period intervals.",
        COUNTER,
        value=lambda c: c.cfs_throttled_periods,
    ),
    _CgroupMetric(
        "container_cpu_cfs_throttled_seconds_total",
        "Total time duration the container has been throttled.",
        COUNTER,
        value=lambda c: c.cfs_throttled_ns // NS_PER_S,
    ),
    _CgroupMetric(
        "container_memory_usage_bytes",
        "Current memory usage in bytes, including all memory regardless of when it was accessed.",
        GAUGE,
        value=lambda c: c.memory_usage,
    ),
    _CgroupMetric(
        "container_memory_max_usage_bytes",
        "Maximum memory usage recorded in bytes.",
        GAUGE,
        value=lambda c: c.memory_max_usage,
    ),
    _CgroupMetric(
        "container_memory_working_set_bytes",
        "Current working set in bytes.",
        GAUGE,
        value=lambda c: c.memory_working_set,
    ),
    _CgroupMetric(
        "container_memory_rss",
        "Size of RSS in bytes.",
        GAUGE,
        value=lambda c: c.memory_rss,
    ),
    _CgroupMetric(
        "container_memory_cache",
        "Number of bytes of page cache memory.",
        GAUGE,
        value=lambda c: c.memory_cache,
    ),
    _CgroupMetric(
        "container_memory_swap",
        "Container swap usage in bytes.",
        GAUGE,
        value=lambda c: c.memory_swap,
    ),
    _CgroupMetric(
        "container_memory_mapped_file",
        "Size of memory mapped files in bytes.",
        GAUGE,
        value=lambda c: c.memory_mapped_file,
    ),
    _CgroupMetric(
        "container_memory_failcnt",
        "Number of memory usage hits limits.",
        COUNTER,
        value=lambda c: c.memory_failcnt,
    ),
    _CgroupMetric(
        "container_oom_events_total",
        "Count of out of memory events observed for the container.",
        COUNTER,
        value=lambda c: c.oom_kills,
    ),
    _CgroupMetric(
        "container_processes",
        "Number of processes running inside the container.",
        GAUGE,
        value=lambda c: c.processes,
    ),
    _CgroupMetric(
        "container_threads",
        "Number of threads running inside the container.",
        GAUGE,
        value=lambda c: c.threads,
    ),
    _CgroupMetric(
        "container_spec_cpu_shares",
        "CPU share of the container.",
        GAUGE,
        value=lambda c: c.cpu_shares,
    ),
    _CgroupMetric(
        "container_spec_cpu_quota",
        "CPU quota of the container.",
        GAUGE,
        value=lambda c: c.cpu_quota,
    ),
    _CgroupMetric(
        "container_spec_cpu_period",
        "CPU period of the container.",
        GAUGE,
        value=lambda c: c.cpu_period,
    ),
    _CgroupMetric(
        "container_spec_memory_limit_bytes",
        "Memory limit for the container in bytes.",
        GAUGE,
        value=lambda c: c.memory_limit,
    ),
)

FS_USAGE = _Metric("container_fs_usage_bytes", "Current filesystem usage in bytes.", GAUGE)
LAST_SEEN = _Metric("container_last_seen", "Last time a container was seen by the exporter.", GAUGE)

NETWORK_METRICS: tuple[_NetworkMetric, ...] = (
    _NetworkMetric(
        "container_network_receive_bytes_total",
        "Cumulative count of bytes received.",
        COUNTER,
        ("interface",),
        lambda i: i.rx_bytes,
    ),
    _NetworkMetric(
        "container_network_receive_packets_total",
        "Cumulative count of packets received.",
        COUNTER,
        ("interface",),
        lambda i: i.rx_packets,
    ),
    _NetworkMetric(
        "container_network_receive_packets_dropped_total",
        "Cumulative count of packets dropped while receiving.",
        COUNTER,
        ("interface",),
        lambda i: i.rx_dropped,
    ),
    _NetworkMetric(
        "container_network_receive_errors_total",
        "Cumulative count of errors encountered while receiving.",
        COUNTER,
        ("interface",),
        lambda i: i.rx_errors,
    ),
    _NetworkMetric(
        "container_network_transmit_bytes_total",
        "Cumulative count of bytes transmitted.",
        COUNTER,
        ("interface",),
        lambda i: i.tx_bytes,
    ),
    _NetworkMetric(
        "container_network_transmit_packets_total",
        "Cumulative count of packets transmitted.",
        COUNTER,
        ("interface",),
        lambda i: i.tx_packets,
    ),
    _NetworkMetric(
        "container_network_transmit_packets_dropped_total",
        "Cumulative count of packets dropped while transmitting.",
        COUNTER,
        ("interface",),
        lambda i: i.tx_dropped,
    ),
    _NetworkMetric(
        "container_network_transmit_errors_total",
        "Cumulative count of errors encountered while transmitting.",
        COUNTER,
        ("interface",),
        lambda i: i.tx_errors,
    ),
)

ALL_METRICS: tuple[_Metric, ...] = (*CGROUP_METRICS, FS_USAGE, LAST_SEEN, *NETWORK_METRICS)
DESCRIPTORS = tuple(
    api_pb2.MetricDescriptor(name=m.name, help=m.help, label_keys=[*BASE_LABELS, *m.extra_labels])
    for m in ALL_METRICS
)

# Writable layers: container ID → its snapshot's upper dir (immutable), and the last measure
# (monotonic time, bytes). Entries of containers that are gone are dropped at every call.
_upper_dirs: dict[str, str] = {}
_fs_samples: dict[str, tuple[float, int]] = {}


async def list_metric_descriptors(
    rt: RuntimeContext, request: api_pb2.ListMetricDescriptorsRequest
) -> api_pb2.ListMetricDescriptorsResponse:
    return api_pb2.ListMetricDescriptorsResponse(descriptors=DESCRIPTORS)


@dataclass(frozen=True)
class _ContainerTarget:
    container: Container
    cgroup: str
    upper_dir: str


@dataclass(frozen=True)
class _PodTarget:
    sandbox: Sandbox
    pid: int  # 0: no network counters (host network)
    containers: tuple[_ContainerTarget, ...]


@dataclass(frozen=True)
class _ContainerSample:
    target: _ContainerTarget
    counters: CgroupCounters
    fs_bytes: int | None
    timestamp: int


@dataclass(frozen=True)
class _PodSample:
    target: _PodTarget
    interfaces: list[InterfaceCounters]
    containers: list[_ContainerSample]
    timestamp: int


async def _find_upper_dirs(rt: RuntimeContext, containers: list[Container]) -> None:
    missing = [c.id for c in containers if c.id not in _upper_dirs]

    async def find(container_id: str) -> None:
        try:
            mounts = await rt.containerd.snapshots.mounts(rt.config.snapshotter, container_id)
        except ContainerdError:
            return  # removed meanwhile, or containerd is down: no fs metric this time
        dirs = records.layer_dirs(mounts)
        _upper_dirs[container_id] = dirs[0] if dirs else ""

    await asyncio.gather(*(find(i) for i in missing))


def _fs_usage(target: _ContainerTarget, now: float) -> int | None:
    if not target.upper_dir:
        return None
    cached = _fs_samples.get(target.container.id)
    if cached is not None and now - cached[0] < FS_USAGE_MAX_AGE:
        return cached[1]
    used, _ = measure(Path(target.upper_dir))
    _fs_samples[target.container.id] = (now, used)
    return used


def _collect(pods: list[_PodTarget]) -> list[_PodSample]:
    """Read every source of every pod (blocking: runs in one worker thread)."""
    samples = []
    now = time.monotonic()
    for pod in pods:
        containers = []
        for target in pod.containers:
            counters = read_counters(target.cgroup)
            if counters is None:
                continue  # stopped since it was listed
            containers.append(
                _ContainerSample(
                    target=target,
                    counters=counters,
                    fs_bytes=_fs_usage(target, now),
                    timestamp=time.time_ns(),
                )
            )
        samples.append(
            _PodSample(
                target=pod,
                interfaces=pod_interfaces(pod.pid) if pod.pid else [],
                containers=containers,
                timestamp=time.time_ns(),
            )
        )
    return samples


def _plan(rt: RuntimeContext) -> list[_PodTarget]:
    pods = []
    for sandbox in rt.sandboxes.all():
        if sandbox.status.state is not SandboxState.READY:
            continue
        containers = tuple(
            _ContainerTarget(
                container=c,
                cgroup=sandbox.metadata.cgroups_path(c.id),
                upper_dir=_upper_dirs.get(c.id, ""),
            )
            for c in rt.containers.in_sandbox(sandbox.id)
            if c.status.state == api_pb2.CONTAINER_RUNNING
        )
        pid = 0 if sandbox.metadata.host_network else sandbox.status.pid
        pods.append(_PodTarget(sandbox=sandbox, pid=pid, containers=containers))
    return pods


def _metric(metric: _Metric, labels: Sequence[str], value: int, timestamp: int) -> api_pb2.Metric:
    return api_pb2.Metric(
        name=metric.name,
        timestamp=timestamp,
        metric_type=metric.kind,
        label_values=list(labels),
        value=api_pb2.UInt64Value(value=max(value, 0)),
    )


def _container_metrics(sample: _ContainerSample) -> api_pb2.ContainerMetrics:
    container = sample.target.container
    labels = (container.id, container.metadata.name, container.metadata.image_name)
    ts, counters = sample.timestamp, sample.counters
    metrics = [
        _metric(m, (*labels, *m.extra_values), m.value(counters), ts) for m in CGROUP_METRICS
    ]
    if sample.fs_bytes is not None:
        metrics.append(_metric(FS_USAGE, labels, sample.fs_bytes, ts))
    metrics.append(_metric(LAST_SEEN, labels, ts // NS_PER_S, ts))
    return api_pb2.ContainerMetrics(container_id=container.id, metrics=metrics)


def _pod_metrics(sample: _PodSample) -> api_pb2.PodSandboxMetrics:
    sandbox_id = sample.target.sandbox.id
    labels = (sandbox_id, POD_NAME_LABEL, "")
    metrics = [
        _metric(m, (*labels, interface.name), m.value(interface), sample.timestamp)
        for interface in sample.interfaces
        for m in NETWORK_METRICS
    ]
    return api_pb2.PodSandboxMetrics(
        pod_sandbox_id=sandbox_id,
        metrics=metrics,
        container_metrics=[_container_metrics(c) for c in sample.containers],
    )


async def list_pod_sandbox_metrics(
    rt: RuntimeContext, request: api_pb2.ListPodSandboxMetricsRequest
) -> api_pb2.ListPodSandboxMetricsResponse:
    running = [c for c in rt.containers.all() if c.status.state == api_pb2.CONTAINER_RUNNING]
    live = {c.id for c in running}
    for cache in (_upper_dirs, _fs_samples):
        for gone in [i for i in cache if i not in live]:
            del cache[gone]
    await _find_upper_dirs(rt, running)
    samples = await asyncio.to_thread(_collect, _plan(rt))
    return api_pb2.ListPodSandboxMetricsResponse(pod_metrics=[_pod_metrics(s) for s in samples])
