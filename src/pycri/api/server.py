"""The CRI gRPC seam: a grpc.aio server on a unix socket serving RuntimeService/ImageService.

Handlers are registered from a table (method name → async implementation taking the
request and returning the response, or an async iterator for server streams). Every method
of the CRI proto without an entry answers UNIMPLEMENTED with a message naming it, so a new
kubelet calling an RPC pycri lacks gets a clear answer, never a crash.

Every call goes through ``_guard``: it refuses calls until the daemon is initialized
(recovery done; reference §1.1), logs the RPC, and maps exceptions to gRPC statuses:
``CRIError`` subclasses carry their own code, containerd errors keep theirs (NotFound stays
NOT_FOUND, which kubelet checks), timeouts become DEADLINE_EXCEEDED, anything else INTERNAL.
A handler's crash never takes the daemon down.

Hostile input at the seam:

- A request body that does not decode as the method's message (``b"\xff"``) is answered
  INVALID_ARGUMENT with one log line; the deserializer never raises into grpc (which would
  answer UNKNOWN and log a traceback per request).
- Every status message, and every log line quoting one, is cut to ``MAX_MESSAGE_BYTES``:
  messages quote request values, and a 15 MiB ID must not come back as a 15 MiB
  ``grpc-message`` header (which the client refuses as RESOURCE_EXHAUSTED) or log line.
- INTERNAL says only that something failed and the ID of the log line that has the cause
  and traceback: no Python exception class names, no host paths.

Socket handling: the parent dir is created, a stale socket (nothing listening) is replaced,
a live one is refused (two daemons on one socket would steal each other's clients), and
the socket is made mode 0660 once bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket as socketlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cri_api.v1 import api_pb2
from google.protobuf.message import Message

from pycri.containerd.errors import ContainerdError
from pycri.errors import CRIError

log = logging.getLogger(__name__)

UnaryImpl = Callable[[Any], Awaitable[Message]]
StreamImpl = Callable[[Any], AsyncIterator[Message]]
RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"
# Status/List RPCs are called every second by kubelet: log them at debug only.
_QUIET = {
    "Version",
    "Status",
    "ListPodSandbox",
    "ListContainers",
    "ListImages",
    "PodSandboxStatus",
    "ContainerStatus",
    "ImageStatus",
    "ImageFsInfo",
    "ListContainerStats",
    "ListPodSandboxStats",
    "ContainerStats",
    "PodSandboxStats",
    "ListMetricDescriptors",
    "ListPodSandboxMetrics",
    "RuntimeConfig",
}


MAX_MESSAGE_BYTES = 2048  # of a status message or a logged error


class SocketInUseError(RuntimeError):
    """Another server answers on the socket pycri was asked to listen on."""


def bounded(message: str, limit: int = MAX_MESSAGE_BYTES) -> str:
    """``message``, cut to about ``limit`` bytes with what was cut said."""
    if len(message) <= limit // 4 or len(message.encode()) <= limit:
        return message
    cut = message.encode()[: limit - 64].decode(errors="ignore")
    return f"{cut}... ({len(message)} characters in all)"


def _status_of(err: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(err, CRIError):
        return err.code, err.message
    if isinstance(err, ContainerdError):
        return err.code, err.message
    if isinstance(err, TimeoutError):
        return grpc.StatusCode.DEADLINE_EXCEEDED, f"timed out: {err}" if str(err) else "timed out"
    return grpc.StatusCode.INTERNAL, ""


class Undecodable:
    """What the deserializer returns for bytes that are not the method's request message."""

    def __init__(self, type_name: str, error: BaseException) -> None:
        self.type_name = type_name
        self.error = bounded(str(error) or "malformed", 256)


def _deserializer(cls: type[Message]) -> Callable[[bytes], Message | Undecodable]:
    def parse(data: bytes) -> Message | Undecodable:
        try:
            return cls.FromString(data)
        except Exception as err:  # DecodeError, and whatever else malformed bytes raise
            return Undecodable(cls.DESCRIPTOR.full_name, err)

    return parse


class _Guard:
    def __init__(self, *, is_ready: Callable[[], bool]) -> None:
        self.is_ready = is_ready

    async def check_ready(
        self, name: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        if isinstance(request, Undecodable):
            log.info(
                "undecodable request refused",
                extra={"rpc": name, "type": request.type_name, "error": request.error},
            )
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"{name}: the request is not a valid {request.type_name}: {request.error}",
            )
        if not self.is_ready():
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, f"{name}: server is not initialized yet"
            )

    async def fail(
        self, name: str, err: BaseException, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        code, message = _status_of(err)
        if code == grpc.StatusCode.INTERNAL:
            error_id = secrets.token_hex(4)
            log.error(
                "rpc failed",
                exc_info=err,
                extra={"rpc": name, "error_id": error_id, "error": bounded(repr(err))},
            )
            message = f"{name}: internal error {error_id} (the pycri log has the details)"
        else:
            message = bounded(message)
            log.info("rpc refused", extra={"rpc": name, "code": code.name, "error": message})
        await context.abort(code, message)

    def unary(self, name: str, impl: UnaryImpl) -> Callable[..., Awaitable[Message]]:
        async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
            await self.check_ready(name, request, context)
            started = time.monotonic()
            try:
                response = await impl(request)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await self.fail(name, err, context)
                raise AssertionError("unreachable") from err  # abort() raises
            if name not in _QUIET or log.isEnabledFor(logging.DEBUG):
                log.log(
                    logging.DEBUG if name in _QUIET else logging.INFO,
                    "rpc done",
                    extra={
                        "rpc": name,
                        "duration_ms": round((time.monotonic() - started) * 1e3, 1),
                    },
                )
            return response

        return handler

    def stream(self, name: str, impl: StreamImpl) -> Callable[..., AsyncIterator[Message]]:
        async def handler(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Message]:
            await self.check_ready(name, request, context)
            try:
                async for item in impl(request):
                    yield item
            except asyncio.CancelledError:
                raise
            except grpc.aio.AbortError:
                raise
            except Exception as err:
                await self.fail(name, err, context)

        return handler


def _unimplemented(service: str, name: str) -> Callable[..., Awaitable[Message]]:
    async def handler(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Message:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"pycri does not implement {service}/{name} yet"
        )
        raise AssertionError("unreachable")

    return handler


def _unimplemented_stream(service: str, name: str) -> Callable[..., AsyncIterator[Message]]:
    async def handler(
        request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Message]:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, f"pycri does not implement {service}/{name} yet"
        )
        yield api_pb2.ContainerEventResponse()  # pragma: no cover - abort() raises

    return handler


def build_handler(
    service: str,
    impls: Mapping[str, UnaryImpl | StreamImpl],
    *,
    is_ready: Callable[[], bool],
) -> grpc.GenericRpcHandler:
    """A generic handler for every method of ``service`` in the CRI proto."""
    guard = _Guard(is_ready=is_ready)
    descriptor = api_pb2.DESCRIPTOR.services_by_name[service.rsplit(".", 1)[-1]]
    unknown = set(impls) - {m.name for m in descriptor.methods}
    if unknown:
        raise ValueError(f"{service} has no methods {sorted(unknown)}")
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in descriptor.methods:
        req_cls = getattr(api_pb2, method.input_type.name)
        resp_cls = getattr(api_pb2, method.output_type.name)
        impl = impls.get(method.name)
        if method.server_streaming:
            stream_fn = (
                guard.stream(method.name, impl)  # type: ignore[arg-type]
                if impl
                else _unimplemented_stream(service, method.name)
            )
            make_handler: Any = grpc.unary_stream_rpc_method_handler
            fn: Any = stream_fn
        else:
            fn = (
                guard.unary(method.name, impl)  # type: ignore[arg-type]
                if impl
                else _unimplemented(service, method.name)
            )
            make_handler = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make_handler(
            fn,
            request_deserializer=_deserializer(req_cls),
            response_serializer=resp_cls.SerializeToString,
        )
    return grpc.method_handlers_generic_handler(service, handlers)


def socket_answers(path: Path) -> bool:
    """True when a server accepts connections on the unix socket ``path``."""
    sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
    sock.settimeout(1.0)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def prepare_socket(path: Path) -> None:
    """Create the parent dir; remove a stale socket; refuse one that a server answers on."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        if socket_answers(path):
            raise SocketInUseError(f"another server is listening on {path}")
        path.unlink()


class CRIServer:
    """The grpc.aio server of one pycri daemon."""

    def __init__(
        self,
        *,
        socket_path: Path,
        runtime_impls: Mapping[str, UnaryImpl | StreamImpl],
        image_impls: Mapping[str, UnaryImpl | StreamImpl],
        is_ready: Callable[[], bool],
    ) -> None:
        self.socket_path = socket_path
        self._started = False
        self._server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", 16 << 20),
                ("grpc.max_send_message_length", 64 << 20),
            ]
        )
        self._server.add_generic_rpc_handlers(
            (
                build_handler(RUNTIME_SERVICE, runtime_impls, is_ready=is_ready),
                build_handler(IMAGE_SERVICE, image_impls, is_ready=is_ready),
            )
        )

    async def start(self) -> None:
        await asyncio.to_thread(prepare_socket, self.socket_path)
        self._server.add_insecure_port(f"unix://{self.socket_path}")
        await self._server.start()
        self._started = True
        await asyncio.to_thread(os.chmod, self.socket_path, 0o660)
        log.info("serving CRI", extra={"socket": str(self.socket_path)})

    async def stop(self, *, grace: float = 5.0) -> None:
        if not self._started:
            return  # never bound: the socket path may be another server's
        self._started = False
        await self._server.stop(grace)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.socket_path.unlink)
