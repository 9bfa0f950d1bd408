"""Issue 13: Exec, Attach and PortForward with real clients on real containers.

crictl v1.26.1 (SPDY/3.1, as kubelet 1.26 proxies it) drives exec (with and without -i, -t
on a pseudo-terminal, exit codes, large output), attach and port-forward; the ``websockets``
library is the WebSocket client (newer kubectl). The exec processes' fate is checked from
the host side (the container's pids in containerd), so these hold where execs see the host's
/proc too."""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import pty
import secrets
import select
import signal
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cri_api.v1 import api_pb2, api_pb2_grpc
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from pycri.containerd.client import ContainerdClient
from pycri.testing.stream_client import (
    crictl_port_forward,
    echo_through,
    free_port,
    read_all,
    spdy_upgrade,
)
from tests.integration.helpers import CRI, Daemon, eventually, run_crictl
from tests.integration.pods import container_config, pod_config, start, wait_exited

ECHO_PORT = 8080
Target = tuple[str, api_pb2.PodSandboxConfig, str]


@pytest.fixture(scope="module")
async def target(
    cri: CRI, images_loaded: None, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Target]:
    """A pod whose container runs a TCP echo server on :8080 and otherwise sleeps."""
    config = pod_config("streaming", log_dir=tmp_path_factory.mktemp("logs"))
    pod_id = (
        await cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    ).pod_sandbox_id
    cid = await start(
        cri, pod_id, config, container_config("echo", f"nc -ll -p {ECHO_PORT} -e cat & sleep 3600")
    )
    yield pod_id, config, cid
    await cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
    await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


async def pids(ctd: ContainerdClient, cid: str) -> set[int]:
    """The processes in the container's cgroup (init, what it started, and any exec's)."""
    return set(await ctd.tasks.pids(cid))


async def no_exec_left(ctd: ContainerdClient, cid: str, baseline: set[int]) -> bool:
    return await pids(ctd, cid) <= baseline


def numbers(count: int) -> bytes:
    return b"".join(b"%d\n" % i for i in range(1, count + 1))


# ------------------------------------------------------------------ exec with crictl


async def test_crictl_exec_output_exit_codes_and_stdin(
    crictl: Path, daemon: Daemon, target: Target
) -> None:
    _, _, cid = target
    hello = await run_crictl(crictl, daemon, "exec", cid, "echo", "hello from exec")
    assert (hello.returncode, hello.stdout) == (0, b"hello from exec\n"), hello.stderr
    both = await run_crictl(crictl, daemon, "exec", cid, "sh", "-c", "echo out; echo err >&2")
    assert (both.stdout, both.stderr) == (b"out\n", b"err\n")
    failed = await run_crictl(crictl, daemon, "exec", cid, "sh", "-c", "exit 3")
    # crictl 1.26 prints the code and exits 1 itself
    assert failed.returncode != 0 and b"exit code 3" in failed.stderr
    data = secrets.token_bytes(6 << 20)
    counted = await run_crictl(crictl, daemon, "exec", "-i", cid, "md5sum", stdin=data)
    assert counted.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


async def test_crictl_exec_large_output(crictl: Path, daemon: Daemon, target: Target) -> None:
    _, _, cid = target
    result = await run_crictl(crictl, daemon, "exec", cid, "seq", "1", "2000000")
    assert result.returncode == 0, result.stderr
    expected = numbers(2_000_000)  # ~14.9 MB
    assert len(result.stdout) == len(expected)
    assert hashlib.sha256(result.stdout).digest() == hashlib.sha256(expected).digest()


def _drive_tty(
    argv: list[str], keystrokes: list[tuple[float, bytes | tuple[int, int]]]
) -> tuple[int, bytes]:
    """Run ``argv`` on a new pseudo-terminal; send keystrokes (or resize to (rows, cols))
    after the given delays; return its exit status and everything it printed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    output = bytearray()

    def read_for(seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                try:
                    output.extend(os.read(master, 65536))
                except OSError:
                    return

    try:
        for delay, action in keystrokes:
            read_for(delay)
            if isinstance(action, tuple):
                rows, cols = action
                fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.kill(proc.pid, signal.SIGWINCH)
            else:
                os.write(master, action)
        read_for(2)
        return proc.wait(10), bytes(output)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)


async def test_crictl_exec_with_a_terminal(crictl: Path, daemon: Daemon, target: Target) -> None:
    _, _, cid = target
    argv = [
        str(crictl),
        "--runtime-endpoint",
        f"unix://{daemon.socket}",
        "exec",
        "-it",
        cid,
        "sh",
    ]
    code, output = await asyncio.to_thread(
        _drive_tty,
        argv,
        [
            (1.0, b"tty; stty size; echo $((6*7))\r"),
            (1.0, (40, 120)),  # the client's window changes: ResizePty
            (0.5, b"stty size; exit 5\r"),
        ],
    )
    text = output.decode(errors="replace")
    assert "/dev/pts/" in text and "30 100" in text and "42" in text, text
    assert "40 120" in text, text
    assert code != 0 and "exit code 5" in text, text


async def test_an_exec_whose_client_vanishes_is_killed_and_deleted(
    crictl: Path, daemon: Daemon, target: Target, ctd: ContainerdClient
) -> None:
    _, _, cid = target
    baseline = await pids(ctd, cid)
    endpoint = f"unix://{daemon.socket}"
    proc = await asyncio.create_subprocess_exec(
        str(crictl),
        "--runtime-endpoint",
        endpoint,
        "exec",
        cid,
        "sleep",
        "77",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )

    async def sleeping() -> bool:
        return bool(await pids(ctd, cid) - baseline)

    await eventually(sleeping, timeout=10)
    proc.kill()  # the client is gone mid-stream
    await proc.wait()
    await eventually(lambda: no_exec_left(ctd, cid, baseline), timeout=15)


async def test_exec_sync_whose_caller_gives_up_kills_its_process(
    cri: CRI, target: Target, ctd: ContainerdClient
) -> None:
    _, _, cid = target
    baseline = await pids(ctd, cid)
    for timeout in (60, 0):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await cri.runtime.ExecSync(
                # the issue's ``sh -c "sleep 77"``: busybox's sh execs sleep in place, so the
                # exec's own process is what must be killed and deleted
                api_pb2.ExecSyncRequest(container_id=cid, cmd=["sleep", "77"], timeout=timeout),
                timeout=1,
            )
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: no_exec_left(ctd, cid, baseline), timeout=15)


# ------------------------------------------------------------------ attach


async def test_crictl_attach_with_stdin_once(
    crictl: Path, daemon: Daemon, cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    config = container_config("reader", 'while read l; do echo "got $l"; done; echo bye')
    config.stdin = True
    config.stdin_once = True
    cid = await start(cri, pod_id, pod_cfg, config)
    result = await run_crictl(crictl, daemon, "attach", "-i", cid, stdin=b"one\ntwo\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"got one\ngot two\nbye\n"
    st = await wait_exited(cri, cid)  # stdin_once: the attach's EOF was the container's
    assert st.exit_code == 0
    log = Path(st.log_path).read_text()
    assert "stdout F got one" in log and "stdout F bye" in log  # the CRI log is unchanged


async def test_two_attachers_see_the_same_output(
    crictl: Path, daemon: Daemon, cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    cid = await start(
        cri,
        pod_id,
        pod_cfg,
        container_config("ticker", "sleep 2; for i in 1 2 3; do echo tick $i; sleep 0.2; done"),
    )
    first, second = await asyncio.gather(
        run_crictl(crictl, daemon, "attach", cid), run_crictl(crictl, daemon, "attach", cid)
    )
    for result in (first, second):
        assert result.stdout == b"tick 1\ntick 2\ntick 3\n", result.stderr
    st = await wait_exited(cri, cid)
    assert Path(st.log_path).read_text().count("stdout F tick") == 3


# ------------------------------------------------------------------ port-forward


async def test_crictl_port_forward_both_ways(crictl: Path, daemon: Daemon, target: Target) -> None:
    pod_id, _, _ = target
    endpoint = f"unix://{daemon.socket}"
    async with crictl_port_forward(
        crictl, endpoint=endpoint, pod_id=pod_id, port=ECHO_PORT
    ) as local:
        for size in (1 << 20, 24 << 20):  # several connections, a large one among them
            data = secrets.token_bytes(size)
            echoed = await asyncio.to_thread(echo_through, local, data)
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(data).digest()


# ------------------------------------------------------------------ WebSocket clients


def _ws(url: str) -> str:
    return "ws" + url.removeprefix("http")


async def _ws_messages(ws: object) -> list[bytes]:
    messages: list[bytes] = []
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(20):
            while True:
                message = await ws.recv()  # type: ignore[attr-defined]
                assert isinstance(message, bytes)
                messages.append(message)
    return messages


def _channel(messages: list[bytes], channel: int) -> bytes:
    return b"".join(m[1:] for m in messages if m[:1] == bytes([channel]))


async def test_websocket_exec_attach_and_port_forward(
    cri: CRI, target: Target, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, _, cid = target
    url = (
        await cri.runtime.Exec(
            api_pb2.ExecRequest(
                container_id=cid[:12], cmd=["sh", "-c", "cat; exit 4"], stdin=True, stdout=True
            )
        )
    ).url
    async with ws_connect(_ws(url), subprotocols=["v5.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        await ws.send(b"\x00over websocket")
        await ws.send(b"\xff\x00")  # v5: stdin closed
        messages = await _ws_messages(ws)
    assert _channel(messages, 1) == b"over websocket"
    exit_status = json.loads(_channel(messages, 3))
    assert exit_status["details"]["causes"] == [{"reason": "ExitCode", "message": "4"}]

    own_pod, own_cfg = pod
    talker = await start(
        cri, own_pod, own_cfg, container_config("talker", "sleep 1; echo attached-out")
    )
    url = (await cri.runtime.Attach(api_pb2.AttachRequest(container_id=talker, stdout=True))).url
    async with ws_connect(_ws(url), subprotocols=["v4.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        messages = await _ws_messages(ws)
    assert _channel(messages, 1) == b"attached-out\n"

    url = (
        await cri.runtime.PortForward(
            api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=[ECHO_PORT])
        )
    ).url
    payload = secrets.token_bytes(300_000)
    async with ws_connect(_ws(url), subprotocols=["v4.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        port_header = struct.pack("<H", ECHO_PORT)
        assert {await ws.recv(), await ws.recv()} == {b"\x00" + port_header, b"\x01" + port_header}
        await ws.send(b"\x00" + payload)
        echoed = bytearray()
        async with asyncio.timeout(20):
            while len(echoed) < len(payload):
                message = await ws.recv()
                assert isinstance(message, bytes)
                if message[:1] == b"\x00":
                    echoed += message[1:]
    assert bytes(echoed) == payload


# ------------------------------------------------------------------ refusals


async def _code(call: object) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    return err.value.code()


async def test_bad_streaming_requests_are_refused(
    cri: CRI, target: Target, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    _, _, cid = target
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    rt = cri.runtime
    assert (
        await _code(rt.Exec(api_pb2.ExecRequest(container_id=cid, cmd=[], stdout=True))) == invalid
    )
    assert await _code(rt.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["true"]))) == invalid
    tty_stderr = api_pb2.ExecRequest(
        container_id=cid, cmd=["true"], tty=True, stdout=True, stderr=True
    )
    assert await _code(rt.Exec(tty_stderr)) == invalid
    assert await _code(rt.Attach(api_pb2.AttachRequest(container_id=cid))) == invalid
    own_pod, own_cfg = pod
    done = await start(cri, own_pod, own_cfg, container_config("done", "true"))
    await wait_exited(cri, done)
    not_running = grpc.StatusCode.FAILED_PRECONDITION
    exec_done = api_pb2.ExecRequest(container_id=done, cmd=["true"], stdout=True)
    assert await _code(rt.Exec(exec_done)) == not_running
    assert (
        await _code(rt.Attach(api_pb2.AttachRequest(container_id=done, stdout=True))) == not_running
    )
    gone = api_pb2.PortForwardRequest(pod_sandbox_id="f" * 64, port=[80])
    assert await _code(rt.PortForward(gone)) == grpc.StatusCode.NOT_FOUND
    bad_port = api_pb2.PortForwardRequest(pod_sandbox_id=own_pod, port=[70000])
    assert await _code(rt.PortForward(bad_port)) == invalid


async def test_tokens_are_single_use(cri: CRI, target: Target) -> None:
    _, _, cid = target
    url = (
        await cri.runtime.Exec(api_pb2.ExecRequest(container_id=cid, cmd=["true"], stdout=True))
    ).url
    async with ws_connect(_ws(url), subprotocols=["v4.channel.k8s.io"]) as ws:  # type: ignore[list-item]
        await _ws_messages(ws)
    with pytest.raises(InvalidStatus) as err:
        async with ws_connect(_ws(url), subprotocols=["v4.channel.k8s.io"]):  # type: ignore[list-item]
            pass
    assert err.value.response.status_code == 404
    forged = url.rsplit("/", 1)[0] + "/" + "A" * 8
    with pytest.raises(InvalidStatus) as err:
        async with ws_connect(_ws(forged), subprotocols=["v4.channel.k8s.io"]):  # type: ignore[list-item]
            pass
    assert err.value.response.status_code == 404


async def test_a_refused_port_is_reported_on_its_error_stream(cri: CRI, target: Target) -> None:
    pod_id, _, _ = target
    closed = free_port()  # host port numbers are free in the pod's own netns too
    url = (
        await cri.runtime.PortForward(
            api_pb2.PortForwardRequest(pod_sandbox_id=pod_id, port=[closed, ECHO_PORT])
        )
    ).url
    upgraded = await spdy_upgrade(url, protocols=["portforward.k8s.io"])
    assert upgraded.status == 101 and upgraded.session is not None
    try:
        for request_id, port in enumerate((closed, ECHO_PORT)):
            headers = {"streamType": "error", "port": str(port), "requestID": str(request_id)}
            error = upgraded.session.open_stream(headers)
            await error.wait_reply()
            await error.close_write()
            data = upgraded.session.open_stream({**headers, "streamType": "data"})
            await data.wait_reply()
            await data.write(b"ping")
            await data.close_write()
            echoed, message = await asyncio.wait_for(
                asyncio.gather(read_all(data), read_all(error)), 20
            )
            if port == closed:
                assert echoed == b"" and f"error forwarding port {closed}".encode() in message
            else:  # the same session still forwards
                assert (echoed, message) == (b"ping", b"")
    finally:
        await upgraded.aclose()


async def test_exec_sync_answer_fits_kubelets_limit_and_says_what_it_dropped(
    daemon: Daemon, target: Target
) -> None:
    _, _, cid = target
    # kubelet's CRI client takes messages of up to 16 MiB
    kubelet_like = grpc.aio.insecure_channel(
        f"unix://{daemon.socket}", options=[("grpc.max_receive_message_length", 16 << 20)]
    )
    try:
        resp = await api_pb2_grpc.RuntimeServiceStub(kubelet_like).ExecSync(
            api_pb2.ExecSyncRequest(
                container_id=cid,
                cmd=["sh", "-c", "head -c 17000000 /dev/zero; head -c 1000000 /dev/zero >&2"],
                timeout=60,
            ),
            timeout=90,
        )
    finally:
        await kubelet_like.close()
    assert resp.exit_code == 0
    assert resp.ByteSize() < 16 * 1024 * 1024  # kubelet's max message size
    assert b"[pycri: output over" in resp.stderr and b"bytes of stderr]" in resp.stderr


async def test_exec_sync_refusals_are_typed_around_an_exit(
    cri: CRI, pod: tuple[str, api_pb2.PodSandboxConfig]
) -> None:
    pod_id, pod_cfg = pod
    for cmd in ([""], ["a\0b"]):
        st = await _code(
            cri.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id="x" * 64, cmd=cmd))
        )
        assert st == grpc.StatusCode.NOT_FOUND  # the container first: it does not exist
    cid = await start(cri, pod_id, pod_cfg, container_config("brief", "sleep 0.5"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cri.runtime.ExecSync(api_pb2.ExecSyncRequest(container_id=cid, cmd=[""]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    codes: set[grpc.StatusCode] = set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # ExecSync as the container exits, and just after
        try:
            await cri.runtime.ExecSync(
                api_pb2.ExecSyncRequest(container_id=cid, cmd=["true"], timeout=5)
            )
            codes.add(grpc.StatusCode.OK)
        except grpc.aio.AioRpcError as failed:
            codes.add(failed.code())
            if failed.code() == grpc.StatusCode.FAILED_PRECONDITION:
                break
    assert codes <= {grpc.StatusCode.OK, grpc.StatusCode.FAILED_PRECONDITION}, codes
    assert grpc.StatusCode.FAILED_PRECONDITION in codes
