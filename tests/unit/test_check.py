"""``pycri check``: findings an operator acts on, from faked node layouts."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pycri import check
from pycri.check import Level
from pycri.config import Config
from pycri.oci.criu import CriuStatus


@pytest.fixture
def listening(tmp_path: Path) -> Iterator[Path]:
    """A unix socket that accepts connections, as a live daemon's would."""
    path = tmp_path / "live.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(4)
    try:
        yield path
    finally:
        server.close()


def _cgroup_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cgroup"
    root.mkdir()
    monkeypatch.setattr(check, "CGROUP_ROOT", root)
    return root


def test_cgroup_v2_names_missing_controllers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _cgroup_root(tmp_path, monkeypatch)
    (root / "cgroup.controllers").write_text("cpuset cpu io pids\n")
    finding = check.cgroup_check()
    assert finding.level is Level.MISSING
    assert "v2" in finding.what and "memory" in finding.what
    assert "cgroup_enable=memory" in finding.fix


def test_cgroup_v1_with_every_controller(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _cgroup_root(tmp_path, monkeypatch)
    for controller in ("cpu", "memory", "pids"):
        (root / controller).mkdir()
    finding = check.cgroup_check()
    assert finding.level is Level.OK
    assert "v1" in finding.what and "cgroupfs" in finding.what


def test_no_cgroups_mounted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _cgroup_root(tmp_path, monkeypatch)
    assert check.cgroup_check().level is Level.MISSING


def test_system_containerd_is_a_note_for_a_managed_one(
    listening: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(check, "SYSTEM_CONTAINERD_SOCKET", listening)
    monkeypatch.setattr(check.shutil, "which", lambda name: f"/usr/bin/{name}")
    found = check.containerd_checks(Config())
    notes = [f for f in found if f.level is Level.NOTE]
    assert len(notes) == 1 and "never uses it" in notes[0].what
    assert all(f.ok for f in found)


def test_given_containerd_that_is_absent_or_the_system_one(
    tmp_path: Path, listening: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = check.containerd_checks(Config(containerd_address=str(tmp_path / "no.sock")))
    assert [f.level for f in gone] == [Level.MISSING]
    assert "does not exist" in gone[0].what
    monkeypatch.setattr(check, "SYSTEM_CONTAINERD_SOCKET", listening)
    system = check.containerd_checks(Config(containerd_address=str(listening)))
    assert [f.level for f in system] == [Level.OK, Level.NOTE]
    assert "io.containerd.grpc.v1.cri" in system[1].fix


def test_missing_binary_says_which_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(check.shutil, "which", lambda name: None)
    finding = check._binary("runc", "runc")
    assert finding.level is Level.MISSING and finding.fix == "apt-get install runc"


def test_cni_without_config_is_a_note(tmp_path: Path) -> None:
    config = Config(cni_conf_dir=str(tmp_path / "net.d"), cni_bin_dirs=[str(tmp_path)])
    found = check.cni_checks(config)
    assert [f.level for f in found[:4]] == [Level.MISSING] * 4  # no plugins in tmp_path
    assert "containernetworking-plugins" in found[0].fix
    assert found[-1].level is Level.NOTE and "NetworkReady=false" in found[-1].what


def test_report_counts_only_missing() -> None:
    text, good = check.report([check.ok("a"), check.note("b", "do c")])
    assert good and "-> do c" in text and text.endswith("everything pycri needs is here")
    text, good = check.report([check.missing("x", "apt-get install y")])
    assert not good and "MISSING  x" in text and text.endswith("1 thing(s) missing")


def test_runtime_handlers_and_criu_are_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def no_criu() -> CriuStatus:
        return CriuStatus(usable=False, problem="criu is not installed")

    monkeypatch.setattr(check, "criu_status", no_criu)
    config = Config(root=str(tmp_path / "r"), state=str(tmp_path / "s"))
    config.runtimes["gone"] = type(config.runtimes["runc"])(binary="/nonexistent/oci-gone")
    findings = check.runtime_checks(config)
    (gone,) = [f for f in findings if f.what.startswith("runtime handler gone ")]
    assert "/nonexistent/oci-gone" in gone.what and gone.level is Level.NOTE
    assert "pods asking for it are refused" in gone.fix
    (criu,) = [f for f in findings if f.what.startswith("checkpoints refused")]
    assert criu.fix == "apt-get install criu"
    config.default_runtime_handler = "gone"
    (missing,) = [f for f in check.runtime_checks(config) if "oci-gone" in f.what]
    assert missing.level is Level.MISSING
