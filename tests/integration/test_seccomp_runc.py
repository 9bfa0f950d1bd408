"""pycri's seccomp filters under a real runc: installed, harmless to ordinary work, and blocking.

Each test builds an OCI bundle in a temp dir (config.json from ``runc spec``, then edited) around
one of two root filesystems made once per session:

* a busybox rootfs (``/bin/busybox`` and ``busybox --install -s``), for shell-level workloads;
* a "host tools" rootfs that bind-mounts the host's ``/usr`` read-only, so that the host's python
  can make raw system calls with ctypes and report their errno (busybox has no keyctl, bpf, ...).

runc runs with a private ``--root`` and unique container IDs, and every container is deleted
(``runc delete -f``) whatever happens. The containers share the host's network namespace, so the
loopback tests need no CAP_NET_ADMIN to bring ``lo`` up. The whole file takes a few seconds.
"""

from __future__ import annotations

import copy
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from pycri.oci.capabilities import DEFAULT_CAPABILITIES
from pycri.security.node import probe_node_security
from pycri.security.seccomp import linux_seccomp
from pycri.security.seccomp_default import default_profile

RUNC = shutil.which("runc")
BUSYBOX = "/bin/busybox"
HOST_PYTHON = "/usr/bin/python3"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="runc needs root"),
    pytest.mark.skipif(RUNC is None, reason="runc is not installed"),
    pytest.mark.skipif(not os.path.exists(BUSYBOX), reason="busybox-static is not installed"),
    pytest.mark.skipif(
        not probe_node_security().seccomp_filter, reason="the kernel has no seccomp filters"
    ),
]

SYS_ADMIN = (*DEFAULT_CAPABILITIES, "CAP_SYS_ADMIN")


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


@dataclass(frozen=True)
class Runc:
    """Runs bundles with a private state root; every container is deleted afterwards."""

    state: Path
    bundles: Path
    template: dict[str, Any]

    def run(
        self,
        rootfs: Path,
        args: Sequence[str],
        *,
        seccomp: dict[str, Any] | None,
        capabilities: Sequence[str] = DEFAULT_CAPABILITIES,
        no_new_privileges: bool = True,
        uid: int = 0,
        mounts: Sequence[dict[str, Any]] = (),
    ) -> Result:
        container_id = f"pycri-seccomp-{os.getpid()}-{secrets.token_hex(4)}"
        bundle = self.bundles / container_id
        bundle.mkdir()
        spec = copy.deepcopy(self.template)
        caps = sorted(set(capabilities))
        spec["process"].update(
            terminal=False,
            args=list(args),
            user={"uid": uid, "gid": uid},
            capabilities={"bounding": caps, "effective": caps, "permitted": caps},
            noNewPrivileges=no_new_privileges,
            env=["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "HOME=/tmp"],
            cwd="/",
        )
        spec["root"] = {"path": str(rootfs), "readonly": True}
        spec["hostname"] = "seccomp-test"
        spec["mounts"] = [
            *spec["mounts"],
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=1777"],
            },
            *mounts,
        ]
        linux = spec["linux"]
        # The host's network namespace: loopback is up without CAP_NET_ADMIN.
        linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"]
        linux.pop("seccomp", None)
        if seccomp is not None:
            linux["seccomp"] = seccomp
        (bundle / "config.json").write_text(json.dumps(spec))
        try:
            done = subprocess.run(
                [RUNC or "runc", "--root", str(self.state), "run", "--bundle", str(bundle),
                 container_id],
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )  # fmt: skip
        finally:
            subprocess.run(
                [RUNC or "runc", "--root", str(self.state), "delete", "-f", container_id],
                capture_output=True,
                timeout=30,
            )
            shutil.rmtree(bundle, ignore_errors=True)
        return Result(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def runc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Runc]:
    base = tmp_path_factory.mktemp("runc-seccomp")
    state, bundles, template_dir = base / "state", base / "bundles", base / "template"
    for directory in (state, bundles, template_dir):
        directory.mkdir()
    subprocess.run([RUNC or "runc", "spec"], cwd=template_dir, check=True, timeout=30)
    template = json.loads((template_dir / "config.json").read_text())
    yield Runc(state=state, bundles=bundles, template=template)
    listed = subprocess.run(
        [RUNC or "runc", "--root", str(state), "list", "-q"], capture_output=True, text=True
    )
    assert not listed.stdout.strip(), f"containers left behind: {listed.stdout}"


@pytest.fixture(scope="module")
def busybox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    rootfs = tmp_path_factory.mktemp("busybox-rootfs")
    rootfs.chmod(0o755)  # the container's /, which a non-root user must be able to enter
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "dev", "sys", "tmp"):
        (rootfs / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    subprocess.run(
        ["chroot", str(rootfs), "/bin/busybox", "--install", "-s"], check=True, timeout=30
    )
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/tmp:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    return rootfs


@pytest.fixture(scope="module")
def host_tools(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not os.path.exists(HOST_PYTHON):
        pytest.skip(f"{HOST_PYTHON} is needed for the raw system call probes")
    rootfs = tmp_path_factory.mktemp("host-tools-rootfs")
    rootfs.chmod(0o755)
    for directory in ("usr", "etc", "proc", "dev", "sys", "tmp"):
        (rootfs / directory).mkdir()
    for link in ("bin", "sbin", "lib", "lib64"):
        if os.path.islink(f"/{link}"):
            (rootfs / link).symlink_to(os.readlink(f"/{link}"))
    return rootfs


HOST_USR = {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def status_field(output: str, name: str) -> str:
    for line in output.splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no {name} line in {output!r}")


RUNTIME_DEFAULT = default_profile(DEFAULT_CAPABILITIES)
SHOW_STATUS = ["grep", "-E", "^(Seccomp|Seccomp_filters|NoNewPrivs):", "/proc/self/status"]


# --------------------------------------------------------------------------------------------
# The filter is installed, and ordinary work goes on under it
# --------------------------------------------------------------------------------------------


def test_runtime_default_installs_a_filter(runc: Runc, busybox: Path) -> None:
    result = runc.run(busybox, SHOW_STATUS, seccomp=RUNTIME_DEFAULT)
    assert result.returncode == 0, result.output
    assert status_field(result.stdout, "Seccomp") == "2"
    assert status_field(result.stdout, "Seccomp_filters") == "1"
    unconfined = runc.run(busybox, SHOW_STATUS, seccomp=None)
    assert status_field(unconfined.stdout, "Seccomp") == "0"


WORKLOAD = """\
set -e
echo 'echo from-a-script' > /tmp/script.sh && sh /tmp/script.sh
ps -o pid,comm | grep -q ps && echo ok:ps
ls -l / > /dev/null && echo ok:ls
cat /proc/self/status > /dev/null && echo ok:cat
date +%s > /dev/null && echo ok:date
sleep 0.1 && echo ok:sleep
touch /tmp/f && chmod 0600 /tmp/f && [ "$(stat -c %a /tmp/f)" = 600 ] && echo ok:chmod
mkdir -p /tmp/d/e && echo ok:mkdir
ln -s /tmp/f /tmp/link && [ "$(readlink /tmp/link)" = /tmp/f ] && echo ok:ln
mkdir /tmp/www && echo served-by-httpd > /tmp/www/index.html
httpd -f -p 127.0.0.1:{http} -h /tmp/www & HTTPD=$!
got=""; for i in 1 2 3 4 5 6 7 8 9 10; do
  got=$(wget -q -O - http://127.0.0.1:{http}/index.html 2>/dev/null) && break; sleep 0.1
done
kill $HTTPD; [ "$got" = served-by-httpd ] && echo ok:httpd-wget
nc -l -p {nc} > /tmp/received & NC=$!
for i in 1 2 3 4 5 6 7 8 9 10; do echo over-nc | nc 127.0.0.1 {nc} 2>/dev/null && break; sleep 0.1; done
wait $NC; [ "$(cat /tmp/received)" = over-nc ] && echo ok:nc
ping -c 1 -W 2 127.0.0.1 > /dev/null && echo ok:ping
echo ok:end
"""
WORKLOAD_STEPS = ("ps", "ls", "cat", "date", "sleep", "chmod", "mkdir", "ln", "httpd-wget", "nc",
                  "ping", "end")  # fmt: skip


@pytest.mark.parametrize("no_new_privileges", [True, False], ids=["nnp", "no-nnp"])
def test_ordinary_workloads_work(runc: Runc, busybox: Path, no_new_privileges: bool) -> None:
    script = WORKLOAD.format(http=free_port(), nc=free_port())
    result = runc.run(
        busybox, ["sh", "-c", script], seccomp=RUNTIME_DEFAULT, no_new_privileges=no_new_privileges
    )
    assert result.returncode == 0, result.output
    assert "from-a-script" in result.stdout
    for step in WORKLOAD_STEPS:
        assert f"ok:{step}\n" in result.stdout, f"{step} failed: {result.output}"


# --------------------------------------------------------------------------------------------
# What is blocked, and what CAP_SYS_ADMIN opens
# --------------------------------------------------------------------------------------------

TRY = """\
for cmd in "unshare -U true" "unshare -m true" "hostname blocked-test"; do
  if out=$($cmd 2>&1); then echo "$cmd: ok"; else echo "$cmd: failed: $out"; fi
done
"""


def outcome(result: Result, cmd: str) -> str:
    line = next(line for line in result.stdout.splitlines() if line.startswith(f"{cmd}:"))
    return line.removeprefix(f"{cmd}: ")


@pytest.fixture(scope="module")
def userns_allowed(runc: Runc, busybox: Path) -> bool:
    """Whether this kernel lets a container create a user namespace at all, unfiltered.

    It refuses (EPERM) for a process whose root is not its mount namespace's root, which is
    what every container is when the runtime itself runs in a chroot (pivot_root there swaps
    the chroot's mount, not the namespace's root): then a refusal cannot be the filter's.
    """
    unconfined = runc.run(busybox, ["sh", "-c", TRY], seccomp=None)
    allowed = outcome(unconfined, "unshare -U true") == "ok"
    # Only a chroot'ed runtime may see this refusal; anywhere else it is a failure of ours.
    assert allowed or _in_chroot(), unconfined.stdout
    return allowed


def _in_chroot() -> bool:
    """Whether this process's / is a subtree of another filesystem tree (a chroot), not the
    root of a mount namespace: PID 1 has another root, or / is mounted from a subdirectory."""
    try:
        root, pid1_root = os.stat("/"), os.stat("/proc/1/root")
        return (root.st_dev, root.st_ino) != (pid1_root.st_dev, pid1_root.st_ino)
    except OSError:  # /proc/1 not ours to look at
        with open("/proc/self/mountinfo") as mounts:
            fields = next(line.split() for line in mounts if line.split()[4] == "/")
        return fields[3] != "/"


def _namespace_commands(userns_allowed: bool) -> tuple[str, ...]:
    commands = ("unshare -m true", "hostname blocked-test")
    return ("unshare -U true", *commands) if userns_allowed else commands


def test_namespace_and_hostname_calls_need_sys_admin(
    runc: Runc, busybox: Path, userns_allowed: bool
) -> None:
    confined = runc.run(busybox, ["sh", "-c", TRY], seccomp=RUNTIME_DEFAULT)
    assert confined.returncode == 0, confined.output
    # (without a filter a user namespace needs no capability: a refusal of unshare -U is the
    # filter's wherever ``userns_allowed``)
    for cmd in ("unshare -U true", "unshare -m true", "hostname blocked-test"):
        assert "Operation not permitted" in outcome(confined, cmd), confined.stdout


def test_sys_admin_opens_them(runc: Runc, busybox: Path, userns_allowed: bool) -> None:
    result = runc.run(
        busybox,
        ["sh", "-c", TRY + "hostname"],
        seccomp=default_profile(SYS_ADMIN),
        capabilities=SYS_ADMIN,
    )
    assert result.returncode == 0, result.output
    for cmd in _namespace_commands(userns_allowed):
        assert outcome(result, cmd) == "ok", result.stdout
    assert result.stdout.rstrip().endswith("blocked-test")


# Raw system calls through ctypes, x86_64 numbers; prints "name errno" per call (0: success).
PROBE = """\
import ctypes, os, subprocess, sys, threading
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(name, nr, *args):
    ctypes.set_errno(0)
    rc = libc.syscall(nr, *[ctypes.c_long(a) for a in args])
    print(name, 0 if rc >= 0 else ctypes.get_errno(), flush=True)
call("keyctl", 250, 0, -3, 0)             # KEYCTL_GET_KEYRING_ID of the session keyring
call("add_key", 248, 0, 0, 0, 0, 0)
call("request_key", 249, 0, 0, 0, 0)
call("userfaultfd", 323, 0)
call("io_uring_setup", 425, 1, 0)
call("bpf", 321, 0, 0, 0)
call("perf_event_open", 298, 0, 0, -1, -1, 0)
call("kexec_load", 246, 0, 0, 0, 0)
call("open_by_handle_at", 304, -100, 0, 0)
call("acct", 163, 0)
call("swapoff", 168, 0)
call("quotactl", 179, 0, 0, 0, 0)
call("reboot", 169, 0, 0, 0, 0)
call("init_module", 175, 0, 0, 0)
call("ptrace", 101, 16, 1, 0, 0)          # PTRACE_ATTACH to pid 1
call("kcmp", 312, os.getpid(), os.getpid(), 0, 0, 0)  # KCMP_FILE
call("clock_settime", 227, 0, 0)
call("settimeofday", 164, 0, 0)
call("mount", 165, 0, 0, 0, 0, 0)
call("setns", 308, -1, 0)
call("unshare-user", 272, 0x10000000)
call("unshare-files", 272, 0x00000400)    # CLONE_FILES: no namespace, allowed
call("clone3", 435, 0, 0)
call("personality-query", 135, 0xFFFFFFFF)
call("personality-read-implies-exec", 135, 0x0400000)
call("socket-vsock", 41, 40, 1, 0)
call("socket-inet", 41, 2, 1, 0)
t = threading.Thread(target=lambda: print("thread ran", flush=True)); t.start(); t.join()
print("child said", subprocess.run(["/bin/true"]).returncode, flush=True)
"""

BLOCKED_PROBES = ("keyctl", "add_key", "request_key", "userfaultfd", "io_uring_setup", "bpf",
                  "perf_event_open", "kexec_load", "open_by_handle_at", "acct", "swapoff",
                  "quotactl", "reboot", "init_module", "ptrace", "kcmp", "clock_settime", "settimeofday",
                  "mount", "setns", "unshare-user", "personality-read-implies-exec",
                  "socket-vsock")  # fmt: skip
EPERM, ENOSYS = "1", "38"


def probe(runc: Runc, rootfs: Path, *, seccomp: dict[str, Any] | None) -> dict[str, str]:
    result = runc.run(
        rootfs, [HOST_PYTHON, "-I", "-S", "-c", PROBE], seccomp=seccomp, mounts=[HOST_USR]
    )
    assert result.returncode == 0, result.output
    errnos = {}
    for line in result.stdout.splitlines():
        name, _, value = line.rpartition(" ")
        errnos[name] = value
    return errnos


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe uses x86_64 numbers")
def test_raw_system_calls(runc: Runc, host_tools: Path) -> None:
    errnos = probe(runc, host_tools, seccomp=RUNTIME_DEFAULT)
    for name in BLOCKED_PROBES:
        assert errnos[name] == EPERM, f"{name}: errno {errnos[name]}"
    assert errnos["clone3"] == ENOSYS
    assert errnos["unshare-files"] == "0"
    assert errnos["personality-query"] == "0"
    assert errnos["socket-inet"] == "0"
    # glibc falls back from clone3 to clone for threads and for posix_spawn.
    assert errnos["thread"] == "ran"
    assert errnos["child said"] == "0"


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the probe uses x86_64 numbers")
def test_raw_system_calls_unconfined(runc: Runc, host_tools: Path, userns_allowed: bool) -> None:
    errnos = probe(runc, host_tools, seccomp=None)
    # The keyring and new user namespaces are the kernel's to give: the filter is what refused.
    assert errnos["keyctl"] == "0"
    if userns_allowed:
        assert errnos["unshare-user"] == "0"
    assert errnos["clone3"] != ENOSYS
    assert errnos["personality-read-implies-exec"] == "0"


# --------------------------------------------------------------------------------------------
# no_new_privs off, non-root users, Localhost profiles
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("uid", [0, 1000], ids=["root", "uid-1000"])
def test_filter_is_installed_without_no_new_privs_or_sys_admin(
    runc: Runc, busybox: Path, uid: int
) -> None:
    # seccomp(2) needs no_new_privs or CAP_SYS_ADMIN. Without no_new_privs runc installs the
    # filter while it still has all capabilities, before it switches user and drops them; the
    # filter must then allow what runc itself does after that point (setresuid, capset, ...).
    result = runc.run(
        busybox,
        ["sh", "-c", shlex.join(SHOW_STATUS) + "; id -u; hostname x 2>&1; true"],
        seccomp=RUNTIME_DEFAULT,
        no_new_privileges=False,
        uid=uid,
    )
    assert result.returncode == 0, result.output
    assert status_field(result.stdout, "NoNewPrivs") == "0"
    assert status_field(result.stdout, "Seccomp") == "2"
    assert f"\n{uid}\n" in result.stdout
    assert "Operation not permitted" in result.stdout


async def test_localhost_profile_end_to_end(runc: Runc, busybox: Path, tmp_path: Path) -> None:
    path = tmp_path / "no-mkdir.json"
    path.write_text(
        json.dumps(
            {
                "defaultAction": "SCMP_ACT_ALLOW",
                "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
                "syscalls": [
                    {"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13},
                    {"names": ["no_such_call"], "action": "SCMP_ACT_ERRNO", "comment": "skipped"},
                ],
            }
        )
    )
    security = api_pb2.LinuxContainerSecurityContext(
        seccomp=api_pb2.SecurityProfile(
            profile_type=api_pb2.SecurityProfile.Localhost, localhost_ref=str(path)
        )
    )
    seccomp = await linux_seccomp(security, capabilities=DEFAULT_CAPABILITIES)
    script = textwrap.dedent("""\
        mkdir /tmp/x 2>&1 || true
        touch /tmp/y && echo touched
    """)
    result = runc.run(busybox, ["sh", "-c", script], seccomp=seccomp)
    assert result.returncode == 0, result.output
    assert "Permission denied" in result.stdout  # errno 13 from the profile
    assert "touched" in result.stdout


async def test_pause_container_profile(runc: Runc, busybox: Path) -> None:
    # The sandbox's own security context, as kubelet sends it, for a pause-like process.
    security = api_pb2.LinuxSandboxSecurityContext(
        seccomp=api_pb2.SecurityProfile(profile_type=api_pb2.SecurityProfile.RuntimeDefault)
    )
    seccomp = await linux_seccomp(security, capabilities=DEFAULT_CAPABILITIES)
    result = runc.run(busybox, SHOW_STATUS, seccomp=seccomp, uid=65535)
    assert result.returncode == 0, result.output
    assert status_field(result.stdout, "Seccomp") == "2"
    assert status_field(result.stdout, "NoNewPrivs") == "1"
