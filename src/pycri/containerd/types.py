"""Plain values that cross the containerd seam, so no module outside ``containerd/`` needs
containerd's generated wire types.

The client (``client.py``) takes these as arguments and builds the protobuf requests; what it
returns is either one of these or a typed generated message whose fields callers only read.
Decoding of containerd's ``Any`` payloads (event envelopes, cgroup metrics) happens here too,
in one place, so a change of containerd's API version touches only this package.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import any_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from pycri.containerd import api

# containerd's type URLs for the OCI documents it stores as JSON inside an ``Any``.
SPEC_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
PROCESS_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"
RESOURCES_TYPE_URL = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources"
# containerd's runc shim decodes its options by the message's proto name (typeurl, no prefix).
RUNC_OPTIONS_TYPE_URL = "containerd.runc.v1.Options"
CHECKPOINT_OPTIONS_TYPE_URL = "containerd.runc.v1.CheckpointOptions"


class TaskStatus(enum.IntEnum):
    """A task's (or exec process's) state, as containerd reports it."""

    UNKNOWN = api.task_types.Status.UNKNOWN
    CREATED = api.task_types.Status.CREATED
    RUNNING = api.task_types.Status.RUNNING
    STOPPED = api.task_types.Status.STOPPED
    PAUSED = api.task_types.Status.PAUSED
    PAUSING = api.task_types.Status.PAUSING


@dataclass(frozen=True, kw_only=True)
class TaskInfo:
    """A task's (or exec process's) record: its state, pid, stdio paths and exit."""

    status: TaskStatus
    pid: int
    id: str = ""  # the container's ID for its init process, the exec ID for an exec
    stdin: str = ""
    stdout: str = ""
    stderr: str = ""
    terminal: bool = False
    exit_status: int = 0
    exited_at_ns: int = 0  # 0 unless STOPPED


@dataclass(frozen=True, kw_only=True)
class ExitStatus:
    """What Tasks.Wait answers once the process exited."""

    exit_status: int
    exited_at_ns: int


@dataclass(frozen=True, kw_only=True)
class Extension:
    """An opaque document kept in a container record (pycri keeps its metadata there)."""

    type_url: str
    value: bytes


@dataclass(frozen=True, kw_only=True)
class RuncOptions:
    """The options of containerd's runc shim for one container (its record's runtime options,
    which the shim reads when it creates the task): which OCI binary runs it, and where that
    binary keeps its state."""

    binary_name: str = ""  # empty: the shim's default, runc on its PATH
    root: str = ""  # the OCI runtime's state root (the shim adds the namespace); empty: default
    no_pivot_root: bool = False
    no_new_keyring: bool = False
    shim_cgroup: str = ""
    io_uid: int = 0
    io_gid: int = 0
    systemd_cgroup: bool = False

    def to_json(self) -> dict[str, Any]:
        """The options as containerd's CRI plugin shows them (snake_case, set fields only)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v}


def encode_runc_options(options: RuncOptions) -> any_pb2.Any:
    message = api.runc_options.Options(
        binary_name=options.binary_name,
        root=options.root,
        no_pivot_root=options.no_pivot_root,
        no_new_keyring=options.no_new_keyring,
        shim_cgroup=options.shim_cgroup,
        io_uid=options.io_uid,
        io_gid=options.io_gid,
        systemd_cgroup=options.systemd_cgroup,
    )
    return any_pb2.Any(type_url=RUNC_OPTIONS_TYPE_URL, value=message.SerializeToString())


def decode_runc_options(value: any_pb2.Any) -> RuncOptions | None:
    """A record's runtime options, if they are the runc shim's (None otherwise or if unset)."""
    if not value.type_url.endswith(RUNC_OPTIONS_TYPE_URL):
        return None
    m = api.runc_options.Options.FromString(value.value)
    return RuncOptions(
        binary_name=m.binary_name,
        root=m.root,
        no_pivot_root=m.no_pivot_root,
        no_new_keyring=m.no_new_keyring,
        shim_cgroup=m.shim_cgroup,
        io_uid=int(m.io_uid),
        io_gid=int(m.io_gid),
        systemd_cgroup=m.systemd_cgroup,
    )


@dataclass(frozen=True, kw_only=True)
class Descriptor:
    """An OCI content descriptor: what an image record points at."""

    media_type: str
    digest: str
    size: int


@dataclass(frozen=True, kw_only=True)
class TaskMetrics:
    """A task's cgroup counters, decoded from cgroups v1 or v2 stats (0 when not reported)."""

    cpu_usage_ns: int = 0
    memory_usage_bytes: int = 0
    memory_working_set_bytes: int = 0
    memory_rss_bytes: int = 0


@dataclass(frozen=True, kw_only=True)
class TaskOOMEvent:
    container_id: str


@dataclass(frozen=True, kw_only=True)
class ImageEvent:
    """An image record was created, updated or deleted."""

    name: str


@dataclass(frozen=True, kw_only=True)
class OtherEvent:
    """An event of a topic pycri does not decode."""

    topic: str


ContainerdEvent = TaskOOMEvent | ImageEvent | OtherEvent


@dataclass(frozen=True, kw_only=True)
class Envelope:
    """One event from containerd's stream: its namespace and the decoded payload."""

    namespace: str
    topic: str
    event: ContainerdEvent


def timestamp_ns(ts: Timestamp) -> int:
    return int(ts.seconds) * 1_000_000_000 + int(ts.nanos)


def task_info(process: api.task_types.Process) -> TaskInfo:
    return TaskInfo(
        status=TaskStatus(int(process.status)),
        pid=int(process.pid),
        id=process.id or process.container_id,
        stdin=process.stdin,
        stdout=process.stdout,
        stderr=process.stderr,
        terminal=process.terminal,
        exit_status=int(process.exit_status),
        exited_at_ns=timestamp_ns(process.exited_at) if process.HasField("exited_at") else 0,
    )


def json_any(type_url: str, document: Any) -> any_pb2.Any:
    return any_pb2.Any(type_url=type_url, value=json.dumps(document).encode())


def decode_envelope(envelope: api.events.Envelope) -> Envelope:
    """Decode an event envelope; raises ``ValueError`` for an undecodable payload."""
    topic = envelope.topic
    payload = envelope.event.value
    event: ContainerdEvent
    try:
        if topic == "/tasks/oom":
            event = TaskOOMEvent(
                container_id=api.task_events.TaskOOM.FromString(payload).container_id
            )
        elif topic in _IMAGE_EVENTS:
            event = ImageEvent(name=str(_IMAGE_EVENTS[topic].FromString(payload).name))
        else:
            event = OtherEvent(topic=topic)
    except Exception as err:  # protobuf's DecodeError and friends
        raise ValueError(f"undecodable {topic} event: {err}") from None
    return Envelope(namespace=envelope.namespace, topic=topic, event=event)


_IMAGE_EVENTS: Mapping[str, Any] = {
    "/images/create": api.image_events.ImageCreate,
    "/images/update": api.image_events.ImageUpdate,
    "/images/delete": api.image_events.ImageDelete,
}


def decode_metrics(metric: api.types_metrics.Metric) -> TaskMetrics:
    """The counters pycri reports, from a task metric's cgroups v1 or v2 payload."""
    data = metric.data
    if data.type_url.endswith("io.containerd.cgroups.v1.Metrics"):
        m1 = api.cgroups_v1.Metrics.FromString(data.value)
        usage = int(m1.memory.usage.usage)
        return TaskMetrics(
            cpu_usage_ns=int(m1.cpu.usage.total),
            memory_usage_bytes=usage,
            memory_working_set_bytes=max(usage - int(m1.memory.total_inactive_file), 0),
            memory_rss_bytes=int(m1.memory.total_rss),
        )
    if data.type_url.endswith("io.containerd.cgroups.v2.Metrics"):
        m2 = api.cgroups_v2.Metrics.FromString(data.value)
        usage = int(m2.memory.usage)
        return TaskMetrics(
            cpu_usage_ns=int(m2.cpu.usage_usec) * 1000,
            memory_usage_bytes=usage,
            memory_working_set_bytes=max(usage - int(m2.memory.inactive_file), 0),
            memory_rss_bytes=int(m2.memory.anon),
        )
    return TaskMetrics()
