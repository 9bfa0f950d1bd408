"""What the integration tests share: real pycri daemons in temp dirs, CRI clients, test images.

Everything runs as root on the real kernel with Debian's containerd and runc. Each daemon
gets its own dirs, socket and managed containerd, so tests never touch a system containerd
or each other's state. The fixtures built on these are in ``conftest.py``; test modules
import from here, never from ``conftest``.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from cri_api.v1 import api_pb2, api_pb2_grpc

from pycri.cgroups import cgroup_dirs
from pycri.containerd.client import ContainerdClient
from pycri.images.importer import import_tarball
from pycri.testing.images import (
    BuiltImage,
    LayerEntry,
    build_busybox_image,
    build_image,
    build_pause_image,
)

REPO = Path(__file__).resolve().parents[2]
PYCRI = Path(sys.executable).parent / "pycri"
# crictl v1.26.1 built from upstream, beside the clone on the project's machines and in CI;
# a user's clone has none, and the tests driving it skip then.
CRICTL = Path(os.environ.get("PYCRI_TEST_CRICTL", REPO.parent / "shared" / "bin" / "crictl"))


def short_tmp(prefix: str) -> Path:
    # unix socket paths are limited to 108 bytes: keep the dirs short
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def kill_shims(address: str) -> None:
    """Kill shims left by tests (a failed test must not leak processes into the next run)."""
    out = subprocess.run(["pgrep", "-af", "containerd-shim"], capture_output=True, text=True)
    for line in out.stdout.splitlines():
        pid, _, cmd = line.partition(" ")
        if f"-address {address}" in cmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def umount_below(base: Path) -> None:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    targets = [m.split()[1] for m in mounts if m.split()[1].startswith(str(base))]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True)


@dataclass
class Daemon:
    """A running ``pycri serve`` subprocess with its own dirs and socket."""

    base: Path
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.base / "pycri.sock"

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def log_path(self) -> Path:
        return self.base / "pycri.log"

    @property
    def containerd_socket(self) -> Path:
        return self.state / "containerd" / "containerd.sock"

    @property
    def cgroup_parent(self) -> str:
        """The default cgroup parent of this daemon's pods: its own, never another's."""
        return f"/pycri-test-{self.base.name}"

    def args(self) -> list[str]:
        return [
            str(PYCRI),
            "serve",
            "--socket",
            str(self.socket),
            "--root",
            str(self.root),
            "--state",
            str(self.state),
            "--log-level",
            "debug",
            "--cgroup-parent",
            self.cgroup_parent,
            *self.extra_args,
        ]

    def start(self, *, wait: bool = True, timeout: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args(), stdout=log, stderr=log, cwd=REPO)
        log.close()
        if wait:
            self.wait_ready(timeout=timeout)

    def wait_ready(self, *, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"pycri exited with {self.proc.returncode}:\n{self.log()}")
            if self.socket.exists():
                with grpc.insecure_channel(f"unix://{self.socket}") as ch:
                    stub = api_pb2_grpc.RuntimeServiceStub(ch)
                    try:
                        stub.Version(api_pb2.VersionRequest(), timeout=1)
                        return
                    except grpc.RpcError:
                        pass
            time.sleep(0.1)
        raise TimeoutError(f"pycri did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def cleanup(self) -> None:
        self.stop()
        # the managed containerd outlives a SIGKILLed pycri by design: stop it too
        pid_file = self.state / "containerd" / "containerd.pid"
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
        kill_shims(str(self.containerd_socket))
        umount_below(self.base)
        shutil.rmtree(self.base, ignore_errors=True)
        remove_cgroup_tree(self.cgroup_parent)


def cgroup_dirs_below(parent: str) -> list[Path]:
    """Every cgroup directory below ``parent`` in every hierarchy (the parents excluded);
    cgroups removed during the walk are skipped."""
    found = []
    for top in cgroup_dirs(parent):
        found += cgroup_dirs_below_one(top)
    return found


def remove_cgroup_tree(parent: str) -> None:
    """Remove a test daemon's cgroup tree; processes left in it (a test that failed before
    removing its pods: the shims are gone, their pause and app processes live on) are the
    daemon's own and are killed first."""
    for top in cgroup_dirs(parent):
        for directory in [top, *cgroup_dirs_below_one(top)]:
            with contextlib.suppress(OSError, ValueError):
                for pid in (directory / "cgroup.procs").read_text().split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.2)
    for top in cgroup_dirs(parent):
        for directory in sorted(cgroup_dirs_below_one(top), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def cgroup_dirs_below_one(top: Path) -> list[Path]:
    return [Path(d) / sub for d, subdirs, _ in os.walk(top) for sub in subdirs]


def pycri_cli(daemon: Daemon, *command: str, check: bool = True) -> str:
    """Run ``pycri COMMAND`` (``check --orphans``, ``gc``) on a daemon's dirs; its stdout."""
    args = [
        "--root",
        str(daemon.root),
        "--state",
        str(daemon.state),
        "--cgroup-parent",
        daemon.cgroup_parent,
    ]
    done = subprocess.run(
        [str(PYCRI), *command, *args], capture_output=True, text=True, timeout=120
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done.stdout


class CRI:
    """grpc.aio stubs for one daemon socket."""

    def __init__(self, socket: Path) -> None:
        self.channel = grpc.aio.insecure_channel(f"unix://{socket}")
        self.runtime = api_pb2_grpc.RuntimeServiceStub(self.channel)
        self.image = api_pb2_grpc.ImageServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


async def raw_call(
    cri: CRI, method: str, body: bytes, *, stream: bool = False, timeout: float = 10.0
) -> bytes:
    """Call ``method`` (``/runtime.v1.RuntimeService/Version``) with ``body`` as the raw
    request bytes; the raw response (a stream's messages joined)."""
    identity = (lambda b: b), (lambda b: b)
    if stream:
        call = cri.channel.unary_stream(
            method, request_serializer=identity[0], response_deserializer=identity[1]
        )
        return b"".join([item async for item in call(body, timeout=timeout)])
    unary = cri.channel.unary_unary(
        method, request_serializer=identity[0], response_deserializer=identity[1]
    )
    result: bytes = await unary(body, timeout=timeout)
    return result


async def eventually(predicate, *, timeout: float = 10.0, interval: float = 0.1):  # type: ignore[no-untyped-def]
    """Poll an async predicate until it returns a truthy value; return that value."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {value!r})")
        await asyncio.sleep(interval)


# --- test images (no registry): busybox and pause, built once per process ---------------

BUSYBOX_REF = "docker.io/library/busybox:latest"
PAUSE_REF = "registry.k8s.io/pause:3.9"  # the daemon's default sandbox image


@dataclass(frozen=True)
class BuiltTestImages:
    """Tarballs of the test images (OCI layouts), and a docker-archive variant of busybox."""

    dir: Path
    busybox: BuiltImage
    pause: BuiltImage
    busybox_docker: BuiltImage


_built_test_images: dict[str, BuiltTestImages] = {}
_built_test_images_lock = threading.Lock()


def build_test_images() -> BuiltTestImages:
    """Build the tarballs once per process (blocking); later calls return the same ones."""
    with _built_test_images_lock:
        if "images" not in _built_test_images:
            base = short_tmp("pycri-img-")
            atexit.register(shutil.rmtree, base, True)
            _built_test_images["images"] = BuiltTestImages(
                dir=base,
                busybox=build_busybox_image(base / "busybox.oci.tar", ref=BUSYBOX_REF),
                pause=build_pause_image(base / "pause.oci.tar", ref=PAUSE_REF),
                busybox_docker=build_busybox_image(
                    base / "busybox.docker.tar", ref=BUSYBOX_REF, archive_format="docker"
                ),
            )
        return _built_test_images["images"]


async def import_test_images(containerd_socket: Path) -> BuiltTestImages:
    """Load busybox (``BUSYBOX_REF``) and pause (``PAUSE_REF``) into a containerd (k8s.io).

    For pod and container tests: ``await import_test_images(daemon.containerd_socket)``.
    Idempotent and cheap after the first time (blobs and snapshots are found, not rewritten).
    A daemon finds the images on its next lookup (a miss re-reads containerd).
    """
    images = await asyncio.to_thread(build_test_images)
    client = ContainerdClient(str(containerd_socket))
    try:
        await client.ensure_namespace()
        for built in (images.busybox, images.pause):
            await import_tarball(client, built.path)
    finally:
        await client.close()
    return images


async def build_small_image(
    directory: Path,
    *,
    ref: str,
    user: str = "",
    archive_format: Any = "oci",
    extra: bytes = b"",
    **build_args: Any,
) -> BuiltImage:
    """A one-file image with unique content (so no blob of it is in containerd yet).

    ``build_args`` go to ``pycri.testing.images.build_image`` (``arch``, ``media_types``, ``compress``).
    """
    token = secrets.token_hex(8)
    entries = [
        LayerEntry(path="etc", kind="dir", mode=0o755),
        LayerEntry(path="etc/marker", kind="file", data=f"{token}\n".encode() + extra),
    ]
    fields: dict[str, Any] = {"cmd": ["/bin/true"], "user": user, "labels": {"token": token}}
    return await asyncio.to_thread(
        build_image,
        directory / f"{token}.tar",
        ref=ref,
        entries=entries,
        config_fields=fields,
        archive_format=archive_format,
        **build_args,
    )


@contextlib.asynccontextmanager
async def containerd_of(daemon: Daemon) -> AsyncIterator[ContainerdClient]:
    """A containerd client on a daemon's (managed) containerd, closed after the block."""
    client = ContainerdClient(str(daemon.containerd_socket))
    try:
        yield client
    finally:
        await client.close()


ACTIVE_SNAPSHOT = 2  # containerd.services.snapshots.v1.Kind.ACTIVE


@dataclass(frozen=True)
class Leftovers:
    """What a daemon has made, as containerd and the filesystem say: compared before and after
    a refused request, it shows whether anything was left half-made."""

    containers: frozenset[str]
    tasks: frozenset[str]
    active_snapshots: frozenset[str]
    leases: frozenset[str]
    files: frozenset[
        str
    ]  # dirs under ROOT/{containers,sandboxes,creating}, STATE/{containers,netns}
    cgroups: frozenset[str]  # cgroup dirs below the daemon's default parent, every hierarchy
    mounts: frozenset[str]  # mount points below the daemon's dirs


async def leftovers(daemon: Daemon, client: ContainerdClient) -> Leftovers:
    def entries() -> frozenset[str]:
        dirs = (
            daemon.root / "containers",
            daemon.root / "sandboxes",
            daemon.root / "creating",
            daemon.state / "containers",
            daemon.state / "netns",
        )
        return frozenset(str(p) for d in dirs if d.is_dir() for p in d.iterdir())

    def cgroups() -> frozenset[str]:
        return frozenset(str(p) for p in cgroup_dirs_below(daemon.cgroup_parent))

    snapshots = await client.snapshots.list("overlayfs")
    return Leftovers(
        containers=frozenset(c.id for c in await client.containers.list()),
        tasks=frozenset(t.id for t in await client.tasks.list()),
        active_snapshots=frozenset(s.name for s in snapshots if s.kind == ACTIVE_SNAPSHOT),
        leases=frozenset(lease.id for lease in await client.leases.list()),
        files=await asyncio.to_thread(entries),
        cgroups=await asyncio.to_thread(cgroups),
        mounts=frozenset(await asyncio.to_thread(mounts_below, daemon.base)),
    )


@dataclass(frozen=True)
class CrictlResult:
    returncode: int
    stdout: bytes
    stderr: bytes


async def run_crictl(
    crictl: Path,
    daemon: Daemon,
    *args: str,
    stdin: bytes | None = None,
    timeout: float = 60.0,
) -> CrictlResult:
    """Run the real crictl against ``daemon`` (both endpoints, a generous --timeout)."""
    endpoint = f"unix://{daemon.socket}"
    proc = await asyncio.create_subprocess_exec(
        str(crictl),
        "--runtime-endpoint",
        endpoint,
        "--image-endpoint",
        endpoint,
        "--timeout",
        f"{int(timeout)}s",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(stdin), timeout + 10)
    assert proc.returncode is not None
    return CrictlResult(proc.returncode, out, err)


# --- CNI: one test's own bridge network, on Debian's plugins -------------------------------

DEBIAN_CNI = Path("/usr/lib/cni")

FLAKY_PLUGIN = """#!{python}
# Test plugin: passes the result through. Fails ADD while the file named by failAddIf
# exists, hangs in ADD while hangAddIf exists, fails DEL while failDelIf exists.
import json, os, sys, time
conf = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
def error(msg):
    print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": msg}}))
    sys.exit(1)
if command == "VERSION":
    print(json.dumps({{"cniVersion": "1.0.0", "supportedVersions": ["0.4.0", "1.0.0"]}}))
elif command == "ADD":
    while os.path.exists(conf.get("hangAddIf", "/nonexistent")):
        time.sleep(0.1)
    if os.path.exists(conf.get("failAddIf", "/nonexistent")):
        error("flaky refuses ADD")
    print(json.dumps(conf.get("prevResult") or {{"cniVersion": "1.0.0"}}))
elif command == "DEL" and os.path.exists(conf.get("failDelIf", "/nonexistent")):
    error("flaky says try later")
"""


def used_links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def used_subnets() -> str:
    return subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout


@dataclass
class Net:
    """One test's CNI setup: conf dir, plugin dirs, bridge, subnet, IPAM data dir."""

    base: Path
    bridge: str
    octet: int

    @property
    def conf_dir(self) -> Path:
        return self.base / "net.d"

    @property
    def bin_dir(self) -> Path:
        return self.base / "bin"

    @property
    def ipam_dir(self) -> Path:
        return self.base / "ipam"

    @property
    def subnet(self) -> str:
        return f"10.99.{self.octet}.0/24"

    @property
    def fail_del(self) -> Path:
        return self.base / "fail-del"

    @property
    def fail_add(self) -> Path:
        return self.base / "fail-add"

    @property
    def hang_add(self) -> Path:
        return self.base / "hang-add"

    def clear_flags(self) -> None:
        for flag in (self.fail_del, self.fail_add, self.hang_add):
            flag.unlink(missing_ok=True)

    def conflist(self, *, ipam_subnet: str | None = None, flaky: bool = False) -> dict[str, Any]:
        plugins: list[dict[str, Any]] = [
            {
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": True,
                "ipMasq": False,  # no NAT for egress: these pods talk only on this node
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": ipam_subnet or self.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(self.ipam_dir),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True},
            {"type": "loopback"},
        ]
        if flaky:  # DEL fails at the first, ADD at the second (test switches: flag files)
            plugins.append({"type": "pycri-flaky", "failDelIf": str(self.fail_del)})
            plugins.append(
                {
                    "type": "pycri-flaky",
                    "failAddIf": str(self.fail_add),
                    "hangAddIf": str(self.hang_add),
                }
            )
        return {"cniVersion": "1.0.0", "name": f"pycri-test-{self.octet}", "plugins": plugins}

    def write(self, doc: dict[str, Any] | str, name: str = "10-pycri.conflist") -> None:
        self.conf_dir.mkdir(exist_ok=True)
        tmp = self.conf_dir / f".{name}.tmp"
        tmp.write_text(doc if isinstance(doc, str) else json.dumps(doc, indent=1))
        tmp.rename(self.conf_dir / name)

    def daemon_args(self) -> list[str]:
        return [
            "--cni-conf-dir",
            str(self.conf_dir),
            "--cni-bin-dir",
            str(self.bin_dir),
            "--cni-bin-dir",
            str(DEBIAN_CNI),
        ]

    def allocated_ips(self) -> list[str]:
        """host-local's reservations: one file per IP (besides its lock and cursor)."""
        return sorted(
            p.name
            for p in self.ipam_dir.glob("*/*")
            if p.name != "lock" and not p.name.startswith("last_reserved_ip")
        )

    def bridge_ports(self) -> list[str]:
        brif = Path("/sys/class/net") / self.bridge / "brif"
        return sorted(p.name for p in brif.iterdir()) if brif.is_dir() else []


def mounts_below(base: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [m.split()[4] for m in lines if m.split()[4].startswith(f"{base}/")]


def shims_of(daemon: Daemon) -> list[int]:
    """PIDs of the shims serving this daemon's containerd."""
    out = subprocess.run(["pgrep", "-af", "containerd-shim"], capture_output=True, text=True)
    return [
        int(line.split()[0])
        for line in out.stdout.splitlines()
        if f"-address {daemon.containerd_socket}" in line
    ]
