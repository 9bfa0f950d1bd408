"""A thin, typed asyncio client over containerd's gRPC API (grpc.aio).

Design:
- One channel to containerd's socket; every call carries the containerd namespace
  (``k8s.io`` by default) in the ``containerd-namespace`` metadata header, and the lease in
  ``containerd-lease`` when one is given.
- Calls are made through multi-callables built from method paths, with the generated message
  classes as (de)serializers, so the client is fully typed without untyped ``_grpc`` stubs.
  Each one is built once per channel and method and then reused (building one costs about as
  much Python time as making the call; per-namespace copies share the channel's cache).
- Every gRPC error becomes a ``ContainerdError`` subclass (see ``errors``).
- The client never retries: callers decide (the event monitor's backoff queue, the daemon's
  reconnect loop). grpc's channel reconnects by itself once containerd is back.
- It is the only place that builds containerd's requests: callers pass plain values
  (``types.py``: extensions, descriptors, OCI documents as dicts) and get typed messages
  or decoded values back (``Envelope``, ``TaskMetrics``), so no module outside this
  package imports the generated API.
"""

from __future__ import annotations

import builtins
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import any_pb2, empty_pb2, field_mask_pb2
from google.protobuf.message import Message

from pycri.containerd import api
from pycri.containerd.errors import (
    AlreadyExistsError,
    FailedPreconditionError,
    UnavailableError,
    from_rpc_error,
)
from pycri.containerd.types import (
    CHECKPOINT_OPTIONS_TYPE_URL,
    PROCESS_TYPE_URL,
    RESOURCES_TYPE_URL,
    SPEC_TYPE_URL,
    Descriptor,
    Envelope,
    ExitStatus,
    Extension,
    RuncOptions,
    TaskInfo,
    TaskMetrics,
    decode_envelope,
    decode_metrics,
    decode_runc_options,
    encode_runc_options,
    json_any,
    task_info,
    timestamp_ns,
)

K8S_NAMESPACE = "k8s.io"
# Typed messages callers receive and hand back without building them (never construct them
# outside this package): a container record, a rootfs mount, a task's process record.
ContainerRecord = api.containers.Container
Mount = api.mount.Mount
Req = TypeVar("Req", bound=Message)
C = TypeVar("C")
Resp = TypeVar("Resp", bound=Message)
Metadata = tuple[tuple[str, str], ...]
# Content writes sent ahead of containerd's answers (it answers each one).
WRITE_WINDOW = 4


class ContainerdClient:
    """Async client for one containerd namespace; cheap to derive per-namespace copies."""

    def __init__(
        self,
        address: str,
        *,
        namespace: str = K8S_NAMESPACE,
        channel: grpc.aio.Channel | None = None,
        callables: _Callables | None = None,
    ) -> None:
        self.address = address
        self.namespace = namespace
        self._owns_channel = channel is None
        self._callables = callables if callables is not None else _Callables()
        self._metadata: Metadata = (("containerd-namespace", namespace),)
        self._channel = channel or grpc.aio.insecure_channel(
            f"unix://{address}",
            options=[
                ("grpc.max_receive_message_length", 64 << 20),
                ("grpc.max_send_message_length", 64 << 20),
                ("grpc.initial_reconnect_backoff_ms", 200),
                ("grpc.max_reconnect_backoff_ms", 2000),
            ],
        )
        self.containers = _Containers(self)
        self.tasks = _Tasks(self)
        self.content = _Content(self)
        self.images = _Images(self)
        self.snapshots = _Snapshots(self)
        self.diff = _Diff(self)
        self.leases = _Leases(self)
        self.events = _Events(self)

    def with_namespace(self, namespace: str) -> ContainerdClient:
        return ContainerdClient(
            self.address, namespace=namespace, channel=self._channel, callables=self._callables
        )

    async def close(self) -> None:
        if self._owns_channel:
            await self._channel.close()

    def metadata(self, lease: str | None = None) -> Metadata:
        if lease:
            return (*self._metadata, ("containerd-lease", lease))
        return self._metadata

    async def unary(
        self,
        method: str,
        request: Message,
        response_type: type[Resp],
        *,
        timeout: float | None = None,
        lease: str | None = None,
    ) -> Resp:
        call = self._callables.get(
            "unary_unary",
            method,
            lambda: self._channel.unary_unary(
                method,
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            ),
        )
        try:
            response: Resp = await call(request, metadata=self.metadata(lease), timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, method=method.rsplit("/", 1)[-1]) from None
        return response

    async def server_stream(
        self,
        method: str,
        request: Message,
        response_type: type[Resp],
        *,
        timeout: float | None = None,
    ) -> AsyncIterator[Resp]:
        call = self._callables.get(
            "unary_stream",
            method,
            lambda: self._channel.unary_stream(
                method,
                request_serializer=_serialize,
                response_deserializer=response_type.FromString,
            ),
        )
        stream = call(request, metadata=self.metadata(), timeout=timeout)
        try:
            async for item in stream:
                yield item
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, method=method.rsplit("/", 1)[-1]) from None
        finally:
            stream.cancel()

    def stream_stream(
        self, method: str, response_type: type[Resp], *, lease: str | None = None
    ) -> grpc.aio.StreamStreamCall[Message | bytes, Resp]:
        """A raw bidirectional call (content writes); errors are the caller's to translate.

        Requests are messages, or bytes that are a serialized message already.
        """
        call = self._callables.get(
            "stream_stream",
            method,
            lambda: self._channel.stream_stream(
                method,
                request_serializer=_serialize_or_pass,
                response_deserializer=response_type.FromString,
            ),
        )
        return call(metadata=self.metadata(lease))

    async def version(self, *, timeout: float | None = None) -> api.version.VersionResponse:
        return await self.unary(
            "/containerd.services.version.v1.Version/Version",
            empty_pb2.Empty(),
            api.version.VersionResponse,
            timeout=timeout,
        )

    async def ensure_namespace(self, *, timeout: float | None = None) -> None:
        req = api.namespaces.CreateNamespaceRequest(
            namespace=api.namespaces.Namespace(name=self.namespace)
        )
        with contextlib.suppress(AlreadyExistsError):
            await self.unary(
                "/containerd.services.namespaces.v1.Namespaces/Create",
                req,
                api.namespaces.CreateNamespaceResponse,
                timeout=timeout,
            )

    async def plugins(
        self, filters: Sequence[str] = (), *, timeout: float | None = None
    ) -> api.introspection.PluginsResponse:
        return await self.unary(
            "/containerd.services.introspection.v1.Introspection/Plugins",
            api.introspection.PluginsRequest(filters=list(filters)),
            api.introspection.PluginsResponse,
            timeout=timeout,
        )


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


class _Callables:
    """The channel's multi-callables, one per kind and method path, built on first use."""

    def __init__(self) -> None:
        self._built: dict[tuple[str, str], Any] = {}

    def get(self, kind: str, method: str, build: Callable[[], C]) -> C:
        call: C | None = self._built.get((kind, method))
        if call is None:
            call = self._built[(kind, method)] = build()
        return call


def _serialize_or_pass(message: Message | bytes) -> bytes:
    """A message serialized, or bytes already framed as one (``encode_write_chunk``)."""
    return message if isinstance(message, bytes) else message.SerializeToString()


# WriteContentRequest.data: field 6, wire type 2 (length-delimited); it is the last field set
# in a WRITE message (labels, field 7, are only sent with COMMIT).
_WRITE_DATA_TAG = bytes([6 << 3 | 2])


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def encode_write_chunk(*, ref: str, offset: int, data: bytes) -> bytes:
    """A WRITE ``WriteContentRequest`` as bytes, byte for byte what SerializeToString gives.

    Building the message copies ``data`` into it and serializing copies it again; at ~12 ms
    per MiB (upb, this 2-core VM) that was most of a large pull's CPU. Protobuf writes fields
    in field-number order, so the small fields are serialized as a message and the payload
    is framed behind them by hand (tag, varint length, bytes): one copy, in ``join``.
    """
    head = api.content.WriteContentRequest(
        action=api.content.WRITE, ref=ref, offset=offset
    ).SerializeToString()
    if not data:
        return head  # proto3 leaves an empty bytes field out
    return b"".join((head, _WRITE_DATA_TAG, _varint(len(data)), data))


class _Service:
    prefix = ""

    def __init__(self, client: ContainerdClient) -> None:
        self._client = client

    async def _call(
        self,
        name: str,
        request: Message,
        response_type: type[Resp],
        *,
        timeout: float | None = None,
        lease: str | None = None,
    ) -> Resp:
        return await self._client.unary(
            f"{self.prefix}/{name}", request, response_type, timeout=timeout, lease=lease
        )


class _Containers(_Service):
    prefix = "/containerd.services.containers.v1.Containers"

    async def get(
        self, container_id: str, *, timeout: float | None = None
    ) -> api.containers.Container:
        resp = await self._call(
            "Get",
            api.containers.GetContainerRequest(id=container_id),
            api.containers.GetContainerResponse,
            timeout=timeout,
        )
        return resp.container

    async def list(
        self, filters: Sequence[str] = (), *, timeout: float | None = None
    ) -> builtins.list[api.containers.Container]:
        resp = await self._call(
            "List",
            api.containers.ListContainersRequest(filters=list(filters)),
            api.containers.ListContainersResponse,
            timeout=timeout,
        )
        return list(resp.containers)

    async def create(
        self,
        *,
        container_id: str,
        image: str,
        labels: Mapping[str, str],
        runtime: str,
        spec: Mapping[str, Any],
        snapshotter: str,
        snapshot_key: str,
        extensions: Mapping[str, Extension],
        runtime_options: RuncOptions | None = None,
        timeout: float | None = None,
        lease: str | None = None,
    ) -> api.containers.Container:
        """A container record: the OCI spec, the rootfs snapshot's key, labels, extensions,
        and the runtime (shim type, and the runc shim's options when given) its task gets."""
        runtime_record = api.containers.Container.Runtime(name=runtime)
        if runtime_options is not None:
            runtime_record.options.CopyFrom(encode_runc_options(runtime_options))
        record = api.containers.Container(
            id=container_id,
            image=image,
            labels=dict(labels),
            runtime=runtime_record,
            spec=json_any(SPEC_TYPE_URL, spec),
            snapshotter=snapshotter,
            snapshot_key=snapshot_key,
            extensions=_extensions(extensions),
        )
        resp = await self._call(
            "Create",
            api.containers.CreateContainerRequest(container=record),
            api.containers.CreateContainerResponse,
            timeout=timeout,
            lease=lease,
        )
        return resp.container

    async def update_extensions(
        self,
        container_id: str,
        extensions: Mapping[str, Extension],
        *,
        timeout: float | None = None,
    ) -> api.containers.Container:
        """Replace the record's extensions (the others of the record stay as they are)."""
        record = api.containers.Container(id=container_id, extensions=_extensions(extensions))
        return await self._update(record, ["extensions"], timeout=timeout)

    async def update_spec(
        self, container_id: str, spec: Mapping[str, Any], *, timeout: float | None = None
    ) -> api.containers.Container:
        record = api.containers.Container(id=container_id, spec=json_any(SPEC_TYPE_URL, spec))
        return await self._update(record, ["spec"], timeout=timeout)

    async def _update(
        self, record: api.containers.Container, paths: Sequence[str], *, timeout: float | None
    ) -> api.containers.Container:
        resp = await self._call(
            "Update",
            api.containers.UpdateContainerRequest(
                container=record, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
            ),
            api.containers.UpdateContainerResponse,
            timeout=timeout,
        )
        return resp.container

    async def delete(self, container_id: str, *, timeout: float | None = None) -> None:
        await self._call(
            "Delete",
            api.containers.DeleteContainerRequest(id=container_id),
            empty_pb2.Empty,
            timeout=timeout,
        )


class _Tasks(_Service):
    prefix = "/containerd.services.tasks.v1.Tasks"

    async def create(
        self,
        *,
        container_id: str,
        rootfs: Sequence[api.mount.Mount],
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Create the task of a container (its process not started yet); returns its pid."""
        resp = await self._call(
            "Create",
            api.tasks.CreateTaskRequest(
                container_id=container_id,
                rootfs=list(rootfs),
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                terminal=terminal,
            ),
            api.tasks.CreateTaskResponse,
            timeout=timeout,
        )
        return int(resp.pid)

    async def start(
        self, container_id: str, exec_id: str = "", *, timeout: float | None = None
    ) -> int:
        resp = await self._call(
            "Start",
            api.tasks.StartRequest(container_id=container_id, exec_id=exec_id),
            api.tasks.StartResponse,
            timeout=timeout,
        )
        return int(resp.pid)

    async def delete(
        self, container_id: str, *, timeout: float | None = None
    ) -> api.tasks.DeleteResponse:
        return await self._call(
            "Delete",
            api.tasks.DeleteTaskRequest(container_id=container_id),
            api.tasks.DeleteResponse,
            timeout=timeout,
        )

    async def delete_process(
        self, container_id: str, exec_id: str, *, timeout: float | None = None
    ) -> api.tasks.DeleteResponse:
        return await self._call(
            "DeleteProcess",
            api.tasks.DeleteProcessRequest(container_id=container_id, exec_id=exec_id),
            api.tasks.DeleteResponse,
            timeout=timeout,
        )

    async def get(
        self, container_id: str, exec_id: str = "", *, timeout: float | None = None
    ) -> TaskInfo:
        resp = await self._call(
            "Get",
            api.tasks.GetRequest(container_id=container_id, exec_id=exec_id),
            api.tasks.GetResponse,
            timeout=timeout,
        )
        return task_info(resp.process)

    async def list(
        self, filter: str = "", *, timeout: float | None = None
    ) -> builtins.list[TaskInfo]:
        resp = await self._call(
            "List",
            api.tasks.ListTasksRequest(filter=filter),
            api.tasks.ListTasksResponse,
            timeout=timeout,
        )
        return [task_info(t) for t in resp.tasks]

    async def kill(
        self,
        container_id: str,
        signal: int,
        *,
        exec_id: str = "",
        all: bool = False,
        timeout: float | None = None,
    ) -> None:
        await self._call(
            "Kill",
            api.tasks.KillRequest(
                container_id=container_id, exec_id=exec_id, signal=signal, all=all
            ),
            empty_pb2.Empty,
            timeout=timeout,
        )

    async def exec(
        self,
        *,
        container_id: str,
        exec_id: str,
        process: Mapping[str, Any],
        stdin: str = "",
        stdout: str = "",
        stderr: str = "",
        terminal: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Add a process (an OCI process document) to a running task; started separately."""
        await self._call(
            "Exec",
            api.tasks.ExecProcessRequest(
                container_id=container_id,
                exec_id=exec_id,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                terminal=terminal,
                spec=json_any(PROCESS_TYPE_URL, process),
            ),
            empty_pb2.Empty,
            timeout=timeout,
        )

    async def close_io(
        self, container_id: str, exec_id: str = "", *, timeout: float | None = None
    ) -> None:
        await self._call(
            "CloseIO",
            api.tasks.CloseIORequest(container_id=container_id, exec_id=exec_id, stdin=True),
            empty_pb2.Empty,
            timeout=timeout,
        )

    async def resize_pty(
        self,
        container_id: str,
        exec_id: str,
        *,
        width: int,
        height: int,
        timeout: float | None = None,
    ) -> None:
        await self._call(
            "ResizePty",
            api.tasks.ResizePtyRequest(
                container_id=container_id, exec_id=exec_id, width=width, height=height
            ),
            empty_pb2.Empty,
            timeout=timeout,
        )

    async def wait(
        self, container_id: str, exec_id: str = "", *, timeout: float | None = None
    ) -> ExitStatus:
        """Block until the process exits; no timeout by default (a long-running request)."""
        resp = await self._call(
            "Wait",
            api.tasks.WaitRequest(container_id=container_id, exec_id=exec_id),
            api.tasks.WaitResponse,
            timeout=timeout,
        )
        return ExitStatus(
            exit_status=int(resp.exit_status), exited_at_ns=timestamp_ns(resp.exited_at)
        )

    async def metrics(
        self, container_ids: Sequence[str], *, timeout: float | None = None
    ) -> dict[str, TaskMetrics]:
        """The cgroup counters of these tasks, by container ID (tasks not found are absent)."""
        if not container_ids:
            return {}
        resp = await self._call(
            "Metrics",
            api.tasks.MetricsRequest(filters=[f"id=={i}" for i in container_ids]),
            api.tasks.MetricsResponse,
            timeout=timeout,
        )
        return {m.id: decode_metrics(m) for m in resp.metrics}

    async def update_resources(
        self, container_id: str, resources: Mapping[str, Any], *, timeout: float | None = None
    ) -> None:
        """Apply OCI ``linux.resources`` to a running task's cgroup."""
        await self._call(
            "Update",
            api.tasks.UpdateTaskRequest(
                container_id=container_id, resources=json_any(RESOURCES_TYPE_URL, resources)
            ),
            empty_pb2.Empty,
            timeout=timeout,
        )

    async def checkpoint(
        self,
        container_id: str,
        *,
        image_path: str,
        work_path: str,
        leave_running: bool = True,
        timeout: float | None = None,
    ) -> None:
        """CRIU-dump a running task into ``image_path`` (runc shim): the images stay there,
        nothing goes to the content store; the task keeps running unless told otherwise."""
        options = api.runc_options.CheckpointOptions(
            exit=not leave_running, image_path=image_path, work_path=work_path
        )
        await self._call(
            "Checkpoint",
            api.tasks.CheckpointTaskRequest(
                container_id=container_id,
                options=any_pb2.Any(
                    type_url=CHECKPOINT_OPTIONS_TYPE_URL, value=options.SerializeToString()
                ),
            ),
            api.tasks.CheckpointTaskResponse,
            timeout=timeout,
        )

    async def pids(self, container_id: str, *, timeout: float | None = None) -> builtins.list[int]:
        resp = await self._call(
            "ListPids",
            api.tasks.ListPidsRequest(container_id=container_id),
            api.tasks.ListPidsResponse,
            timeout=timeout,
        )
        return [int(p.pid) for p in resp.processes]


class _Content(_Service):
    prefix = "/containerd.services.content.v1.Content"

    async def info(self, digest: str, *, timeout: float | None = None) -> api.content.Info:
        resp = await self._call(
            "Info",
            api.content.InfoRequest(digest=digest),
            api.content.InfoResponse,
            timeout=timeout,
        )
        return resp.info

    async def read(self, digest: str, *, offset: int = 0, size: int = 0) -> bytes:
        chunks = []
        async for part in self._client.server_stream(
            f"{self.prefix}/Read",
            api.content.ReadContentRequest(digest=digest, offset=offset, size=size),
            api.content.ReadContentResponse,
        ):
            chunks.append(part.data)
        return b"".join(chunks)

    async def delete(self, digest: str) -> None:
        await self._call("Delete", api.content.DeleteContentRequest(digest=digest), empty_pb2.Empty)

    async def abort(self, ref: str) -> None:
        await self._call("Abort", api.content.AbortRequest(ref=ref), empty_pb2.Empty)

    async def list_statuses(self, filters: Sequence[str] = ()) -> builtins.list[api.content.Status]:
        """Ingests in progress (or abandoned): the Status of every open write ref."""
        resp = await self._call(
            "ListStatuses",
            api.content.ListStatusesRequest(filters=list(filters)),
            api.content.ListStatusesResponse,
        )
        return list(resp.statuses)

    async def list_digests(self) -> builtins.list[str]:
        digests: builtins.list[str] = []
        async for part in self._client.server_stream(
            f"{self.prefix}/List", api.content.ListContentRequest(), api.content.ListContentResponse
        ):
            digests.extend(i.digest for i in part.info)
        return digests

    def _write_stream(
        self, *, lease: str | None = None
    ) -> grpc.aio.StreamStreamCall[Message | bytes, api.content.WriteContentResponse]:
        return self._client.stream_stream(
            f"{self.prefix}/Write", api.content.WriteContentResponse, lease=lease
        )

    async def write(
        self,
        *,
        ref: str,
        expected: str,
        total: int,
        chunks: Callable[[int], AsyncGenerator[bytes, None]],
        labels: dict[str, str] | None = None,
        lease: str | None = None,
    ) -> str:
        """Stream content into the ingest ``ref`` and commit it as ``expected``.

        Resumable: containerd keeps the bytes of an ingest until it is committed or aborted,
        and answers the first message (STAT) with how many it holds. ``chunks(offset)`` is
        asked for the content from that offset on, so a write that broke midway (the source
        failed, pycri died) goes on where it stopped when it is retried under the same
        ``ref``. Another writer on the same ref makes containerd answer UNAVAILABLE ("ref ...
        locked").

        containerd answers every message; up to ``WRITE_WINDOW`` writes go out before their
        answers are read (a round trip per chunk would stall the stream), so memory stays
        bounded by a few chunks. containerd checks the size and
        digest at commit: a mismatch fails the commit (FailedPreconditionError) and nothing is
        stored. ``AlreadyExistsError`` when the content is already present. The ingest of a
        failed write is left for the caller to ``abort`` (or its lease to collect), or to
        resume. Returns the committed digest.
        """
        call = self._write_stream(lease=lease)
        write_request = api.content.WriteContentRequest

        async def exchange(request: Message) -> api.content.WriteContentResponse:
            await call.write(request)
            response = await call.read()
            if not isinstance(response, api.content.WriteContentResponse):  # grpc.aio.EOF
                raise UnavailableError("containerd Write: the stream ended early")
            return response

        try:
            status = await exchange(
                write_request(action=api.content.STAT, ref=ref, total=total, expected=expected)
            )
            offset = int(status.offset)
            if offset > total:
                raise FailedPreconditionError(
                    f"containerd Write: ingest {ref} holds {offset} bytes, more than {total}"
                )
            if offset < total:
                unanswered = 0
                async with contextlib.aclosing(chunks(offset)) as stream:
                    while True:
                        try:
                            chunk = await anext(stream)
                        except StopAsyncIteration:
                            break
                        except Exception:
                            # The source broke: let containerd keep what it was sent, so a
                            # retry under this ref resumes after it.
                            with contextlib.suppress(grpc.aio.AioRpcError):
                                for _ in range(unanswered):
                                    await call.read()
                            raise
                        if not chunk:
                            continue
                        await call.write(encode_write_chunk(ref=ref, offset=offset, data=chunk))
                        offset += len(chunk)
                        unanswered += 1
                        if unanswered >= WRITE_WINDOW:
                            await call.read()
                            unanswered -= 1
                for _ in range(unanswered):
                    await call.read()
            committed = await exchange(
                write_request(
                    action=api.content.COMMIT,
                    ref=ref,
                    offset=offset,
                    total=total,
                    expected=expected,
                    labels=labels or {},
                )
            )
            await call.done_writing()
        except grpc.aio.AioRpcError as err:
            raise from_rpc_error(err, method="Write") from None
        finally:
            call.cancel()
        return str(committed.digest)

    async def update(
        self,
        digest: str,
        labels: dict[str, str],
        *,
        paths: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> api.content.Info:
        """Set labels on committed content; only ``labels.<key>`` of the given keys change."""
        mask = list(paths) if paths is not None else [f"labels.{key}" for key in labels]
        resp = await self._call(
            "Update",
            api.content.UpdateRequest(
                info=api.content.Info(digest=digest, labels=labels),
                update_mask=field_mask_pb2.FieldMask(paths=mask),
            ),
            api.content.UpdateResponse,
            timeout=timeout,
        )
        return resp.info


class _Images(_Service):
    prefix = "/containerd.services.images.v1.Images"

    async def get(self, name: str, *, timeout: float | None = None) -> api.images.Image:
        resp = await self._call(
            "Get",
            api.images.GetImageRequest(name=name),
            api.images.GetImageResponse,
            timeout=timeout,
        )
        return resp.image

    async def list(
        self, filters: Sequence[str] = (), *, timeout: float | None = None
    ) -> builtins.list[api.images.Image]:
        resp = await self._call(
            "List",
            api.images.ListImagesRequest(filters=list(filters)),
            api.images.ListImagesResponse,
            timeout=timeout,
        )
        return list(resp.images)

    async def create(
        self,
        *,
        name: str,
        target: Descriptor,
        labels: Mapping[str, str],
        lease: str | None = None,
    ) -> api.images.Image:
        resp = await self._call(
            "Create",
            api.images.CreateImageRequest(image=_image(name, target, labels)),
            api.images.CreateImageResponse,
            lease=lease,
        )
        return resp.image

    async def update(
        self,
        *,
        name: str,
        target: Descriptor,
        labels: Mapping[str, str],
        paths: Sequence[str] = (),
        lease: str | None = None,
    ) -> api.images.Image:
        """Update an image record; an empty ``paths`` replaces labels and target."""
        resp = await self._call(
            "Update",
            api.images.UpdateImageRequest(
                image=_image(name, target, labels),
                update_mask=field_mask_pb2.FieldMask(paths=list(paths)) if paths else None,
            ),
            api.images.UpdateImageResponse,
            lease=lease,
        )
        return resp.image

    async def delete(self, name: str, *, sync: bool = False) -> None:
        await self._call(
            "Delete", api.images.DeleteImageRequest(name=name, sync=sync), empty_pb2.Empty
        )


class _Snapshots(_Service):
    prefix = "/containerd.services.snapshots.v1.Snapshots"

    async def prepare(
        self,
        snapshotter: str,
        key: str,
        parent: str,
        *,
        labels: dict[str, str] | None = None,
        lease: str | None = None,
    ) -> builtins.list[api.mount.Mount]:
        resp = await self._call(
            "Prepare",
            api.snapshots.PrepareSnapshotRequest(
                snapshotter=snapshotter, key=key, parent=parent, labels=labels or {}
            ),
            api.snapshots.PrepareSnapshotResponse,
            lease=lease,
        )
        return list(resp.mounts)

    async def mounts(self, snapshotter: str, key: str) -> builtins.list[api.mount.Mount]:
        resp = await self._call(
            "Mounts",
            api.snapshots.MountsRequest(snapshotter=snapshotter, key=key),
            api.snapshots.MountsResponse,
        )
        return list(resp.mounts)

    async def commit(
        self,
        snapshotter: str,
        name: str,
        key: str,
        *,
        labels: dict[str, str] | None = None,
        lease: str | None = None,
    ) -> None:
        await self._call(
            "Commit",
            api.snapshots.CommitSnapshotRequest(
                snapshotter=snapshotter, name=name, key=key, labels=labels or {}
            ),
            empty_pb2.Empty,
            lease=lease,
        )

    async def remove(self, snapshotter: str, key: str) -> None:
        await self._call(
            "Remove",
            api.snapshots.RemoveSnapshotRequest(snapshotter=snapshotter, key=key),
            empty_pb2.Empty,
        )

    async def stat(self, snapshotter: str, key: str) -> api.snapshots.Info:
        resp = await self._call(
            "Stat",
            api.snapshots.StatSnapshotRequest(snapshotter=snapshotter, key=key),
            api.snapshots.StatSnapshotResponse,
        )
        return resp.info

    async def list(self, snapshotter: str) -> builtins.list[api.snapshots.Info]:
        infos: builtins.list[api.snapshots.Info] = []
        async for part in self._client.server_stream(
            f"{self.prefix}/List",
            api.snapshots.ListSnapshotsRequest(snapshotter=snapshotter),
            api.snapshots.ListSnapshotsResponse,
        ):
            infos.extend(part.info)
        return infos

    async def usage(self, snapshotter: str, key: str) -> api.snapshots.UsageResponse:
        return await self._call(
            "Usage",
            api.snapshots.UsageRequest(snapshotter=snapshotter, key=key),
            api.snapshots.UsageResponse,
        )


class _Diff(_Service):
    prefix = "/containerd.services.diff.v1.Diff"

    async def apply(
        self, diff: Descriptor, mounts: Sequence[api.mount.Mount], *, lease: str | None = None
    ) -> Descriptor:
        """Unpack the layer ``diff`` onto ``mounts``; returns the applied (uncompressed) one."""
        resp = await self._call(
            "Apply",
            api.diff.ApplyRequest(diff=_descriptor(diff), mounts=list(mounts)),
            api.diff.ApplyResponse,
            lease=lease,
        )
        applied = resp.applied
        return Descriptor(media_type=applied.media_type, digest=applied.digest, size=applied.size)


class _Leases(_Service):
    prefix = "/containerd.services.leases.v1.Leases"

    async def create(self, lease_id: str, *, labels: dict[str, str] | None = None) -> str:
        resp = await self._call(
            "Create",
            api.leases.CreateRequest(id=lease_id, labels=labels or {}),
            api.leases.CreateResponse,
        )
        return str(resp.lease.id)

    async def delete(self, lease_id: str, *, sync: bool = False) -> None:
        await self._call(
            "Delete", api.leases.DeleteRequest(id=lease_id, sync=sync), empty_pb2.Empty
        )

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[api.leases.Lease]:
        resp = await self._call(
            "List", api.leases.ListRequest(filters=list(filters)), api.leases.ListResponse
        )
        return list(resp.leases)

    async def add_resource(self, lease_id: str, *, resource_id: str, resource_type: str) -> None:
        """Make the lease hold an existing object (``content`` or ``snapshots/<name>``)."""
        await self._call(
            "AddResource",
            api.leases.AddResourceRequest(
                id=lease_id, resource=api.leases.Resource(id=resource_id, type=resource_type)
            ),
            empty_pb2.Empty,
        )


class _Events(_Service):
    prefix = "/containerd.services.events.v1.Events"

    async def subscribe(self, filters: Sequence[str]) -> AsyncIterator[Envelope | ValueError]:
        """Decoded events; an undecodable one is yielded as its ``ValueError`` (never raised,
        so one bad event cannot end the stream). Ends with a ContainerdError when the stream
        breaks."""
        async for raw in self._client.server_stream(
            f"{self.prefix}/Subscribe",
            api.events.SubscribeRequest(filters=list(filters)),
            api.events.Envelope,
        ):
            try:
                yield decode_envelope(raw)
            except ValueError as err:
                yield err


def _extensions(extensions: Mapping[str, Extension]) -> dict[str, any_pb2.Any]:
    return {k: any_pb2.Any(type_url=e.type_url, value=e.value) for k, e in extensions.items()}


def _descriptor(desc: Descriptor) -> api.descriptor.Descriptor:
    return api.descriptor.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size)


def _image(name: str, target: Descriptor, labels: Mapping[str, str]) -> api.images.Image:
    return api.images.Image(name=name, labels=dict(labels), target=_descriptor(target))


def record_spec(record: api.containers.Container) -> dict[str, Any]:
    """The OCI spec of a container record; ``ValueError`` if it is not a JSON object."""
    spec = json.loads(record.spec.value)
    if not isinstance(spec, dict):
        raise ValueError("spec is not an object")
    return spec


def record_runtime(record: api.containers.Container) -> tuple[str, RuncOptions | None]:
    """The runtime of a record: its shim type, and its runc shim options if it has them."""
    options = record.runtime.options if record.runtime.HasField("options") else None
    return record.runtime.name, decode_runc_options(options) if options is not None else None


def record_extension(record: api.containers.Container, name: str) -> bytes:
    """The value of one extension of a record; ``KeyError`` when absent."""
    return bytes(record.extensions[name].value)
