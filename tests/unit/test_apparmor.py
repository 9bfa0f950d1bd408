"""Unit tests for AppArmor: host detection, the default profile, loading it, CRI field resolution.

The kernel here has no AppArmor, so the enabled paths run against fakes: sysfs files in a temp
dir, a fake loader, and shell scripts standing in for apparmor_parser. When Debian's
apparmor_parser is installed, the default profile's syntax is checked with it (no kernel load).
"""

from __future__ import annotations

import asyncio
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from pycri.errors import FailedPrecondition, Internal, InvalidArgument
from pycri.security.apparmor import (
    DEFAULT_PROFILE_NAME,
    AppArmor,
    AppArmorHost,
    ParserLoader,
    ProfileLoader,
    default_profile_text,
    probe_apparmor,
    profile_is_listed,
    resolve_apparmor,
)
from pycri.security.profiles import ProfileKind, RequestedProfile

RUNTIME_DEFAULT = RequestedProfile(ProfileKind.RUNTIME_DEFAULT)
ENABLED = AppArmorHost(kernel_enabled=True, parser="/sbin/apparmor_parser")
DISABLED = AppArmorHost(kernel_enabled=False, parser="/sbin/apparmor_parser")


def profile(kind: str, ref: str = "") -> api_pb2.SecurityProfile:
    return api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.ProfileType.Value(kind), localhost_ref=ref
    )


def container(**fields: Any) -> api_pb2.LinuxContainerSecurityContext:
    return api_pb2.LinuxContainerSecurityContext(**fields)


# --------------------------------------------------------------------------------------------
# Host detection
# --------------------------------------------------------------------------------------------


def fake_sysfs(tmp_path: Path, enabled: str | None, *, securityfs: bool = True) -> dict[str, str]:
    flag = tmp_path / "enabled"
    if enabled is not None:
        flag.write_text(enabled)
    security = tmp_path / "apparmor"
    if securityfs:
        security.mkdir()
    return {"enabled_path": str(flag), "securityfs_dir": str(security)}


@pytest.mark.parametrize(
    ("enabled", "securityfs", "expected"),
    [
        ("Y\n", True, True),
        ("Y", True, True),
        ("N\n", True, False),
        ("", True, False),
        (None, True, False),
        ("Y\n", False, False),  # runc also wants securityfs, where profiles are loaded
    ],
)
def test_probe_kernel(
    tmp_path: Path, enabled: str | None, securityfs: bool, expected: bool
) -> None:
    paths = fake_sysfs(tmp_path, enabled, securityfs=securityfs)
    host = probe_apparmor(**paths, which=lambda name: None)
    assert host == AppArmorHost(kernel_enabled=expected, parser=None)


def test_probe_parser(tmp_path: Path) -> None:
    asked = []

    def which(name: str) -> str | None:
        asked.append(name)
        return f"/usr/sbin/{name}"

    host = probe_apparmor(**fake_sysfs(tmp_path, "Y\n"), which=which)
    assert host == AppArmorHost(kernel_enabled=True, parser="/usr/sbin/apparmor_parser")
    assert asked == ["apparmor_parser"]


def test_probe_this_host() -> None:
    # Without the module parameter there is no AppArmor, whatever is installed (this VM).
    if Path("/sys/module/apparmor/parameters/enabled").exists():
        pytest.skip("this kernel has AppArmor built in; the fake-sysfs tests cover the probe")
    assert probe_apparmor().kernel_enabled is False


PROFILES = """\
cri-containerd.apparmor.d (enforce)
pycri-default (enforce)
my profile with spaces (complain)
/usr/bin/man (enforce)
"""


@pytest.mark.parametrize(
    ("name", "listed"),
    [
        ("pycri-default", True),
        ("my profile with spaces", True),
        ("/usr/bin/man", True),
        ("pycri", False),
        ("pycri-default (enforce)", False),
        ("", False),
    ],
)
def test_profile_lookup(name: str, listed: bool) -> None:
    assert profile_is_listed(PROFILES, name) is listed


# --------------------------------------------------------------------------------------------
# The default profile
# --------------------------------------------------------------------------------------------


def test_default_profile_text() -> None:
    text = default_profile_text()
    assert f"profile {DEFAULT_PROFILE_NAME} flags=(attach_disconnected,mediate_deleted) {{" in text
    assert text.count("{") == text.count("}")
    for rule in (
        "deny mount,",
        "deny pivot_root,",
        f"ptrace (trace, read, tracedby, readby) peer={DEFAULT_PROFILE_NAME},",
        f"signal (send, receive) peer={DEFAULT_PROFILE_NAME},",
        "signal (receive) peer=unconfined,",
        "deny /proc/sysrq-trigger rwklx,",
        "deny /proc/kcore rwklx,",
        "deny /sys/kernel/security/** rwklx,",
    ):
        assert f"  {rule}\n" in text, rule
    # /proc/sys: the network namespace's own settings stay writable.
    proc_sys = next(line for line in text.splitlines() if "deny /proc/sys/" in line)
    assert "kernel" in proc_sys and "vm" in proc_sys and "net" not in proc_sys
    assert text.endswith("}\n")


def test_default_profile_every_rule_has_a_reason() -> None:
    # Each block of rules is preceded by a comment saying why.
    body = default_profile_text().split("{\n", 1)[1]
    for block in body.strip().rstrip("}").strip().split("\n\n"):
        assert block.lstrip().startswith("#"), block


def test_default_profile_with_another_name() -> None:
    text = default_profile_text(name="pycri-test.v2")
    assert "profile pycri-test.v2 " in text and "peer=pycri-test.v2," in text
    assert DEFAULT_PROFILE_NAME not in text.replace("pycri.security", "")


@pytest.mark.parametrize("name", ["", "two words", "a{b}", "-leading", "x\ny", "a/b"])
def test_default_profile_refuses_odd_names(name: str) -> None:
    with pytest.raises(ValueError):
        default_profile_text(name=name)


@pytest.mark.skipif(shutil.which("apparmor_parser") is None, reason="apparmor_parser missing")
def test_default_profile_compiles_with_the_real_parser() -> None:
    # -Q: parse and compile only, no kernel; -K: no cache.
    result = subprocess.run(
        ["apparmor_parser", "-Q", "-K"],
        input=default_profile_text(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


# --------------------------------------------------------------------------------------------
# Resolution
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, RUNTIME_DEFAULT),  # nothing asked: the runtime's default (kubernetes#51746)
        ({"apparmor_profile": "runtime/default"}, RUNTIME_DEFAULT),
        ({"apparmor_profile": "docker/default"}, RUNTIME_DEFAULT),
        ({"apparmor_profile": "unconfined"}, None),
        ({"apparmor_profile": "localhost/k8s-nginx"}, RequestedProfile(ProfileKind.LOCALHOST, "k8s-nginx")),
        ({"apparmor": profile("RuntimeDefault")}, RUNTIME_DEFAULT),
        ({"apparmor": profile("Unconfined")}, None),
        ({"apparmor": profile("Localhost", "k8s-nginx")}, RequestedProfile(ProfileKind.LOCALHOST, "k8s-nginx")),
        ({"apparmor": profile("Unconfined"), "apparmor_profile": "localhost/x"}, None),
        ({"apparmor": profile("RuntimeDefault"), "apparmor_profile": "unconfined"}, RUNTIME_DEFAULT),
        # Privileged: unconfined unless a loaded profile is named.
        ({"privileged": True}, None),
        ({"privileged": True, "apparmor": profile("RuntimeDefault")}, None),
        ({"privileged": True, "apparmor": profile("Localhost", "k8s-nginx")}, RequestedProfile(ProfileKind.LOCALHOST, "k8s-nginx")),
    ],
)  # fmt: skip
def test_resolution_when_enabled(fields: dict[str, Any], expected: RequestedProfile | None) -> None:
    assert resolve_apparmor(container(**fields), enabled=True) == expected


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"apparmor_profile": "runtime/default"},
        {"apparmor": profile("RuntimeDefault")},
        {"apparmor": profile("Unconfined")},
        {"apparmor_profile": "unconfined"},
        {"privileged": True, "apparmor": profile("RuntimeDefault")},
    ],
)
def test_resolution_when_disabled_skips(
    fields: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG", logger="pycri.security.apparmor")
    assert resolve_apparmor(container(**fields), enabled=False) is None
    asked_default = fields.get("apparmor_profile") == "runtime/default" or (
        "apparmor" in fields and fields["apparmor"].profile_type == 0
    )
    assert ("RuntimeDefault skipped" in caplog.text) is asked_default


@pytest.mark.parametrize(
    "fields",
    [{"apparmor_profile": "localhost/k8s-nginx"}, {"apparmor": profile("Localhost", "k8s-nginx")}],
)
def test_localhost_refused_when_disabled(fields: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match="'k8s-nginx' requested, but AppArmor is not enabled"):
        resolve_apparmor(container(**fields), enabled=False)


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"apparmor_profile": "k8s-nginx"}, "invalid AppArmor profile"),
        ({"apparmor_profile": "localhost/"}, "invalid AppArmor profile"),
        ({"apparmor": profile("Localhost")}, "needs a localhost_ref"),
        ({"apparmor": profile("RuntimeDefault", "k8s-nginx")}, "only for Localhost"),
    ],
)
def test_invalid_fields_are_refused_either_way(
    enabled: bool, fields: dict[str, Any], match: str
) -> None:
    with pytest.raises(InvalidArgument, match=match):
        resolve_apparmor(container(**fields), enabled=enabled)


# --------------------------------------------------------------------------------------------
# AppArmor: loading and naming
# --------------------------------------------------------------------------------------------


class FakeLoader:
    def __init__(self, *, fail: int = 0, delay: float = 0.0) -> None:
        self.texts: list[str] = []
        self.fail = fail
        self.delay = delay

    async def load(self, text: str) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            self.fail -= 1
            raise Internal("apparmor_parser exited with 1: boom")
        self.texts.append(text)


def apparmor(
    tmp_path: Path, *, host: AppArmorHost = ENABLED, loader: ProfileLoader | None = None
) -> AppArmor:
    profiles = tmp_path / "profiles"
    profiles.write_text(PROFILES)
    return AppArmor(host=host, loader=loader, profiles_path=str(profiles))


def test_fake_loader_satisfies_the_protocol() -> None:
    loader: ProfileLoader = FakeLoader()
    assert callable(loader.load)


async def test_default_profile_is_loaded_once(tmp_path: Path) -> None:
    loader = FakeLoader(delay=0.01)
    service = apparmor(tmp_path, loader=loader)
    names = await asyncio.gather(*(service.container_profile(container()) for _ in range(5)))
    assert names == [DEFAULT_PROFILE_NAME] * 5
    assert loader.texts == [default_profile_text()]
    assert await service.container_profile(container()) == DEFAULT_PROFILE_NAME
    assert len(loader.texts) == 1


async def test_failed_load_is_retried_by_the_next_container(tmp_path: Path) -> None:
    loader = FakeLoader(fail=1)
    service = apparmor(tmp_path, loader=loader)
    with pytest.raises(Internal, match="boom"):
        await service.container_profile(container())
    assert await service.container_profile(container()) == DEFAULT_PROFILE_NAME
    assert len(loader.texts) == 1


async def test_no_parser_means_the_default_cannot_be_loaded(tmp_path: Path) -> None:
    service = apparmor(tmp_path, host=AppArmorHost(kernel_enabled=True, parser=None))
    with pytest.raises(FailedPrecondition, match="apparmor_parser is not installed"):
        await service.container_profile(container())
    # Unconfined and privileged containers need no profile, so they still work.
    assert await service.container_profile(container(apparmor=profile("Unconfined"))) is None
    assert await service.container_profile(container(privileged=True)) is None


async def test_localhost_profiles_must_be_loaded(tmp_path: Path) -> None:
    loader = FakeLoader()
    service = apparmor(tmp_path, loader=loader)
    named = container(apparmor=profile("Localhost", "cri-containerd.apparmor.d"))
    assert await service.container_profile(named) == "cri-containerd.apparmor.d"
    spaced = container(apparmor_profile="localhost/my profile with spaces")
    assert await service.container_profile(spaced) == "my profile with spaces"
    missing = container(apparmor=profile("Localhost", "k8s-nginx"))
    with pytest.raises(InvalidArgument, match="'k8s-nginx' is not loaded"):
        await service.container_profile(missing)
    assert loader.texts == []  # a Localhost profile never loads ours


async def test_unreadable_profiles_list(tmp_path: Path) -> None:
    service = AppArmor(host=ENABLED, loader=FakeLoader(), profiles_path=str(tmp_path / "none"))
    with pytest.raises(Internal, match="cannot read"):
        await service.is_loaded("anything")


async def test_disabled_host_never_loads(tmp_path: Path) -> None:
    loader = FakeLoader()
    service = apparmor(tmp_path, host=DISABLED, loader=loader)
    assert not service.enabled
    assert await service.container_profile(container()) is None
    assert await service.container_profile(container(apparmor=profile("RuntimeDefault"))) is None
    with pytest.raises(InvalidArgument, match="not enabled"):
        await service.container_profile(container(apparmor_profile="localhost/x"))
    assert loader.texts == []


async def test_a_custom_default_name(tmp_path: Path) -> None:
    loader = FakeLoader()
    profiles = tmp_path / "profiles"
    profiles.write_text("")
    service = AppArmor(host=ENABLED, loader=loader, profiles_path=str(profiles), default_name="x1")
    assert await service.ensure_default_profile() == "x1"
    assert loader.texts == [default_profile_text(name="x1")]
    with pytest.raises(ValueError):
        AppArmor(host=ENABLED, loader=loader, default_name="bad name")


def test_default_loader_is_the_parser(tmp_path: Path) -> None:
    service = AppArmor(host=ENABLED)
    assert isinstance(service._loader, ParserLoader)
    assert AppArmor(host=AppArmorHost(kernel_enabled=True))._loader is None


# --------------------------------------------------------------------------------------------
# ParserLoader against stand-in parsers
# --------------------------------------------------------------------------------------------


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "apparmor_parser"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


async def test_parser_gets_the_text_on_stdin_with_replace_flags(tmp_path: Path) -> None:
    seen = tmp_path / "seen"
    parser = script(tmp_path, f'echo "$@" > {seen}.args\ncat > {seen}\n')
    await ParserLoader(parser=parser).load(default_profile_text())
    assert (tmp_path / "seen.args").read_text() == "-Kr\n"
    assert seen.read_text() == default_profile_text()


async def test_parser_failure_carries_its_message(tmp_path: Path) -> None:
    parser = script(tmp_path, 'cat > /dev/null\necho "syntax error at line 3" >&2\nexit 3\n')
    with pytest.raises(Internal, match="exited with 3: syntax error at line 3"):
        await ParserLoader(parser=parser).load("profile x {}")


async def test_parser_that_hangs_is_killed(tmp_path: Path) -> None:
    parser = script(tmp_path, "exec sleep 30\n")
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await ParserLoader(parser=parser, timeout=0.2).load("profile x {}")
    assert loop.time() - started < 5
