"""Issue 2: the daemon on a real managed containerd, its socket, config and CLI."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from tests.integration.helpers import (
    CRI,
    PYCRI,
    REPO,
    Daemon,
    eventually,
    import_test_images,
)


async def test_version(cri: CRI) -> None:
    resp = await cri.runtime.Version(api_pb2.VersionRequest())
    assert resp.version == "0.1.0"
    assert resp.runtime_name == "pycri"
    assert resp.runtime_version == "0.1.0"
    assert resp.runtime_api_version == "v1"


async def test_status_reports_runtime_ready_and_network_not_ready(cri: CRI) -> None:
    resp = await cri.runtime.Status(api_pb2.StatusRequest(verbose=True))
    conditions = {c.type: c for c in resp.status.conditions}
    assert conditions["RuntimeReady"].status is True
    assert "config" in resp.info


def test_socket_mode_is_0660(daemon: Daemon) -> None:
    assert stat.S_IMODE(os.stat(daemon.socket).st_mode) == 0o660


async def test_managed_containerd_restarted_after_kill(make_daemon: type[Daemon]) -> None:
    d = make_daemon()
    d.start()
    cri = CRI(d.socket)
    try:
        pid = int((d.state / "containerd" / "containerd.pid").read_text())
        os.kill(pid, signal.SIGKILL)

        async def runtime_ready(want: bool) -> bool:
            resp = await cri.runtime.Status(api_pb2.StatusRequest())
            ready = {c.type: c.status for c in resp.status.conditions}["RuntimeReady"]
            return ready is want

        # Down first (a few probe periods), then back up once the supervisor restarted it.
        await eventually(lambda: runtime_ready(False), timeout=5)
        await eventually(lambda: runtime_ready(True), timeout=20)
        new_pid = int((d.state / "containerd" / "containerd.pid").read_text())
        assert new_pid != pid
        assert "managed containerd died; restarting" in d.log()
    finally:
        await cri.close()


def test_live_socket_is_refused(make_daemon: type[Daemon]) -> None:
    first = make_daemon()
    first.start()
    second = make_daemon(extra_args=["--socket", str(first.socket)])
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=60) != 0
    assert "another server is listening" in second.log()
    first.wait_ready(timeout=5)  # the first one is undisturbed


def test_second_daemon_on_same_state_dir_is_refused(make_daemon: type[Daemon]) -> None:
    first = make_daemon()
    first.start()
    containerd_pid = (first.state / "containerd" / "containerd.pid").read_text()
    second = make_daemon(extra_args=["--state", str(first.state), "--root", str(first.root)])
    second.start(wait=False)
    assert second.proc is not None
    assert second.proc.wait(timeout=60) != 0
    assert "another pycri daemon is running" in second.log()
    first.wait_ready(timeout=5)
    # the refused daemon neither adopted nor stopped the first one's containerd
    assert (first.state / "containerd" / "containerd.pid").read_text() == containerd_pid
    assert "died" not in first.log()


def test_stale_socket_is_replaced(make_daemon: type[Daemon]) -> None:
    d = make_daemon()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(d.socket))
    stale.close()  # the file stays, nothing listens
    d.start()
    assert stat.S_ISSOCK(os.stat(d.socket).st_mode)


def test_sigterm_stops_daemon_and_its_containerd(make_daemon: type[Daemon]) -> None:
    d = make_daemon()
    d.start()
    pid = int((d.state / "containerd" / "containerd.pid").read_text())
    assert d.stop(signal.SIGTERM) == 0
    assert not d.socket.exists()
    with pytest.raises(ProcessLookupError):
        for _ in range(100):
            os.kill(pid, 0)
            subprocess.run(["sleep", "0.1"], check=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("sockett = '/x'\n", "unknown config key 'sockett'"),
        ("log_format = 'xml'\n", "config key 'log_format'"),
        ("enable_fault_injection = 'yes'\n", "config key 'enable_fault_injection'"),
        ("[registry]\nmirrorz = {}\n", "unknown config key 'registry.mirrorz'"),
        ("socket = \n", "config file"),
    ],
)
def test_config_errors_refused_at_start(tmp_path, content: str, message: str) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "config.toml"
    cfg.write_text(content)
    done = subprocess.run(
        [str(PYCRI), "serve", "--config", str(cfg), "--socket", str(tmp_path / "s.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert message in done.stderr


def test_config_default_roundtrips(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = subprocess.run([str(PYCRI), "config", "default"], capture_output=True, text=True)
    assert out.returncode == 0
    cfg = tmp_path / "config.toml"
    cfg.write_text(out.stdout)
    from pycri.config import Config, load

    assert load(cfg) == Config()


def test_check_reports_tools() -> None:
    out = subprocess.run([str(PYCRI), "check"], capture_output=True, text=True, timeout=30)
    assert "runc:" in out.stdout
    assert "CNI plugin bridge" in out.stdout
    assert out.returncode in (0, 1)


def test_readme_run_command_serves_version_and_status(make_daemon: type[Daemon]) -> None:
    """The README's run command (set-up included) brings up a daemon that answers."""
    from tests.integration.helpers import REPO

    d = make_daemon()
    log = d.log_path.open("ab")
    d.proc = subprocess.Popen(
        [str(REPO / "scripts" / "run.sh"), *d.args()[2:]], stdout=log, stderr=log, cwd=REPO
    )
    log.close()
    d.wait_ready(timeout=120)
    import grpc as sync_grpc
    from cri_api.v1 import api_pb2_grpc

    with sync_grpc.insecure_channel(f"unix://{d.socket}") as channel:
        stub = api_pb2_grpc.RuntimeServiceStub(channel)
        assert stub.Version(api_pb2.VersionRequest(), timeout=5).runtime_name == "pycri"
        status = stub.Status(api_pb2.StatusRequest(), timeout=5)
        ready = {c.type: c.status for c in status.status.conditions}
        assert ready["RuntimeReady"] is True
    assert d.stop() == 0


async def test_readme_tour_runs_as_written(daemon: Daemon, crictl: Path, tmp_path: Path) -> None:
    """The README's tour, run verbatim with real crictl (only the socket and dirs differ)."""
    await import_test_images(daemon.containerd_socket)
    readme = (REPO / "README.md").read_text()
    block = re.search(r"<!-- tour:start -->\n```sh\n(.*?)```\n<!-- tour:end -->", readme, re.S)
    assert block is not None, "the README lost its tour markers"
    script = block.group(1)
    assert "/run/pycri/pycri.sock" in script and "/tmp/pycri-tour" in script
    script = script.replace("/run/pycri/pycri.sock", str(daemon.socket))
    script = script.replace("/tmp/pycri-tour", str(tmp_path / "logs"))
    env = {**os.environ, "PATH": f"{crictl.parent}:{os.environ['PATH']}"}
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-euo",
        "pipefail",
        "-c",
        script,
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out = (await asyncio.wait_for(proc.communicate(), timeout=120))[0].decode()
    assert proc.returncode == 0, out
    assert "tick 1\ntick 2\ntick 3\n" in out
    assert '"state": "CONTAINER_EXITED"' in out and '"exitCode": 3' in out
    assert '"reason": "Error"' in out
    assert re.search(r"^\S+ stdout F tick 3$", out, re.M), out  # the CRI log file's record
    assert "Removed sandbox" in out
