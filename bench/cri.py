"""A CRI v1 client for benchmarks: grpc.aio stubs on a unix socket, every RPC timed.

The same client drives pycri and containerd's CRI plugin, so the two see the same calls in
the same order. ``RpcTimer`` keeps the wall-clock duration of each call, per RPC name, as the
client saw it (request serialization, the socket round trip and the daemon's work): that is
the latency kubelet would see.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import grpc.aio
from cri_api.v1 import api_pb2, api_pb2_grpc

T = TypeVar("T")

# A generous per-call deadline: a benchmark call that takes longer is a failure, not a sample.
RPC_TIMEOUT = 120.0


class RpcTimer:
    """Durations (seconds) of completed calls, per RPC name, and the names of failed calls."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = defaultdict(list)
        self.failures: dict[str, int] = defaultdict(int)

    async def timed(self, rpc: str, call: Awaitable[T]) -> T:
        started = time.perf_counter()
        try:
            result = await call
        except BaseException:
            self.failures[rpc] += 1
            raise
        self.samples[rpc].append(time.perf_counter() - started)
        return result


class CriClient:
    """RuntimeService and ImageService stubs for one CRI endpoint."""

    def __init__(self, *, socket: Path) -> None:
        self.socket = socket
        # one channel; gRPC multiplexes concurrent calls on its HTTP/2 connection
        self.channel = grpc.aio.insecure_channel(
            f"unix://{socket}", options=[("grpc.max_receive_message_length", 64 << 20)]
        )
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        await self.channel.close()

    async def version(self, *, timeout: float = 5.0) -> api_pb2.VersionResponse:
        response: api_pb2.VersionResponse = await self.runtime.Version(
            api_pb2.VersionRequest(), timeout=timeout
        )
        return response

    async def image_present(self, *, ref: str) -> bool:
        response = await self.image.ImageStatus(
            api_pb2.ImageStatusRequest(image=api_pb2.ImageSpec(image=ref)), timeout=10
        )
        return bool(response.image.id)
