"""Test doubles for the streaming server: a pure-Python backend and a fake CRI RuntimeService.

``FakeBackend`` interprets a tiny command language instead of running processes:

* ``echo ARGS...`` writes the arguments and a newline to stdout, exit 0;
* ``exit N`` exits with N; ``fail`` raises (an internal error);
* ``stderr TEXT`` writes TEXT to stderr;
* ``cat`` copies stdin to stdout until stdin ends;
* ``generate BYTES SEED`` writes BYTES pseudo-random bytes (``pattern(BYTES, SEED)``);
* ``sleep SECONDS`` sleeps (records its cancellation in ``cancelled``);
* ``sizes N`` prints the first N terminal sizes it gets, one ``WxH`` line each;
* ``head N`` echoes the first N bytes of stdin, then exits.

``attach`` echoes stdin to stdout (and records the request). ``connect`` opens a TCP
connection to 127.0.0.1:PORT, so a port with nothing listening is refused for real.

``FakeRuntime`` answers the RPCs crictl needs around streaming (Version, Status,
ContainerStatus, PodSandboxStatus, Exec, Attach, PortForward) with URLs of a real
``StreamServer``.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field

import grpc
from cri_api.v1 import api_pb2, api_pb2_grpc

from pycri.stream.backend import StreamIO
from pycri.stream.server import StreamServer

CHUNK = 64 * 1024


def pattern(size: int, seed: int) -> bytes:
    """``size`` pseudo-random bytes: a random block of prime length, repeated.

    The prime period makes reordered, lost or duplicated frames show as a mismatch while
    keeping large payloads cheap to make.
    """
    block = random.Random(seed).randbytes(min(size, 1_000_003))
    return (block * (size // len(block) + 1))[:size]


@dataclass
class FakeBackend:
    cancelled: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    exec_requests: list[api_pb2.ExecRequest] = field(default_factory=list)
    attach_requests: list[api_pb2.AttachRequest] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)

    async def exec(self, request: api_pb2.ExecRequest, io: StreamIO) -> int:
        self.exec_requests.append(request)
        self.started.set()
        name, *args = list(request.cmd)
        try:
            return await self._run(name, args, io)
        except asyncio.CancelledError:
            self.cancelled.append(name)
            raise
        finally:
            self.finished.append(name)

    async def _run(self, name: str, args: list[str], io: StreamIO) -> int:
        out = io.stdout
        if name == "echo":
            assert out is not None
            await out.write((" ".join(args) + "\n").encode())
            return 0
        if name == "exit":
            return int(args[0])
        if name == "fail":
            raise RuntimeError("the fake backend failed")
        if name == "stderr":
            assert io.stderr is not None
            await io.stderr.write(args[0].encode())
            return 0
        if name == "cat":
            assert out is not None and io.stdin is not None
            async for chunk in io.stdin:
                await out.write(chunk)
            return 0
        if name == "generate":
            assert out is not None
            data = memoryview(pattern(int(args[0]), int(args[1])))
            for start in range(0, len(data), CHUNK):
                await out.write(bytes(data[start : start + CHUNK]))
            return 0
        if name == "sleep":
            await asyncio.sleep(float(args[0]))
            return 0
        if name == "head":
            assert out is not None and io.stdin is not None
            wanted = int(args[0])
            async for chunk in io.stdin:
                await out.write(chunk[:wanted])
                wanted -= len(chunk)
                if wanted <= 0:
                    break
            return 0
        if name == "sizes":
            assert out is not None and io.resize is not None
            wanted = int(args[0])
            async for size in io.resize:
                await out.write(f"{size.width}x{size.height}\n".encode())
                wanted -= 1
                if wanted == 0:
                    break
            return 0
        raise RuntimeError(f"unknown fake command {name!r}")

    async def attach(self, request: api_pb2.AttachRequest, io: StreamIO) -> None:
        self.attach_requests.append(request)
        self.started.set()
        try:
            if io.stdin is not None and io.stdout is not None:
                async for chunk in io.stdin:
                    await io.stdout.write(chunk)
            elif io.stdout is not None:
                await io.stdout.write(b"attached\n")
        except asyncio.CancelledError:
            self.cancelled.append("attach")
            raise

    async def connect(
        self, sandbox_id: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.connects.append((sandbox_id, port))
        return await asyncio.open_connection("127.0.0.1", port)


class FakeRuntime(api_pb2_grpc.RuntimeServiceServicer):
    """Just enough RuntimeService for crictl exec / attach / port-forward."""

    def __init__(self, server: StreamServer) -> None:
        self.server = server
        self.calls: list[str] = []

    async def Version(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("Version")
        return api_pb2.VersionResponse(
            version="0.1.0", runtime_name="fake", runtime_version="0", runtime_api_version="v1"
        )

    async def Status(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("Status")
        return api_pb2.StatusResponse(status=api_pb2.RuntimeStatus())

    async def ContainerStatus(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("ContainerStatus")
        return api_pb2.ContainerStatusResponse(
            status=api_pb2.ContainerStatus(id=request.container_id, state=api_pb2.CONTAINER_RUNNING)
        )

    async def PodSandboxStatus(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("PodSandboxStatus")
        return api_pb2.PodSandboxStatusResponse(
            status=api_pb2.PodSandboxStatus(id=request.pod_sandbox_id, state=api_pb2.SANDBOX_READY)
        )

    async def Exec(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("Exec")
        return api_pb2.ExecResponse(url=self.server.register_exec(request))

    async def Attach(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("Attach")
        return api_pb2.AttachResponse(url=self.server.register_attach(request))

    async def PortForward(self, request, context):  # type: ignore[no-untyped-def]
        self.calls.append("PortForward")
        return api_pb2.PortForwardResponse(url=self.server.register_portforward(request))


async def start_fake_runtime(
    server: StreamServer, socket_path: str
) -> tuple[grpc.aio.Server, FakeRuntime]:
    grpc_server = grpc.aio.server()
    runtime = FakeRuntime(server)
    api_pb2_grpc.add_RuntimeServiceServicer_to_server(runtime, grpc_server)
    grpc_server.add_insecure_port(f"unix://{socket_path}")
    await grpc_server.start()
    return grpc_server, runtime


# ---------------------------------------------------------------------------- test clients


async def echo_server() -> tuple[asyncio.Server, int]:
    """A TCP echo server on 127.0.0.1 that half-closes after its peer does."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(256 * 1024):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
