"""The gRPC seam: error mapping, readiness gate, UNIMPLEMENTED, socket handling."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc

from pycri.api.server import MAX_MESSAGE_BYTES, CRIServer, SocketInUseError, prepare_socket
from pycri.containerd.errors import NotFoundError, UnavailableError
from pycri.errors import AlreadyExists, InvalidArgument
from pycri.service.registry import IMAGE_RPCS, RUNTIME_RPCS

ready = {"value": True}


async def raising(request: Any) -> Any:
    kind = request.container_id
    if kind == "invalid":
        raise InvalidArgument("bad thing")
    if kind == "exists":
        raise AlreadyExists("held by x")
    if kind == "ctd-notfound":
        raise NotFoundError("containerd Get: not found")
    if kind == "ctd-down":
        raise UnavailableError("containerd down")
    if kind == "timeout":
        raise TimeoutError
    if kind == "crash":
        raise ZeroDivisionError("oops in /var/lib/pycri/secret")
    if kind.startswith("huge"):
        raise InvalidArgument(f"container {kind!r} not found")
    return api_pb2.ContainerStatusResponse()


@pytest.fixture
async def stub(tmp_path: Path):  # type: ignore[no-untyped-def]
    sock = tmp_path / "s.sock"
    server = CRIServer(
        socket_path=sock,
        runtime_impls={"ContainerStatus": raising},
        image_impls={},
        is_ready=lambda: ready["value"],
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{sock}")
    yield api_pb2_grpc.RuntimeServiceStub(channel)
    await channel.close()
    await server.stop(grace=0)
    assert not sock.exists()


@pytest.mark.parametrize(
    ("kind", "code", "text"),
    [
        ("invalid", grpc.StatusCode.INVALID_ARGUMENT, "bad thing"),
        ("exists", grpc.StatusCode.ALREADY_EXISTS, "held by x"),
        ("ctd-notfound", grpc.StatusCode.NOT_FOUND, "not found"),
        ("ctd-down", grpc.StatusCode.UNAVAILABLE, "containerd down"),
        ("timeout", grpc.StatusCode.DEADLINE_EXCEEDED, "timed out"),
        ("crash", grpc.StatusCode.INTERNAL, "internal error"),
    ],
)
async def test_errors_map_to_codes(stub, kind: str, code: grpc.StatusCode, text: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=kind))
    assert err.value.code() == code
    assert text in (err.value.details() or "")
    # the server survives every one of them
    await stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="fine"))


async def test_not_initialized_refused(stub) -> None:  # type: ignore[no-untyped-def]
    ready["value"] = False
    try:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="fine"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "not initialized" in (err.value.details() or "")
    finally:
        ready["value"] = True


async def test_unimplemented(stub) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListMetricDescriptors(api_pb2.ListMetricDescriptorsRequest())
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "ListMetricDescriptors" in (err.value.details() or "")


async def test_a_method_missing_from_the_real_table_gets_a_clear_unimplemented(
    tmp_path: Path,
) -> None:
    """pycri implements every CRI method now; one a newer cri_api adds (here: one taken out of
    the real table) must still answer UNIMPLEMENTED naming it, never crash the server."""
    missing = "CheckpointContainer"
    sock = tmp_path / "s.sock"
    server = CRIServer(
        socket_path=sock,
        runtime_impls={name: raising for name in RUNTIME_RPCS if name != missing},
        image_impls={name: raising for name in IMAGE_RPCS},
        is_ready=lambda: True,
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"unix://{sock}")
    try:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CheckpointContainer(api_pb2.CheckpointContainerRequest())
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
        assert err.value.details() == (
            f"pycri does not implement runtime.v1.RuntimeService/{missing} yet"
        )
        await stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="fine"))
    finally:
        await channel.close()
        await server.stop(grace=0)


def test_prepare_socket(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "s.sock"
    prepare_socket(path)  # creates the parent
    assert path.parent.is_dir()
    live = socket.socket(socket.AF_UNIX)
    live.bind(str(path))
    live.listen()
    with pytest.raises(SocketInUseError):
        prepare_socket(path)
    live.close()
    prepare_socket(path)  # stale now: removed
    assert not path.exists()


async def test_internal_errors_name_no_exception_class_nor_path(stub, caplog) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id="crash"))
    details = err.value.details() or ""
    assert "ZeroDivisionError" not in details and "/var/lib" not in details
    error_id = details.split("internal error ", 1)[1].split()[0]
    # the log line with that ID has the cause and the traceback
    failed = [r for r in caplog.records if r.getMessage() == "rpc failed"]
    assert failed and failed[-1].error_id == error_id and failed[-1].exc_info


async def test_undecodable_bodies_are_invalid_argument_with_one_log_line(  # type: ignore[no-untyped-def]
    stub, caplog, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="pycri.api.server")
    channel = grpc.aio.insecure_channel(f"unix://{tmp_path / 's.sock'}")
    try:
        for method in ("ContainerStatus", "ListMetricDescriptors"):
            raw = channel.unary_unary(
                f"/runtime.v1.RuntimeService/{method}",
                request_serializer=lambda b: b,
                response_deserializer=lambda b: b,
            )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await raw(b"\xff")
            expected = (
                grpc.StatusCode.INVALID_ARGUMENT
                if method == "ContainerStatus"
                else grpc.StatusCode.UNIMPLEMENTED
            )
            assert err.value.code() == expected, err.value.details()
            if method == "ContainerStatus":
                assert "runtime.v1.ContainerStatusRequest" in (err.value.details() or "")
    finally:
        await channel.close()
    lines = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelname == "INFO" and not lines[0].exc_info
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


async def test_huge_values_are_not_echoed_back(stub, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO, logger="pycri.api.server")
    big = "huge" + "x" * 200_000
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ContainerStatus(api_pb2.ContainerStatusRequest(container_id=big))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert len(err.value.details() or "") <= MAX_MESSAGE_BYTES
    refused = [r for r in caplog.records if r.getMessage() == "rpc refused"]
    assert refused and len(refused[-1].error) <= MAX_MESSAGE_BYTES
