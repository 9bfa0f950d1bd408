"""Unit tests for seccomp: CRI field resolution, Localhost files, pycri's default filter, node report.

Pure apart from temp files; libseccomp (through ctypes) checks names and compiles the filters the
way runc does, without loading them. The real-runc checks are in
tests/integration/test_seccomp_runc.py.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from pycri.errors import InvalidArgument
from pycri.oci.capabilities import ALL_CAPABILITIES, DEFAULT_CAPABILITIES
from pycri.security import seccomp_default
from pycri.security.apparmor import AppArmorHost
from pycri.security.node import (
    SECCOMP_CONDITION,
    NodeSecurity,
    probe_node_security,
    probe_runc_libseccomp,
    runc_check_line,
    seccomp_filter_by_prctl,
)
from pycri.security.profiles import (
    ProfileKind,
    RequestedProfile,
    parse_profile_string,
    requested_profile,
)
from pycri.security.seccomp import (
    MAX_PROFILE_BYTES,
    SeccompSettings,
    linux_seccomp,
    parse_localhost_profile,
    read_localhost_profile,
    resolve_seccomp,
    seccomp_spec,
    validate_unset_profile,
)
from pycri.security.seccomp_default import (
    BLOCKED,
    CLONE_NAMESPACE_FLAGS,
    FAMILIES,
    GROUPS,
    PERSONALITY_VALUES,
    UNSHARE_NAMESPACE_FLAGS,
    default_profile,
    family_for_machine,
)
from tests.unit import libseccomp

RUNTIME_DEFAULT = RequestedProfile(ProfileKind.RUNTIME_DEFAULT)
PROFILE_PATH = "/var/lib/kubelet/seccomp/profiles/audit.json"
SecurityContext = api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext

LIBSECCOMP = libseccomp.load()
needs_libseccomp = pytest.mark.skipif(LIBSECCOMP is None, reason="libseccomp.so.2 not installed")


def profile(kind: str, ref: str = "") -> api_pb2.SecurityProfile:
    return api_pb2.SecurityProfile(
        profile_type=api_pb2.SecurityProfile.ProfileType.Value(kind), localhost_ref=ref
    )


def container(**fields: Any) -> api_pb2.LinuxContainerSecurityContext:
    return api_pb2.LinuxContainerSecurityContext(**fields)


def sandbox(**fields: Any) -> api_pb2.LinuxSandboxSecurityContext:
    return api_pb2.LinuxSandboxSecurityContext(**fields)


CONTEXTS = pytest.mark.parametrize("make", [container, sandbox], ids=["container", "sandbox"])


# --------------------------------------------------------------------------------------------
# Parsing the CRI fields
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("runtime/default", RUNTIME_DEFAULT),
        ("docker/default", RUNTIME_DEFAULT),
        ("unconfined", RequestedProfile(ProfileKind.UNCONFINED)),
        ("localhost/my-profile", RequestedProfile(ProfileKind.LOCALHOST, "my-profile")),
        (f"localhost/{PROFILE_PATH}", RequestedProfile(ProfileKind.LOCALHOST, PROFILE_PATH)),
    ],
)
def test_profile_strings(value: str, expected: RequestedProfile | None) -> None:
    assert parse_profile_string(value, what="seccomp") == expected


@pytest.mark.parametrize(
    "value", [PROFILE_PATH, "runtime/Default", "RuntimeDefault", "localhost/", "confined", " "]
)
def test_profile_strings_refused(value: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid seccomp profile"):
        parse_profile_string(value, what="seccomp")


def test_unprefixed_path_is_refused_with_the_expected_forms_named() -> None:
    with pytest.raises(InvalidArgument) as err:
        parse_profile_string(PROFILE_PATH, what="seccomp")
    assert PROFILE_PATH in err.value.message
    assert "localhost/" in err.value.message


def test_structured_field_wins_and_the_string_is_not_parsed() -> None:
    got = requested_profile(profile("Unconfined"), "not even valid", what="seccomp")
    assert got == RequestedProfile(ProfileKind.UNCONFINED)


@pytest.mark.parametrize(
    ("message", "match"),
    [
        (profile("RuntimeDefault", PROFILE_PATH), "only for Localhost"),
        (profile("Unconfined", PROFILE_PATH), "only for Localhost"),
        (profile("Localhost"), "needs a localhost_ref"),
        (profile("Localhost", "localhost/"), "needs a localhost_ref"),
        (api_pb2.SecurityProfile(profile_type=7), "unknown seccomp profile type"),  # type: ignore[arg-type]
    ],
)
def test_structured_field_refused(message: api_pb2.SecurityProfile, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        requested_profile(message, "", what="seccomp")


def test_localhost_prefix_inside_localhost_ref_is_dropped() -> None:
    got = requested_profile(profile("Localhost", f"localhost/{PROFILE_PATH}"), "", what="seccomp")
    assert got == RequestedProfile(ProfileKind.LOCALHOST, PROFILE_PATH)


# --------------------------------------------------------------------------------------------
# resolve_seccomp
# --------------------------------------------------------------------------------------------


@CONTEXTS
@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        ({"seccomp_profile_path": ""}, None),
        ({"seccomp_profile_path": "runtime/default"}, RUNTIME_DEFAULT),
        ({"seccomp_profile_path": "docker/default"}, RUNTIME_DEFAULT),
        ({"seccomp_profile_path": "unconfined"}, None),
        (
            {"seccomp_profile_path": f"localhost/{PROFILE_PATH}"},
            RequestedProfile(ProfileKind.LOCALHOST, PROFILE_PATH),
        ),
        ({"seccomp": profile("RuntimeDefault")}, RUNTIME_DEFAULT),
        ({"seccomp": profile("Unconfined")}, None),
        (
            {"seccomp": profile("Localhost", PROFILE_PATH)},
            RequestedProfile(ProfileKind.LOCALHOST, PROFILE_PATH),
        ),
        # Both set: the structured field decides, whatever the string says.
        ({"seccomp": profile("Unconfined"), "seccomp_profile_path": "runtime/default"}, None),
        (
            {"seccomp": profile("RuntimeDefault"), "seccomp_profile_path": "unconfined"},
            RUNTIME_DEFAULT,
        ),
        (
            {"seccomp": profile("RuntimeDefault"), "seccomp_profile_path": PROFILE_PATH},
            RUNTIME_DEFAULT,
        ),
    ],
)
def test_resolution(make: Any, fields: dict[str, Any], expected: RequestedProfile | None) -> None:
    assert resolve_seccomp(make(**fields)) == expected


@CONTEXTS
@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"seccomp_profile_path": PROFILE_PATH}, "invalid seccomp profile"),
        ({"seccomp_profile_path": "localhost/profiles/audit.json"}, "not an absolute path"),
        ({"seccomp": profile("Localhost", "profiles/audit.json")}, "not an absolute path"),
        ({"seccomp": profile("Localhost")}, "needs a localhost_ref"),
        ({"seccomp": profile("RuntimeDefault", PROFILE_PATH)}, "only for Localhost"),
    ],
)
def test_resolution_refusals(make: Any, fields: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        resolve_seccomp(make(**fields))


@CONTEXTS
def test_privileged_runs_unfiltered_unless_given_a_localhost_profile(make: Any) -> None:
    assert resolve_seccomp(make(privileged=True, seccomp=profile("RuntimeDefault"))) is None
    assert resolve_seccomp(make(privileged=True, seccomp_profile_path="runtime/default")) is None
    settings = SeccompSettings(unset_profile="runtime/default")
    assert resolve_seccomp(make(privileged=True), settings=settings) is None
    explicit = make(privileged=True, seccomp=profile("Localhost", PROFILE_PATH))
    assert resolve_seccomp(explicit) == RequestedProfile(ProfileKind.LOCALHOST, PROFILE_PATH)


@CONTEXTS
def test_privileged_does_not_excuse_invalid_fields(make: Any) -> None:
    with pytest.raises(InvalidArgument):
        resolve_seccomp(make(privileged=True, seccomp_profile_path="bogus"))


@CONTEXTS
def test_unset_profile_applies_only_when_neither_field_is_set(make: Any) -> None:
    settings = SeccompSettings(unset_profile="runtime/default")
    assert resolve_seccomp(make(), settings=settings) == RUNTIME_DEFAULT
    assert resolve_seccomp(make(seccomp_profile_path="unconfined"), settings=settings) is None
    assert resolve_seccomp(make(seccomp=profile("Unconfined")), settings=settings) is None


@pytest.mark.parametrize(
    "value", ["", "runtime/default", "unconfined", f"localhost/{PROFILE_PATH}"]
)
def test_valid_unset_profiles(value: str) -> None:
    validate_unset_profile(value)


@pytest.mark.parametrize("value", ["default", PROFILE_PATH, "localhost/relative.json"])
def test_invalid_unset_profiles(value: str) -> None:
    with pytest.raises(ValueError):
        validate_unset_profile(value)


@CONTEXTS
def test_kernel_without_seccomp(make: Any, caplog: pytest.LogCaptureFixture) -> None:
    settings = SeccompSettings(kernel_supported=False)
    caplog.set_level("DEBUG", logger="pycri.security.seccomp")
    assert resolve_seccomp(make(seccomp=profile("RuntimeDefault")), settings=settings) is None
    assert "RuntimeDefault runs unfiltered" in caplog.text
    assert resolve_seccomp(make(seccomp=profile("Unconfined")), settings=settings) is None
    with pytest.raises(InvalidArgument, match=f"{PROFILE_PATH} cannot be applied"):
        resolve_seccomp(make(seccomp=profile("Localhost", PROFILE_PATH)), settings=settings)


# --------------------------------------------------------------------------------------------
# seccomp_spec and Localhost files
# --------------------------------------------------------------------------------------------

AUDIT_PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_LOG",
    "defaultErrnoRet": 1,
    "architectures": ["SCMP_ARCH_X86_64"],
    "flags": ["SECCOMP_FILTER_FLAG_LOG"],
    "syscalls": [
        {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38, "comment": "dropped"},
        {
            "names": ["personality"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}],
            "includes": {},
            "excludes": {},
        },
    ],
    "comment": "extra keys are dropped",
}


def localhost(path: str = PROFILE_PATH) -> RequestedProfile:
    return RequestedProfile(ProfileKind.LOCALHOST, path)


def test_spec_of_nothing_and_of_runtime_default() -> None:
    assert seccomp_spec(None, capabilities=DEFAULT_CAPABILITIES) is None
    built = seccomp_spec(RUNTIME_DEFAULT, capabilities=DEFAULT_CAPABILITIES, machine="x86_64")
    assert built == default_profile(DEFAULT_CAPABILITIES, machine="x86_64")


def test_spec_of_localhost_needs_the_file_content() -> None:
    with pytest.raises(ValueError, match="was not passed"):
        seccomp_spec(localhost(), capabilities=())


def test_localhost_profile_keeps_only_oci_fields() -> None:
    data = json.dumps(AUDIT_PROFILE).encode()
    built = seccomp_spec(localhost(), capabilities=(), localhost_profile=data)
    assert built == {
        "defaultAction": "SCMP_ACT_LOG",
        "defaultErrnoRet": 1,
        "architectures": ["SCMP_ARCH_X86_64"],
        "flags": ["SECCOMP_FILTER_FLAG_LOG"],
        "syscalls": [
            {"names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}],
            },
        ],
    }


def test_minimal_localhost_profile() -> None:
    built = parse_localhost_profile(b'{"defaultAction": "SCMP_ACT_LOG"}', path=PROFILE_PATH)
    assert built == {"defaultAction": "SCMP_ACT_LOG", "syscalls": []}


def _with(**changes: Any) -> bytes:
    document = json.loads(json.dumps(AUDIT_PROFILE))
    document.update(changes)
    return json.dumps(document).encode()


def _with_rule(**changes: Any) -> bytes:
    rule: dict[str, Any] = {"names": ["read"], "action": "SCMP_ACT_ALLOW"}
    rule.update(changes)
    return _with(syscalls=[rule])


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"{not json", "is not valid JSON"),
        (b"\xff\xfe", "is not valid JSON"),
        (b"", "is not valid JSON"),
        (b"[]", "not a JSON object"),
        (b"{}", "no defaultAction"),
        (_with(defaultAction="SCMP_ACT_MAYBE"), "unknown defaultAction"),
        (_with(defaultErrnoRet=-1), "defaultErrnoRet"),
        (_with(defaultErrnoRet=True), "defaultErrnoRet"),
        (_with(architectures=["SCMP_ARCH_Z80"]), "unknown architectures SCMP_ARCH_Z80"),
        (_with(architectures="SCMP_ARCH_X86_64"), "architectures must be a list"),
        (_with(archMap=[{"architecture": "SCMP_ARCH_X86_64"}]), "archMap"),
        (_with(flags="SECCOMP_FILTER_FLAG_LOG"), "flags must be a list"),
        (_with(listenerPath=3), "listenerPath must be a string"),
        (_with(syscalls={}), "syscalls must be a list"),
        (_with(syscalls=["read"]), r"syscalls\[0\] is not an object"),
        (_with_rule(names=[]), "names must be a non-empty list"),
        (_with_rule(names="read"), "names must be a non-empty list"),
        (_with_rule(names=[""]), "names must be a non-empty list"),
        (_with_rule(action="allow"), "unknown action"),
        (_with_rule(errnoRet="EPERM"), "errnoRet"),
        (_with_rule(includes={"caps": ["CAP_SYS_ADMIN"]}), "includes"),
        (_with_rule(excludes={"arches": ["s390x"]}), "excludes"),
        (_with_rule(args={}), "args must be a list"),
        (_with_rule(args=[1]), r"args\[0\] is not an object"),
        (_with_rule(args=[{"index": 6, "value": 0, "op": "SCMP_CMP_EQ"}]), "index must be"),
        (_with_rule(args=[{"index": 0, "value": -1, "op": "SCMP_CMP_EQ"}]), "non-negative"),
        (_with_rule(args=[{"index": 0, "value": 1, "op": "SCMP_CMP_SIMILAR"}]), "unknown op"),
    ],
)
def test_localhost_profile_refusals_name_the_file(data: bytes, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as err:
        parse_localhost_profile(data, path=PROFILE_PATH)
    assert PROFILE_PATH in err.value.message


def test_our_own_default_profile_passes_the_localhost_checks() -> None:
    for machine in FAMILIES:
        built = default_profile(ALL_CAPABILITIES, machine=machine)
        parsed = parse_localhost_profile(json.dumps(built).encode(), path="/default.json")
        assert parsed == built


def test_reading_a_missing_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.json")
    with pytest.raises(InvalidArgument, match=f"seccomp profile {missing} not found"):
        read_localhost_profile(missing)


def test_reading_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="is a directory"):
        read_localhost_profile(str(tmp_path))


def test_reading_an_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("{}")
    path.chmod(0)
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    with pytest.raises(InvalidArgument, match="cannot be read"):  # pragma: no cover - as root
        read_localhost_profile(str(path))


def test_reading_a_huge_file(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    path.write_bytes(b" " * (MAX_PROFILE_BYTES + 1))
    with pytest.raises(InvalidArgument, match="larger than"):
        read_localhost_profile(str(path))


async def test_linux_seccomp_reads_the_localhost_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.json"
    path.write_text(json.dumps(AUDIT_PROFILE))
    security = container(seccomp=profile("Localhost", str(path)))
    built = await linux_seccomp(security, capabilities=DEFAULT_CAPABILITIES)
    assert built is not None
    assert built["defaultAction"] == "SCMP_ACT_LOG"


async def test_linux_seccomp_missing_and_invalid_files(tmp_path: Path) -> None:
    missing = tmp_path / "missing.json"
    with pytest.raises(InvalidArgument, match=f"{missing} not found"):
        await linux_seccomp(container(seccomp=profile("Localhost", str(missing))), capabilities=())
    broken = tmp_path / "broken.json"
    broken.write_text('{"defaultAction": ')
    with pytest.raises(InvalidArgument, match=f"{broken} is not valid JSON"):
        await linux_seccomp(sandbox(seccomp_profile_path=f"localhost/{broken}"), capabilities=())


async def test_linux_seccomp_default_and_none() -> None:
    built = await linux_seccomp(
        sandbox(seccomp=profile("RuntimeDefault")), capabilities=(), machine="aarch64"
    )
    assert built == default_profile((), machine="aarch64")
    assert await linux_seccomp(container(), capabilities=()) is None


# --------------------------------------------------------------------------------------------
# The default profile
# --------------------------------------------------------------------------------------------


def allowed(profile_json: dict[str, Any]) -> set[str]:
    """Names allowed unconditionally (an ALLOW rule without argument conditions)."""
    return {
        name
        for rule in profile_json["syscalls"]
        if rule["action"] == "SCMP_ACT_ALLOW" and not rule.get("args")
        for name in rule["names"]
    }


def rules_for(profile_json: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [rule for rule in profile_json["syscalls"] if name in rule["names"]]


def every_name(profile_json: dict[str, Any]) -> set[str]:
    return {name for rule in profile_json["syscalls"] for name in rule["names"]}


@pytest.mark.parametrize("machine", [*FAMILIES, "riscv64"])
def test_profile_shape_is_what_runc_reads(machine: str) -> None:
    built = default_profile(DEFAULT_CAPABILITIES, machine=machine)
    json.dumps(built)  # plain JSON data
    assert built["defaultAction"] == "SCMP_ACT_ERRNO"
    assert built["defaultErrnoRet"] == 1
    assert set(built) <= {"defaultAction", "defaultErrnoRet", "architectures", "syscalls"}
    for rule in built["syscalls"]:
        assert set(rule) <= {"names", "action", "errnoRet", "args"}
        assert rule["names"] == sorted(rule["names"]) and rule["names"]
        assert all(isinstance(n, str) and n for n in rule["names"])
        assert rule["action"] in {"SCMP_ACT_ALLOW", "SCMP_ACT_ERRNO"}
        assert ("errnoRet" in rule) == (rule["action"] == "SCMP_ACT_ERRNO")
        for arg in rule.get("args", []):
            assert set(arg) == {"index", "value", "valueTwo", "op"}
            assert 0 <= arg["index"] < 6


@pytest.mark.parametrize(
    ("machine", "architectures"),
    [
        ("x86_64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("amd64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
        ("aarch64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ("arm64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
        ("s390x", ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"]),
    ],
)
def test_architectures(machine: str, architectures: list[str]) -> None:
    assert default_profile((), machine=machine)["architectures"] == architectures


def test_unknown_machine_gets_a_native_only_filter_of_the_common_groups() -> None:
    built = default_profile((), machine="riscv64")
    assert "architectures" not in built
    assert "arch_prctl" not in every_name(built)
    assert "set_tls" not in every_name(built)
    assert {"read", "write", "execve"} <= allowed(built)


def test_machine_defaults_to_this_host() -> None:
    assert default_profile(()) == default_profile((), machine=os.uname().machine)


def test_arch_private_calls_only_on_their_architecture() -> None:
    assert "arch_prctl" in allowed(default_profile((), machine="x86_64"))
    assert "arch_prctl" not in every_name(default_profile((), machine="aarch64"))
    assert "set_tls" in allowed(default_profile((), machine="aarch64"))
    assert "set_tls" not in every_name(default_profile((), machine="x86_64"))
    assert "s390_sthyi" in allowed(default_profile((), machine="s390x"))


def test_ordinary_workloads_are_allowed() -> None:
    built = default_profile(DEFAULT_CAPABILITIES, machine="x86_64")
    assert {
        "read", "write", "openat", "close", "execve", "exit_group", "mmap", "futex", "epoll_wait",
        "clock_gettime", "nanosleep", "accept4", "connect", "bind", "listen", "sendto",
        "recvfrom", "newfstatat", "statx", "getdents64", "fchmodat", "mkdirat", "symlinkat",
        "rt_sigaction", "wait4", "pipe2", "dup3", "setresuid", "capset", "prctl", "getrandom",
        "chroot",
    } <= allowed(built)  # fmt: skip


CAPABILITY_GATED = {
    "CAP_SYS_ADMIN": {"mount", "umount2", "setns", "sethostname", "setdomainname", "pivot_root",
                      "fsopen", "move_mount", "open_tree", "fanotify_init", "bpf",
                      "perf_event_open"},
    "CAP_BPF": {"bpf"},
    "CAP_PERFMON": {"perf_event_open"},
    "CAP_SYS_PTRACE": {"ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd"},
    "CAP_SYS_TIME": {"clock_settime", "settimeofday", "adjtimex", "clock_adjtime"},
    "CAP_SYS_BOOT": {"reboot"},
    "CAP_SYS_MODULE": {"init_module", "finit_module", "delete_module"},
    "CAP_SYS_NICE": {"migrate_pages", "move_pages"},
    "CAP_SYS_CHROOT": {"chroot"},
    "CAP_SYS_RAWIO": {"iopl", "ioperm"},
    "CAP_SYS_TTY_CONFIG": {"vhangup"},
    "CAP_SYSLOG": {"syslog"},
}  # fmt: skip


@pytest.mark.parametrize("capability", sorted(CAPABILITY_GATED))
def test_capability_conditional_rules(capability: str) -> None:
    gated = CAPABILITY_GATED[capability]
    without = default_profile((), machine="x86_64")
    assert not gated & every_name(without)
    with_cap = default_profile((capability,), machine="x86_64")
    assert gated <= allowed(with_cap)


def test_default_capabilities_open_none_of_the_admin_calls() -> None:
    built = default_profile(DEFAULT_CAPABILITIES, machine="x86_64")
    for capability, gated in CAPABILITY_GATED.items():
        if capability not in DEFAULT_CAPABILITIES:
            assert not gated & allowed(built) - {"chroot"}, capability


def test_ptrace_needs_its_own_capability_even_with_sys_admin() -> None:
    assert "ptrace" not in every_name(default_profile(("CAP_SYS_ADMIN",), machine="x86_64"))


@pytest.mark.parametrize(("machine", "index"), [("x86_64", 0), ("aarch64", 0), ("s390x", 1)])
def test_clone_without_sys_admin_refuses_namespace_flags(machine: str, index: int) -> None:
    built = default_profile(DEFAULT_CAPABILITIES, machine=machine)
    assert rules_for(built, "clone") == [
        {
            "names": ["clone"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": index, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                 "op": "SCMP_CMP_MASKED_EQ"},
            ],
        }
    ]  # fmt: skip
    assert rules_for(built, "unshare") == [
        {
            "names": ["unshare"],
            "action": "SCMP_ACT_ALLOW",
            "args": [
                {"index": 0, "value": UNSHARE_NAMESPACE_FLAGS, "valueTwo": 0,
                 "op": "SCMP_CMP_MASKED_EQ"},
            ],
        }
    ]  # fmt: skip
    assert rules_for(built, "clone3") == [
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    ]


def test_namespace_flag_masks() -> None:
    # CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET; unshare adds NEWTIME.
    assert CLONE_NAMESPACE_FLAGS == 0x7E020000
    assert UNSHARE_NAMESPACE_FLAGS == 0x7E020080
    assert CLONE_NAMESPACE_FLAGS & 0xFF == 0  # the exit-signal byte of clone(2) stays free


def test_clone_with_sys_admin_is_unconditional() -> None:
    built = default_profile(("CAP_SYS_ADMIN",), machine="x86_64")
    for name in ("clone", "clone3", "unshare"):
        assert rules_for(built, name) == [
            rule for rule in built["syscalls"] if name in rule["names"] and "args" not in rule
        ]
        assert name in allowed(built)


def test_personality_is_limited_to_harmless_values() -> None:
    built = default_profile(ALL_CAPABILITIES, machine="x86_64")
    rules = rules_for(built, "personality")
    assert all(r["action"] == "SCMP_ACT_ALLOW" for r in rules)
    values = {r["args"][0]["value"] for r in rules}
    assert values == set(PERSONALITY_VALUES)
    assert all(r["args"] == [{**r["args"][0], "op": "SCMP_CMP_EQ", "index": 0}] for r in rules)
    read_implies_exec, mmap_page_zero = 0x0400000, 0x0100000
    assert not values & {read_implies_exec, mmap_page_zero}
    assert "personality" not in allowed(built)


def test_socket_refuses_vsock_only() -> None:
    built = default_profile(ALL_CAPABILITIES, machine="x86_64")
    assert rules_for(built, "socket") == [
        {
            "names": ["socket"],
            "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": 40, "valueTwo": 0, "op": "SCMP_CMP_NE"}],
        }
    ]


@pytest.mark.parametrize("machine", list(FAMILIES))
@pytest.mark.parametrize("caps", [(), DEFAULT_CAPABILITIES, ALL_CAPABILITIES])
def test_blocked_calls_never_appear(machine: str, caps: tuple[str, ...]) -> None:
    names = every_name(default_profile(caps, machine=machine))
    for why, blocked in BLOCKED.items():
        assert not names & set(blocked), why
    assert not names & {"keyctl", "add_key", "userfaultfd", "kexec_load", "io_uring_setup"}


@pytest.mark.parametrize("machine", list(FAMILIES))
@pytest.mark.parametrize("caps", [(), DEFAULT_CAPABILITIES, ALL_CAPABILITIES])
def test_no_name_is_both_unconditional_and_conditional(machine: str, caps: tuple[str, ...]) -> None:
    built = default_profile(caps, machine=machine)
    unconditional = allowed(built)
    for rule in built["syscalls"]:
        if rule.get("args") or rule["action"] != "SCMP_ACT_ALLOW":
            assert not unconditional & set(rule["names"]), rule
    plain = [n for r in built["syscalls"] if not r.get("args") for n in r["names"]]
    assert len(plain) == len(set(plain)), "a name in two unconditional rules"


def test_recent_names_are_listed() -> None:
    assert every_name(default_profile((), machine="x86_64")) >= RECENT


def test_groups_are_documented_and_use_known_capabilities() -> None:
    for group in GROUPS:
        assert len(group.why) > 20, group.names
        assert group.names
        assert group.needs <= set(ALL_CAPABILITIES)
        assert group.not_with <= set(ALL_CAPABILITIES)
        assert group.families is None or group.families <= set(FAMILIES)
    assert all(why for why in BLOCKED)


def test_profile_does_not_depend_on_capability_order_or_duplicates() -> None:
    caps = list(DEFAULT_CAPABILITIES)
    assert default_profile(caps, machine="x86_64") == default_profile(
        [*reversed(caps), *caps], machine="x86_64"
    )


def test_family_lookup() -> None:
    assert family_for_machine("x86_64") is FAMILIES["x86_64"]
    assert family_for_machine("arm64") is FAMILIES["aarch64"]
    assert family_for_machine("ppc64le").architectures == ()


# System calls of Linux 5.14 and later: a libseccomp older than Debian 12's may not know them.
# runc then skips the name (debug log only) and its ENOSYS stub answers the call, which is what
# a program expects from a kernel without it. Every other name must be known.
RECENT = frozenset(
    {"memfd_secret", "process_mrelease", "futex_waitv", "set_mempolicy_home_node", "cachestat",
     "fchmodat2", "futex_wake", "futex_wait", "futex_requeue"}
)  # fmt: skip


@needs_libseccomp
def test_every_name_is_known_to_libseccomp_for_its_architectures() -> None:
    assert LIBSECCOMP is not None
    for group in GROUPS:
        families = [
            f for f in FAMILIES.values() if group.families is None or f.name in group.families
        ]
        for name in group.names:
            numbers = {
                (family.name, arch): libseccomp.resolve(LIBSECCOMP, arch, name)
                for family in families
                for arch in family.architectures
            }
            unknown = [key for key, number in numbers.items() if libseccomp.is_unknown(number)]
            if unknown and name in RECENT:
                continue
            assert not unknown, f"libseccomp does not know {name} on {unknown}"
            assert any(libseccomp.is_real(n) for n in numbers.values()), (
                f"{name} exists on none of the architectures it is listed for"
            )


@needs_libseccomp
def test_every_name_of_the_x86_profile_exists_on_an_x86_abi() -> None:
    # The family runc runs on this machine: no name in it may be a mere placeholder.
    assert LIBSECCOMP is not None
    built = default_profile(ALL_CAPABILITIES, machine="x86_64")
    for name in every_name(built):
        numbers = [libseccomp.resolve(LIBSECCOMP, a, name) for a in built["architectures"]]
        if name in RECENT and all(libseccomp.is_unknown(n) for n in numbers):
            continue
        assert any(libseccomp.is_real(n) for n in numbers), name


@needs_libseccomp
def test_blocked_names_are_real_system_calls() -> None:
    assert LIBSECCOMP is not None
    for names in BLOCKED.values():
        for name in names:
            numbers = [
                libseccomp.resolve(LIBSECCOMP, arch, name)
                for family in FAMILIES.values()
                for arch in family.architectures
            ]
            assert any(libseccomp.is_real(n) for n in numbers), name


@needs_libseccomp
@pytest.mark.parametrize("machine", list(FAMILIES))
@pytest.mark.parametrize("caps", [(), DEFAULT_CAPABILITIES, ALL_CAPABILITIES])
def test_libseccomp_compiles_every_rule(machine: str, caps: tuple[str, ...]) -> None:
    assert LIBSECCOMP is not None
    libseccomp.compile_profile(LIBSECCOMP, default_profile(caps, machine=machine))


def test_seccomp_default_module_has_no_mutable_shared_state() -> None:
    first = default_profile((), machine="x86_64")
    first["syscalls"][0]["names"].append("reboot")
    first["syscalls"][-1].setdefault("args", []).append({})
    assert default_profile((), machine="x86_64") != first
    assert seccomp_default.GROUPS[0].names == GROUPS[0].names


# --------------------------------------------------------------------------------------------
# Node report
# --------------------------------------------------------------------------------------------

STATUS_5_9 = "Name:\tpython\nNoNewPrivs:\t0\nSeccomp:\t0\nSeccomp_filters:\t0\nSpeculation_Store_Bypass:\tthread vulnerable\n"
STATUS_OLD = "Name:\tpython\nNoNewPrivs:\t0\nSeccomp:\t2\n"
STATUS_NONE = "Name:\tpython\nNoNewPrivs:\t0\n"
NO_APPARMOR = AppArmorHost()


def write_status(tmp_path: Path, text: str) -> str:
    path = tmp_path / "status"
    path.write_text(text)
    return str(path)


def never_called() -> bool:
    raise AssertionError("the prctl probe is for kernels without Seccomp_filters")


def test_probe_recent_kernel(tmp_path: Path) -> None:
    node = probe_node_security(
        status_path=write_status(tmp_path, STATUS_5_9),
        filter_probe=never_called,
        apparmor=NO_APPARMOR,
    )
    assert node == NodeSecurity(
        seccomp=True, seccomp_filter=True, own_seccomp_mode=0, apparmor=NO_APPARMOR
    )


@pytest.mark.parametrize("has_filters", [True, False])
def test_probe_old_kernel_asks_prctl(tmp_path: Path, has_filters: bool) -> None:
    node = probe_node_security(
        status_path=write_status(tmp_path, STATUS_OLD),
        filter_probe=lambda: has_filters,
        apparmor=NO_APPARMOR,
    )
    assert node.seccomp and node.seccomp_filter is has_filters
    assert node.own_seccomp_mode == 2


def test_probe_kernel_without_seccomp(tmp_path: Path) -> None:
    node = probe_node_security(
        status_path=write_status(tmp_path, STATUS_NONE),
        filter_probe=never_called,
        apparmor=NO_APPARMOR,
    )
    assert not node.seccomp and not node.seccomp_filter and node.own_seccomp_mode is None
    assert node.seccomp_settings(unset_profile="runtime/default") == SeccompSettings(
        kernel_supported=False, unset_profile="runtime/default"
    )


def test_probe_this_host_agrees_with_prctl() -> None:
    node = probe_node_security(apparmor=NO_APPARMOR)
    assert node.seccomp_filter == seccomp_filter_by_prctl()


def test_report_lines() -> None:
    good = NodeSecurity(seccomp=True, seccomp_filter=True, own_seccomp_mode=0)
    (seccomp_line, apparmor_line) = good.check_lines()
    assert seccomp_line[0] and apparmor_line[0]
    assert "not enabled" in apparmor_line[1]
    assert good.summary() == "seccomp filters available; AppArmor not enabled"
    condition = good.runtime_condition()
    assert (condition.type, condition.status) == (SECCOMP_CONDITION, True)
    json.dumps(good.info())

    bad = NodeSecurity(seccomp=True, apparmor=AppArmorHost(kernel_enabled=True, parser=None))
    (seccomp_line, apparmor_line) = bad.check_lines()
    assert not seccomp_line[0] and "CONFIG_SECCOMP_FILTER" in seccomp_line[2]
    assert not apparmor_line[0] and apparmor_line[2] == "apt-get install apparmor"
    assert bad.summary() == (
        "seccomp without filter support; AppArmor enabled, apparmor_parser missing"
    )
    condition = bad.runtime_condition()
    assert (condition.status, condition.reason) == (False, "KernelWithoutSeccompFilters")

    apparmor = NodeSecurity(apparmor=AppArmorHost(kernel_enabled=True, parser="/sbin/ap"))
    assert apparmor.check_lines()[1] == (True, "AppArmor: enabled, parser /sbin/ap", "")
    assert apparmor.summary() == "no seccomp; AppArmor enabled"
    assert apparmor.info()["apparmorParser"] == "/sbin/ap"


def fake_runc(tmp_path: Path, output: str) -> str:
    path = tmp_path / "runc"
    path.write_text(f"#!/bin/sh\ncat <<'EOF'\n{output}\nEOF\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_runc_libseccomp_version(tmp_path: Path) -> None:
    with_seccomp = fake_runc(
        tmp_path, "runc version 1.1.5\ncommit: x\nspec: 1.0.2-dev\ngo: go1.19\nlibseccomp: 2.5.4"
    )
    assert probe_runc_libseccomp(with_seccomp) == "2.5.4"
    assert runc_check_line(with_seccomp) == (True, "runc built with libseccomp 2.5.4", "")


def test_runc_without_libseccomp(tmp_path: Path) -> None:
    without = fake_runc(tmp_path, "runc version 1.1.5\nspec: 1.0.2-dev")
    assert probe_runc_libseccomp(without) is None
    assert probe_runc_libseccomp(str(tmp_path / "absent")) is None
    assert not runc_check_line(without)[0]
