"""StreamServer end to end with a fake backend: exec, attach, port-forward over SPDY and
WebSocket, statuses, tokens, limits, timeouts and cancellation.

The SPDY client is ``pycri.stream.spdy`` in its client role, driven like client-go drives
spdystream; the WebSocket client is the ``websockets`` library's.
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from cri_api.v1 import api_pb2
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pycri.errors import InvalidArgument
from pycri.stream.backend import StreamClosedError
from pycri.stream.server import StreamServer, StreamServerConfig, TooManyPendingRequests
from pycri.stream.spdy import DEFAULT_WINDOW, FlowControlPolicy, SpdyOptions
from pycri.testing.stream_client import (
    free_port,
    open_command_streams,
    read_all,
    spdy_command,
    spdy_upgrade,
)
from tests.stream_support import FakeBackend, echo_server, pattern
from tests.unit.fakes import FakeClock

MakeServer = Callable[..., Awaitable[tuple[StreamServer, FakeBackend]]]


@pytest.fixture
async def make_server() -> AsyncIterator[MakeServer]:
    servers: list[StreamServer] = []

    async def make(
        clock: Callable[[], float] | None = None, **overrides: Any
    ) -> tuple[StreamServer, FakeBackend]:
        backend = FakeBackend()
        config = StreamServerConfig(**{"close_linger_s": 0.5, **overrides})
        server = StreamServer(backend=backend, config=config, **({"clock": clock} if clock else {}))
        await server.start()
        servers.append(server)
        return server, backend

    yield make
    for server in servers:
        await server.stop()


def exec_request(
    *cmd: str, stdin: bool = False, tty: bool = False, stderr: bool = True
) -> api_pb2.ExecRequest:
    return api_pb2.ExecRequest(
        container_id="c1",
        cmd=list(cmd),
        stdin=stdin,
        stdout=True,
        stderr=stderr and not tty,
        tty=tty,
    )


async def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll ``predicate``: the server's counters change in its own tasks, not on an event."""
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


# ---------------------------------------------------------------- exec / attach over SPDY


async def test_exec_success_writes_a_v4_success_status(make_server: MakeServer) -> None:
    server, _ = await make_server()
    out, err, status = await spdy_command(
        server.register_exec(exec_request("echo", "hello", "world"))
    )
    assert (out, err) == (b"hello world\n", b"")
    assert json.loads(status) == {"metadata": {}, "status": "Success"}
    await wait_for(lambda: server.stats().sessions_open == 0)
    stats = server.stats()
    assert stats.outcomes == {"exec:exited": 1}
    assert stats.bytes_out == len(b"hello world\n") + len(status)


async def test_exec_non_zero_exit_is_reported_with_its_code(make_server: MakeServer) -> None:
    server, _ = await make_server()
    _, _, status = await spdy_command(server.register_exec(exec_request("exit", "3")))
    document = json.loads(status)
    assert document["status"] == "Failure"
    assert document["reason"] == "NonZeroExitCode"
    assert document["details"] == {"causes": [{"reason": "ExitCode", "message": "3"}]}
    assert document["message"].startswith("command terminated with non-zero exit code")


async def test_backend_failure_is_an_internal_error(make_server: MakeServer) -> None:
    server, _ = await make_server()
    _, _, status = await spdy_command(server.register_exec(exec_request("fail")))
    document = json.loads(status)
    assert document["reason"] == "InternalError" and document["code"] == 500
    assert "the fake backend failed" in document["message"]


@pytest.mark.parametrize("protocol", ["v3.channel.k8s.io", "v2.channel.k8s.io", "channel.k8s.io"])
async def test_older_protocols_get_plain_text_errors(
    make_server: MakeServer, protocol: str
) -> None:
    server, _ = await make_server()
    _, _, status = await spdy_command(
        server.register_exec(exec_request("exit", "7")), protocol=protocol
    )
    assert status.startswith(b"command terminated with non-zero exit code")
    _, _, status = await spdy_command(server.register_exec(exec_request("echo")), protocol=protocol)
    assert status == b""


async def test_stdin_reaches_the_backend_and_its_end_is_eof(make_server: MakeServer) -> None:
    server, _ = await make_server()
    payload = pattern(3 * 1024 * 1024, 1)
    out, _, status = await spdy_command(
        server.register_exec(exec_request("cat", stdin=True)), stdin=payload
    )
    assert out == payload
    assert json.loads(status)["status"] == "Success"


async def test_stderr_is_its_own_stream(make_server: MakeServer) -> None:
    server, _ = await make_server()
    out, err, _ = await spdy_command(server.register_exec(exec_request("stderr", "oops")))
    assert (out, err) == (b"", b"oops")


async def test_tty_resize_events_reach_the_backend(make_server: MakeServer) -> None:
    server, _ = await make_server()
    url = server.register_exec(exec_request("sizes", "2", tty=True))
    upgraded = await spdy_upgrade(url)
    assert upgraded.session is not None
    try:
        streams = await open_command_streams(
            upgraded.session, stdin=False, stderr=False, resize=True
        )
        assert streams.resize is not None and streams.stdout is not None
        # client-go encodes each size as one JSON document and a newline.
        await streams.resize.write(b'{"Width":80,"Height":24}\n')
        assert await streams.stdout.read() == b"80x24\n"
        await streams.resize.write(b'{"Width":132,')  # split across frames
        await streams.resize.write(b'"Height":43}\n')
        assert await read_all(streams.stdout) == b"132x43\n"
        assert json.loads(await read_all(streams.error))["status"] == "Success"
    finally:
        await upgraded.aclose()


async def test_attach_echoes_stdin(make_server: MakeServer) -> None:
    server, backend = await make_server()
    request = api_pb2.AttachRequest(container_id="c1", stdin=True, stdout=True, stderr=False)
    out, _, status = await spdy_command(
        server.register_attach(request), stdin=b"hello attach", stderr=False
    )
    assert out == b"hello attach"
    assert json.loads(status)["status"] == "Success"
    assert backend.attach_requests == [request]


# ---------------------------------------------------------------- tokens and negotiation


async def test_tokens_are_single_use(make_server: MakeServer) -> None:
    server, _ = await make_server()
    url = server.register_exec(exec_request("echo"))
    await spdy_command(url)
    again = await spdy_upgrade(url)
    assert again.status == 404
    await again.aclose()


async def test_tokens_expire(make_server: MakeServer) -> None:
    clock = FakeClock()
    server, _ = await make_server(clock=clock, token_ttl_s=60)
    fresh = server.register_exec(exec_request("echo", "in time"))
    stale = server.register_exec(exec_request("echo", "too late"))
    clock.now += 59
    out, _, _ = await spdy_command(fresh)
    assert out == b"in time\n"
    clock.now += 2
    answer = await spdy_upgrade(stale)
    assert answer.status == 404
    await answer.aclose()
    assert server.stats().tokens_pending == 0


@pytest.mark.parametrize("path", ["/exec/unknown", "/attach/TOKEN", "/other/TOKEN", "/exec/"])
async def test_unknown_tokens_and_paths_are_404(make_server: MakeServer, path: str) -> None:
    server, _ = await make_server()
    token = server.register_exec(exec_request("echo")).rsplit("/", 1)[1]
    answer = await spdy_upgrade(server.base_url + path.replace("TOKEN", token))
    assert answer.status == 404
    await answer.aclose()


async def test_negotiation_answers(make_server: MakeServer) -> None:
    server, _ = await make_server()

    async def answer(**kwargs: Any) -> tuple[int, dict[str, str], bytes]:
        upgraded = await spdy_upgrade(server.register_exec(exec_request("echo")), **kwargs)
        await upgraded.aclose()
        return upgraded.status, upgraded.headers, upgraded.body

    status, _, body = await answer(protocols=[])
    assert status == 400 and b"X-Stream-Protocol-Version is required" in body
    status, headers, _ = await answer(protocols=["v9.channel.k8s.io"])
    assert status == 403 and headers["x-accepted-stream-protocol-versions"] == "v4.channel.k8s.io"
    status, _, body = await answer(upgrade=False)
    assert status == 400 and b"missing upgrade headers" in body
    status, _, _ = await answer(method="PUT")
    assert status == 405
    # The client's preference wins among the versions both know.
    status, headers, _ = await answer(protocols=["v3.channel.k8s.io", "v4.channel.k8s.io"])
    assert status == 101 and headers["x-stream-protocol-version"] == "v3.channel.k8s.io"
    assert server.stats().rejected == {400: 2, 403: 1, 405: 1}


async def test_request_validation() -> None:
    server = StreamServer(backend=FakeBackend())
    await server.start()
    try:
        with pytest.raises(InvalidArgument, match="tty and stderr"):
            server.register_exec(
                api_pb2.ExecRequest(container_id="c", cmd=["x"], tty=True, stderr=True)
            )
        with pytest.raises(InvalidArgument, match="one of stdin"):
            server.register_attach(api_pb2.AttachRequest(container_id="c"))
        with pytest.raises(InvalidArgument, match="container_id"):
            server.register_exec(api_pb2.ExecRequest(cmd=["x"], stdout=True))
        with pytest.raises(InvalidArgument, match="pod_sandbox_id"):
            server.register_portforward(api_pb2.PortForwardRequest())
    finally:
        await server.stop()


async def test_pending_tokens_are_bounded(make_server: MakeServer) -> None:
    server, _ = await make_server(max_pending_tokens=2)
    server.register_exec(exec_request("echo"))
    server.register_exec(exec_request("echo"))
    with pytest.raises(TooManyPendingRequests):
        server.register_exec(exec_request("echo"))


# ---------------------------------------------------------------- limits, timeouts, cancellation


async def _running_sleep(server: StreamServer, backend: FakeBackend) -> Any:
    upgraded = await spdy_upgrade(server.register_exec(exec_request("sleep", "30")))
    assert upgraded.session is not None
    await open_command_streams(upgraded.session, stdin=False)
    await asyncio.wait_for(backend.started.wait(), 3)
    return upgraded


async def test_concurrent_streams_are_bounded(make_server: MakeServer) -> None:
    server, backend = await make_server(max_concurrent_streams=1)
    running = await _running_sleep(server, backend)
    url = server.register_exec(exec_request("echo", "later"))
    refused = await spdy_upgrade(url)
    assert refused.status == 429 and refused.headers["retry-after"] == "1"
    await refused.aclose()
    await running.aclose()
    await wait_for(lambda: server.stats().sessions_open == 0)
    out, _, _ = await spdy_command(url)  # the token survived the refusal
    assert out == b"later\n"


async def test_client_disconnect_cancels_the_backend(make_server: MakeServer) -> None:
    server, backend = await make_server()
    running = await _running_sleep(server, backend)
    running.session.abort()
    await wait_for(lambda: backend.cancelled == ["sleep"])
    await wait_for(lambda: server.stats().outcomes == {"exec:client_gone": 1})


async def test_idle_connections_are_closed(make_server: MakeServer) -> None:
    server, backend = await make_server(idle_timeout_s=0.3)
    running = await _running_sleep(server, backend)
    await asyncio.wait_for(running.session.wait_closed(), 3)
    await wait_for(lambda: backend.cancelled == ["sleep"])
    await running.aclose()


async def test_client_that_opens_too_few_streams_times_out(make_server: MakeServer) -> None:
    server, backend = await make_server(stream_creation_timeout_s=0.3)
    upgraded = await spdy_upgrade(server.register_exec(exec_request("echo")))
    assert upgraded.session is not None
    upgraded.session.open_stream({"streamType": "error"})
    await asyncio.wait_for(upgraded.session.wait_closed(), 3)
    await wait_for(lambda: server.stats().outcomes == {"exec:stream_creation_timeout": 1})
    assert backend.exec_requests == []
    await upgraded.aclose()


async def test_slow_request_head_times_out(make_server: MakeServer) -> None:
    server, _ = await make_server(request_head_timeout_s=0.2)
    port = int(server.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /exec/x HTTP/1.1\r\n")
    answer = await asyncio.wait_for(reader.read(), 3)
    assert answer.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_stop_cancels_running_sessions() -> None:
    backend = FakeBackend()
    server = StreamServer(backend=backend)
    await server.start()
    running = await _running_sleep(server, backend)
    await asyncio.wait_for(server.stop(), 5)
    assert backend.cancelled == ["sleep"]
    await running.aclose()


async def test_tls_with_a_generated_certificate(make_server: MakeServer) -> None:
    server, _ = await make_server(tls=True)
    assert server.base_url.startswith("https://127.0.0.1:")
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    port = int(server.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    writer.write(b"GET /exec/nope HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 404")
    certificate = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    assert certificate
    writer.close()


# ---------------------------------------------------------------- port-forward over SPDY


async def _forward(session: Any, port: int, request_id: int, payload: bytes) -> tuple[bytes, bytes]:
    headers = {"streamType": "error", "port": str(port), "requestID": str(request_id)}
    error = session.open_stream(headers)
    await error.wait_reply()
    await error.close_write()
    data = session.open_stream({**headers, "streamType": "data"})
    await data.wait_reply()

    async def send() -> None:
        await data.write(payload)
        await data.close_write()

    sending = asyncio.create_task(send())
    received = await read_all(data)
    await sending
    return received, await read_all(error)


async def test_spdy_port_forward_many_connections_and_a_refused_one(
    make_server: MakeServer,
) -> None:
    server, backend = await make_server()
    echo, echo_port = await echo_server()
    try:
        url = server.register_portforward(
            api_pb2.PortForwardRequest(pod_sandbox_id="pod1", port=[echo_port])
        )
        upgraded = await spdy_upgrade(url, protocols=["portforward.k8s.io"])
        assert upgraded.status == 101 and upgraded.session is not None
        session = upgraded.session
        payloads = [pattern(512 * 1024 + i, i) for i in range(8)]
        results = await asyncio.wait_for(
            asyncio.gather(*(_forward(session, echo_port, i, p) for i, p in enumerate(payloads))),
            20,
        )
        assert [r[0] for r in results] == payloads
        assert all(r[1] == b"" for r in results)
        # A refused port is reported on its own error stream; the session stays usable.
        refused_port = free_port()
        received, error = await _forward(session, refused_port, 100, b"")
        assert received == b""
        assert error.startswith(f"error forwarding port {refused_port} to pod pod1".encode())
        again, _ = await _forward(session, echo_port, 101, b"still works")
        assert again == b"still works"
        assert ("pod1", refused_port) in backend.connects
        await upgraded.aclose()
        await wait_for(lambda: server.stats().sessions_open == 0)
        assert server.stats().portforward_connections == {"done": 9, "refused": 1}
    finally:
        echo.close()


async def test_spdy_port_forward_refuses_streams_without_a_port(make_server: MakeServer) -> None:
    server, _ = await make_server()
    url = server.register_portforward(api_pb2.PortForwardRequest(pod_sandbox_id="pod1"))
    upgraded = await spdy_upgrade(url, protocols=["portforward.k8s.io"])
    assert upgraded.session is not None
    stream = upgraded.session.open_stream({"streamType": "data", "requestID": "1"})
    with pytest.raises(StreamClosedError):
        await asyncio.wait_for(stream.wait_reply(), 3)
    await upgraded.aclose()


async def test_spdy_port_forward_pair_timeout(make_server: MakeServer) -> None:
    server, _ = await make_server(stream_creation_timeout_s=0.2)
    url = server.register_portforward(api_pb2.PortForwardRequest(pod_sandbox_id="pod1"))
    upgraded = await spdy_upgrade(url, protocols=["portforward.k8s.io"])
    assert upgraded.session is not None
    error = upgraded.session.open_stream({"streamType": "error", "port": "80", "requestID": "1"})
    await error.wait_reply()
    assert await asyncio.wait_for(read_all(error), 3) == b"timed out waiting for streams"
    await upgraded.aclose()


# ---------------------------------------------------------------- WebSocket


def ws_url(url: str) -> str:
    return "ws" + url.removeprefix("http")


async def _ws_messages(ws: Any) -> list[bytes | str]:
    messages: list[bytes | str] = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(5):
            while True:
                messages.append(await ws.recv())
    return messages


async def test_websocket_exec_v4(make_server: MakeServer) -> None:
    server, _ = await make_server()
    url = server.register_exec(exec_request("exit", "3"))
    async with ws_connect(ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "v4.channel.k8s.io"
        messages = await _ws_messages(ws)
    assert messages[0] == b"\x01"  # the empty "connection established" message on stdout
    status = json.loads(messages[-1][1:])
    assert messages[-1][:1] == b"\x03"
    assert status["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


async def test_websocket_v5_close_signal_ends_stdin(make_server: MakeServer) -> None:
    server, _ = await make_server()
    url = server.register_exec(exec_request("cat", stdin=True))
    async with ws_connect(
        ws_url(url), subprotocols=["v5.channel.k8s.io", "v4.channel.k8s.io"]
    ) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "v5.channel.k8s.io"
        await ws.send(b"\x00hello ")
        await ws.send(b"\x00websocket")
        await ws.send(b"\xff\x00")  # stdin closed
        messages = await _ws_messages(ws)
    stdout = b"".join(m[1:] for m in messages if isinstance(m, bytes) and m[:1] == b"\x01")
    assert stdout == b"hello websocket"
    assert b"\xff\x01" in messages and b"\xff\x03" in messages  # our channels' close signals
    assert json.loads(next(m[1:] for m in messages if m[:1] == b"\x03" and len(m) > 2)) == {
        "metadata": {},
        "status": "Success",
    }


async def test_websocket_base64_protocol(make_server: MakeServer) -> None:
    server, _ = await make_server()
    url = server.register_exec(exec_request("echo", "b64"))
    async with ws_connect(ws_url(url), subprotocols=["base64.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        messages = await _ws_messages(ws)
    assert messages[0] == "1"
    assert base64.b64decode(str(messages[1])[1:]) == b"b64\n"
    assert all(isinstance(m, str) for m in messages)


async def test_websocket_without_subprotocol_and_with_an_unknown_one(
    make_server: MakeServer,
) -> None:
    server, _ = await make_server()
    async with ws_connect(ws_url(server.register_exec(exec_request("echo", "plain")))) as ws:
        messages = await _ws_messages(ws)
    assert b"\x01plain\n" in messages
    with pytest.raises(InvalidStatus) as refused:
        async with ws_connect(
            ws_url(server.register_exec(exec_request("echo"))),
            subprotocols=["nope.k8s.io"],  # type: ignore[list-item]
        ):
            pass
    assert refused.value.response.status_code == 403


async def test_websocket_port_forward(make_server: MakeServer) -> None:
    server, _ = await make_server()
    echo, echo_port = await echo_server()
    refused_port = free_port()
    try:
        url = server.register_portforward(
            api_pb2.PortForwardRequest(pod_sandbox_id="pod1", port=[echo_port, refused_port])
        )
        async with ws_connect(ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:  # type: ignore[list-item]
            first = {await ws.recv() for _ in range(4)}
            assert first >= {
                b"\x00" + struct.pack("<H", echo_port),
                b"\x01" + struct.pack("<H", echo_port),
                b"\x02" + struct.pack("<H", refused_port),
                b"\x03" + struct.pack("<H", refused_port),
            }
            payload = pattern(300_000, 9)
            await ws.send(b"\x00" + payload)
            echoed = bytearray()
            errors = bytearray()
            async with asyncio.timeout(5):
                while len(echoed) < len(payload):
                    message = await ws.recv()
                    assert isinstance(message, bytes)
                    if message[:1] == b"\x00":
                        echoed += message[1:]
                    elif message[:1] == b"\x03":
                        errors += message[1:]
            assert echoed == payload
            if not errors:
                errors += (await ws.recv())[1:]  # type: ignore[index]
            assert errors.startswith(f"error forwarding port {refused_port}".encode())
    finally:
        echo.close()


async def test_oversize_request_head_is_431(make_server: MakeServer) -> None:
    server, _ = await make_server(max_request_head_bytes=1024)
    port = int(server.base_url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /exec/x HTTP/1.1\r\nX-Padding: " + b"a" * 4096 + b"\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 3)
    assert answer.startswith(b"HTTP/1.1 431")
    writer.close()


async def test_websocket_without_tty_drops_resize_messages(make_server: MakeServer) -> None:
    server, _ = await make_server()
    url = server.register_exec(exec_request("cat", stdin=True))
    async with ws_connect(ws_url(url), subprotocols=["v5.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        for _ in range(100):
            await ws.send(b"\x04" + b"x" * 10_000)  # ~1 MB on a channel nobody reads
        await ws.send(b"\x00done")
        await ws.send(b"\xff\x00")
        messages = await _ws_messages(ws)
    assert b"\x01done" in messages


async def test_stdin_left_unread_does_not_hold_up_the_end(make_server: MakeServer) -> None:
    # A client like spdystream keeps sending stdin past our window after the process exited;
    # the server must still notice the client hanging up, not sit out its linger.
    server, _ = await make_server(close_linger_s=5)
    url = server.register_exec(exec_request("echo", "bye", stdin=True))
    client = SpdyOptions(peer_flow_control=FlowControlPolicy.IGNORE, receive_window=DEFAULT_WINDOW)
    upgraded = await spdy_upgrade(url, options=client)
    assert upgraded.session is not None
    streams = await open_command_streams(upgraded.session, stdin=True)
    assert streams.stdin is not None
    flooding = asyncio.create_task(streams.stdin.write(b"x" * (20 * 1024 * 1024)))
    await asyncio.sleep(0.5)  # the server's stdin buffer is full and its reading paused
    assert await read_all(streams.stdout) == b"bye\n"
    assert json.loads(await read_all(streams.error))["status"] == "Success"
    flooding.cancel()
    await asyncio.gather(flooding, return_exceptions=True)
    # Hang up gracefully, like client-go: our unsent stdin is flushed first, then FIN.
    started = asyncio.get_running_loop().time()
    upgraded.writer.close()
    await wait_for(lambda: server.stats().sessions_open == 0, timeout=4)
    assert asyncio.get_running_loop().time() - started < 3
    await upgraded.aclose()


async def test_a_finished_pair_cannot_stall_the_other_pairs(make_server: MakeServer) -> None:
    # The pod side hangs up at once while the client (ignoring windows, like spdystream)
    # keeps sending on that pair: the session must go on serving new pairs.
    async def hang_up(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    closer = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    closer_port = closer.sockets[0].getsockname()[1]
    echo, echo_port = await echo_server()
    server, _ = await make_server()
    url = server.register_portforward(api_pb2.PortForwardRequest(pod_sandbox_id="pod1"))
    client = SpdyOptions(peer_flow_control=FlowControlPolicy.IGNORE, receive_window=DEFAULT_WINDOW)
    upgraded = await spdy_upgrade(url, protocols=["portforward.k8s.io"], options=client)
    assert upgraded.session is not None
    session = upgraded.session
    try:
        headers = {"streamType": "error", "port": str(closer_port), "requestID": "1"}
        error = session.open_stream(headers)
        await error.wait_reply()
        data = session.open_stream({**headers, "streamType": "data"})
        await data.wait_reply()
        flooding = asyncio.create_task(data.write(b"f" * (30 * 1024 * 1024)))
        await asyncio.sleep(0.5)
        received, _ = await asyncio.wait_for(_forward(session, echo_port, 2, b"next pair"), 5)
        assert received == b"next pair"
        flooding.cancel()
        await asyncio.gather(flooding, return_exceptions=True)
    finally:
        await upgraded.aclose()
        closer.close()
        echo.close()


async def test_websocket_attach(make_server: MakeServer) -> None:
    server, backend = await make_server()
    request = api_pb2.AttachRequest(container_id="c1", stdin=True, stdout=True, stderr=False)
    async with ws_connect(
        ws_url(server.register_attach(request)), subprotocols=["v5.channel.k8s.io"]
    ) as ws:  # type: ignore[list-item]
        await ws.send(b"\x00typed into attach")
        await ws.send(b"\xff\x00")
        messages = await _ws_messages(ws)
    assert b"\x01typed into attach" in messages
    assert b'\x03{"metadata":{},"status":"Success"}' in messages
    assert backend.attach_requests == [request]


async def test_websocket_client_disconnect_cancels_the_backend(make_server: MakeServer) -> None:
    server, backend = await make_server()
    url = server.register_exec(exec_request("sleep", "30"))
    async with ws_connect(ws_url(url), subprotocols=["v4.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        await asyncio.wait_for(backend.started.wait(), 3)
        ws.transport.abort()
    await wait_for(lambda: backend.cancelled == ["sleep"])
