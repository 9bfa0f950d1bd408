"""The two runtimes under test, started side by side on this machine, and their memory.

- **pycri**: ``pycri serve --enable-fault-injection`` with its managed containerd (containerd's
  CRI plugin disabled there), own socket, root and state under a temp dir.
- **containerd-CRI**: Debian's ``/usr/bin/containerd`` with its CRI plugin enabled, from a
  generated config (version 2) with its own root, state and socket under a temp dir; the
  same runc v2 shim, overlayfs, cgroupfs (``SystemdCgroup = false``), pause image
  ``registry.k8s.io/pause:3.9``, an empty CNI conf dir (host-network pods need none) and
  ``restrict_oom_score_adj = true`` (this VM drops CAP_SYS_RESOURCE, so a negative
  oom_score_adj fails in runc); registry hosts from ``config_path = <base>/certs.d`` (the
  pull scenario puts its local registry's ``hosts.toml`` there).

Both get the same busybox and pause images, built by ``pycri.testing.images`` and loaded
into their containerd (namespace ``k8s.io``) with ``pycri.images.importer``, so neither pulls.

Cleanup is part of the contract: ``stop`` ends the daemon, then any shim still serving that
containerd address, then unmounts whatever is left under the temp dir and removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.cri import CriClient
from bench.specs import BUSYBOX_REF, PAUSE_REF
from pycri.containerd.client import ContainerdClient
from pycri.images.importer import import_tarball
from pycri.testing.images import build_busybox_image, build_pause_image

PYCRI_BINARY = Path(sys.executable).parent / "pycri"
CONTAINERD_BINARY = "/usr/bin/containerd"
CNI_BIN_DIR = "/usr/lib/cni"
READY_TIMEOUT = 60.0
STOP_GRACE = 30.0


def short_temp_dir(*, prefix: str) -> Path:
    """A temp dir under /tmp: unix socket paths must stay below 108 bytes."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def render_containerd_cri_config(*, base: Path) -> str:
    """containerd 1.6 config (version 2) with the CRI plugin on, everything under ``base``."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return "\n".join(
        [
            "version = 2",
            f'root = "{base}/root"',
            f'state = "{base}/state"',
            "",
            "[grpc]",
            f'  address = "{base}/containerd.sock"',
            "",
            "[ttrpc]",
            f'  address = "{base}/containerd.sock.ttrpc"',
            "",
            "[debug]",
            '  level = "info"',
            "",
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{base}/root/opt"',
            "",
            f"[{cri}]",
            f'  sandbox_image = "{PAUSE_REF}"',
            "  disable_cgroup = false",
            "  restrict_oom_score_adj = true",
            "  disable_apparmor = true",
            "  enable_selinux = false",
            '  stream_server_address = "127.0.0.1"',
            '  stream_server_port = "0"',
            "",
            f"[{cri}.registry]",
            f'  config_path = "{base}/certs.d"',
            "",
            f"[{cri}.cni]",
            f'  bin_dir = "{CNI_BIN_DIR}"',
            f'  conf_dir = "{base}/cni"',
            "",
            f"[{cri}.containerd]",
            '  snapshotter = "overlayfs"',
            '  default_runtime_name = "runc"',
            "",
            f"[{cri}.containerd.runtimes.runc]",
            '  runtime_type = "io.containerd.runc.v2"',
            "",
            f"[{cri}.containerd.runtimes.runc.options]",
            "  SystemdCgroup = false",
            "",
        ]
    )


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size (shared pages split between their users), 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def shim_pids(*, containerd_address: Path) -> list[int]:
    """Pids of the containerd-shim processes serving one containerd address."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0].endswith(b"containerd-shim-runc-v2"):
            continue
        with contextlib.suppress(ValueError, IndexError):
            if argv[argv.index(b"-address") + 1] == str(containerd_address).encode():
                pids.append(int(entry.name))
    return pids


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _children_of(parents: set[int]) -> list[int]:
    """Direct children of some processes: a shim's children are its containers' inits."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid in parents:
            children.append(int(entry.name))
    return children


def kill_shims_and_containers(*, containerd_address: Path) -> int:
    """SIGKILL the shims of one containerd and their containers (a container's init is the
    shim's child; killing it ends its PID namespace). Returns how many shims there were."""
    shims = shim_pids(containerd_address=containerd_address)
    if shims:
        _kill_pids(_children_of(set(shims)))
        _kill_pids(shims)
    return len(shims)


def _umount_below(base: Path) -> None:
    mounts = Path("/proc/self/mounts").read_text().splitlines()
    targets = [m.split()[1] for m in mounts if m.split()[1].startswith(str(base) + "/")]
    for target in sorted(targets, key=len, reverse=True):
        subprocess.run(["umount", "-l", target], capture_output=True, check=False)


@dataclass(frozen=True)
class MemorySample:
    """Resident memory (bytes) of a runtime's daemon processes and of its shims."""

    daemon_bytes: int  # RSS of the daemon processes, summed
    parts: dict[str, int]
    daemon_pss_bytes: int
    shim_bytes: int
    shims: int
    parts_pss: dict[str, int] = field(default_factory=dict)  # PSS by daemon process


class Runtime:
    """One CRI runtime under test: a name, a socket, its containerd and its processes."""

    name: str = ""

    def __init__(self, *, base: Path) -> None:
        self.base = base
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def cri_socket(self) -> Path:
        raise NotImplementedError

    @property
    def containerd_socket(self) -> Path:
        raise NotImplementedError

    @property
    def log_path(self) -> Path:
        return self.base / "daemon.log"

    def daemon_pids(self) -> dict[str, int]:
        """The processes whose memory counts as the runtime's (name → pid)."""
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def memory(self) -> MemorySample:
        pids = self.daemon_pids()
        parts = {name: rss_bytes(pid) for name, pid in pids.items()}
        parts_pss = {name: pss_bytes(pid) for name, pid in pids.items()}
        shims = shim_pids(containerd_address=self.containerd_socket)
        return MemorySample(
            daemon_bytes=sum(parts.values()),
            parts=parts,
            daemon_pss_bytes=sum(parts_pss.values()),
            shim_bytes=sum(rss_bytes(pid) for pid in shims),
            shims=len(shims),
            parts_pss=parts_pss,
        )

    async def wait_ready(self, *, timeout: float = READY_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        client = CriClient(socket=self.cri_socket)
        try:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(f"{self.name} exited at start:\n{self.log_tail()}")
                if self.cri_socket.exists():
                    with contextlib.suppress(Exception):
                        await client.version(timeout=1.0)
                        return
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} did not answer:\n{self.log_tail()}")
                await asyncio.sleep(0.1)
        finally:
            await client.close()

    def log_tail(self, *, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def _spawn(self, argv: list[str]) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True
            )

    def _terminate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        """Stop the daemon, kill leftover shims (and their containers), unmount, remove."""
        self._terminate()
        kill_shims_and_containers(containerd_address=self.containerd_socket)
        _umount_below(self.base)
        shutil.rmtree(self.base, ignore_errors=True)


class Pycri(Runtime):
    """``pycri serve`` with its managed containerd and fault injection on."""

    name = "pycri"

    @property
    def cri_socket(self) -> Path:
        return self.base / "pycri.sock"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def containerd_socket(self) -> Path:
        return self.state / "containerd" / "containerd.sock"

    def managed_containerd_pid(self) -> int | None:
        try:
            return int((self.state / "containerd" / "containerd.pid").read_text())
        except (OSError, ValueError):
            return None

    def daemon_pids(self) -> dict[str, int]:
        pids = {}
        if self.proc is not None:
            pids["pycri"] = self.proc.pid
        containerd_pid = self.managed_containerd_pid()
        if containerd_pid is not None:
            pids["containerd"] = containerd_pid
        return pids

    def serve_argv(self) -> list[str]:
        return [
            str(PYCRI_BINARY),
            "serve",
            "--socket",
            str(self.cri_socket),
            "--root",
            str(self.base / "root"),
            "--state",
            str(self.state),
            "--enable-fault-injection",
        ]

    def start(self) -> None:
        self._spawn(self.serve_argv())

    def stop(self) -> None:
        containerd_pid = self.managed_containerd_pid()
        self._terminate()
        # pycri stops its containerd on SIGTERM; a daemon that died leaves it running
        if containerd_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(containerd_pid, signal.SIGKILL)
        super().stop()


class ContainerdCri(Runtime):
    """Debian's containerd with its own CRI plugin enabled."""

    name = "containerd-cri"

    @property
    def cri_socket(self) -> Path:
        return self.base / "containerd.sock"

    @property
    def containerd_socket(self) -> Path:
        return self.cri_socket

    @property
    def registry_hosts_dir(self) -> Path:
        """``config_path`` of the CRI plugin's registry: ``<host>/hosts.toml`` files."""
        return self.base / "certs.d"

    def daemon_pids(self) -> dict[str, int]:
        return {"containerd": self.proc.pid} if self.proc is not None else {}

    def start(self) -> None:
        (self.base / "cni").mkdir(parents=True, exist_ok=True)  # empty: host network only
        config = self.base / "config.toml"
        config.write_text(render_containerd_cri_config(base=self.base))
        self._spawn([CONTAINERD_BINARY, "--config", str(config)])


@dataclass(frozen=True)
class ImageTarballs:
    busybox: Path
    pause: Path


def build_images(*, directory: Path) -> ImageTarballs:
    """Build the busybox and pause OCI tarballs (blocking; a second or two)."""
    busybox = build_busybox_image(directory / "busybox.oci.tar", ref=BUSYBOX_REF)
    pause = build_pause_image(directory / "pause.oci.tar", ref=PAUSE_REF)
    return ImageTarballs(busybox=busybox.path, pause=pause.path)


async def load_images(*, runtime: Runtime, tarballs: ImageTarballs, timeout: float = 30.0) -> None:
    """Import both images into the runtime's containerd, then wait until its CRI lists them."""
    client = ContainerdClient(str(runtime.containerd_socket))
    try:
        await client.ensure_namespace()
        for tarball in (tarballs.busybox, tarballs.pause):
            await import_tarball(client, tarball)
    finally:
        await client.close()
    cri = CriClient(socket=runtime.cri_socket)
    deadline = time.monotonic() + timeout
    try:
        for ref in (BUSYBOX_REF, PAUSE_REF):
            while not await cri.image_present(ref=ref):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{runtime.name} does not list {ref} after import")
                await asyncio.sleep(0.2)
    finally:
        await cri.close()


def cpu_seconds(pids: dict[str, int]) -> float:
    """User + system CPU seconds the processes have used so far (gone ones count 0)."""
    total = 0
    for pid in pids.values():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _cpu_times() -> tuple[int, int]:
    """(idle, total) jiffies of all CPUs from /proc/stat (idle includes iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return fields[3] + fields[4], sum(fields[:8])


async def wait_for_quiet_machine(
    *, idle_fraction: float = 0.85, window_seconds: float = 0.3, max_seconds: float = 15.0
) -> float:
    """Wait until the CPUs were ``idle_fraction`` idle over a window; return the seconds waited.

    Between scenarios a runtime still finishes work in the background (containerd's GC
    removing snapshots, shims exiting); with both runtimes on one machine that work would
    land in the other runtime's measurement. Gives up after ``max_seconds``.
    """
    started = time.monotonic()
    while time.monotonic() - started < max_seconds:
        idle0, total0 = _cpu_times()
        await asyncio.sleep(window_seconds)
        idle1, total1 = _cpu_times()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) >= idle_fraction:
            break
    return time.monotonic() - started
