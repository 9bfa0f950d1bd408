"""``pycri check``: what this node lacks to run pycri, said so that an operator can act on it.

Each finding is one line: ``ok``, ``MISSING`` (pycri cannot work as configured; the line
ends with the command or change that fixes it) or ``NOTE`` (works, but worth knowing: a
system containerd on the default paths, a degraded network mode). The exit status is 1
when anything is missing. The checks only read: they never load modules, start services
or write files.
"""

from __future__ import annotations

import asyncio
import enum
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from pycri.api.server import socket_answers
from pycri.config import Config
from pycri.net import cni
from pycri.oci.criu import criu_status
from pycri.oci.runtime_handlers import RuntimeHandlers
from pycri.paths import Paths
from pycri.security.node import probe_node_security, runc_check_line

CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")
SYSTEM_CONTAINERD_SOCKET = Path("/run/containerd/containerd.sock")
SYSTEM_CONTAINERD_ROOT = Path("/var/lib/containerd")
CGROUP_ROOT = Path("/sys/fs/cgroup")
# controllers pycri sets limits with; v1 mounts them as hierarchies, v2 lists them
CGROUP_CONTROLLERS = ("cpu", "memory", "pids")
NAMESPACES = ("net", "ipc", "uts", "pid", "mnt")


class Level(enum.Enum):
    OK = "ok"
    MISSING = "MISSING"
    NOTE = "NOTE"


@dataclass(frozen=True)
class Finding:
    level: Level
    what: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.level is not Level.MISSING


def ok(what: str) -> Finding:
    return Finding(Level.OK, what)


def missing(what: str, fix: str) -> Finding:
    return Finding(Level.MISSING, what, fix)


def note(what: str, advice: str = "") -> Finding:
    return Finding(Level.NOTE, what, advice)


def _binary(name: str, package: str) -> Finding:
    path = shutil.which(name)
    if path:
        return ok(f"{name}: {path}")
    return missing(f"{name}: not found on PATH", f"apt-get install {package}")


def containerd_checks(config: Config) -> list[Finding]:
    found: list[Finding] = []
    system_live = SYSTEM_CONTAINERD_SOCKET.exists() and socket_answers(SYSTEM_CONTAINERD_SOCKET)
    if config.managed_containerd:
        found.append(_binary(config.containerd_binary, "containerd"))
        found.append(
            ok(f"managed containerd: private socket {config.containerd_socket}, root {config.root}")
        )
        if system_live:
            found.append(
                note(
                    f"a system containerd answers on {SYSTEM_CONTAINERD_SOCKET} (root "
                    f"{SYSTEM_CONTAINERD_ROOT}); pycri never uses it or its paths",
                    "leave it, or stop it if nothing else needs it: "
                    "systemctl disable --now containerd",
                )
            )
        return found
    address = Path(config.containerd_address)
    if not address.exists():
        found.append(
            missing(
                f"containerd socket {address}: does not exist",
                "start that containerd, fix --containerd-address, or drop it to let pycri "
                "run its own",
            )
        )
    elif not socket_answers(address):
        found.append(missing(f"containerd socket {address}: nothing answers", "start containerd"))
    else:
        found.append(ok(f"containerd socket {address}: answers"))
    if address == SYSTEM_CONTAINERD_SOCKET:
        found.append(
            note(
                "pycri uses the system containerd: its own CRI plugin also manages namespace "
                "k8s.io",
                'disable it there: disabled_plugins = ["io.containerd.grpc.v1.cri"] in '
                "/etc/containerd/config.toml",
            )
        )
    return found


def kernel_checks() -> list[Finding]:
    found: list[Finding] = []
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" in filesystems:
        found.append(ok("kernel overlay filesystem"))
    else:
        found.append(missing("kernel overlay filesystem: not available", "modprobe overlay"))
    absent = [ns for ns in NAMESPACES if not Path(f"/proc/self/ns/{ns}").exists()]
    if absent:
        found.append(
            missing(f"kernel namespaces missing: {', '.join(absent)}", "a kernel with namespaces")
        )
    else:
        found.append(ok(f"kernel namespaces: {', '.join(NAMESPACES)}"))
    found.append(cgroup_check())
    return found


def cgroup_check() -> Finding:
    """cgroup version, the driver pycri uses with it, and the controllers it needs."""
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        try:
            have = set((CGROUP_ROOT / "cgroup.controllers").read_text().split())
        except OSError:
            have = set()
        version = "v2 (unified)"
    elif (CGROUP_ROOT / "memory").is_dir():
        have = {c for c in CGROUP_CONTROLLERS if (CGROUP_ROOT / c).is_dir()}
        version = "v1 (legacy hierarchies)"
    else:
        return missing(
            "cgroups: nothing mounted at /sys/fs/cgroup",
            "mount cgroup2 on /sys/fs/cgroup (or boot with systemd, which does)",
        )
    lacking = [c for c in CGROUP_CONTROLLERS if c not in have]
    if lacking:
        return missing(
            f"cgroups {version}: controllers missing: {', '.join(lacking)}",
            "enable them on the kernel command line (e.g. cgroup_enable=memory) and reboot",
        )
    return ok(f"cgroups {version}, cgroupfs driver; controllers {', '.join(CGROUP_CONTROLLERS)}")


def cni_checks(config: Config) -> list[Finding]:
    """The CNI network config: present, parses, its plugins found and speaking its version.

    The same checks the daemon's config watcher makes (``PluginRunner.validate`` runs each
    plugin's VERSION command), so "ok" here means NetworkReady=true there.
    """
    found: list[Finding] = []
    for plugin in CNI_PLUGINS:
        where = next((d for d in config.cni_bin_dirs if (Path(d) / plugin).exists()), None)
        if where is not None:
            found.append(ok(f"CNI plugin {plugin}: {where}"))
        else:
            found.append(
                missing(
                    f"CNI plugin {plugin}: not in {', '.join(config.cni_bin_dirs)}",
                    "apt-get install containernetworking-plugins (or pass --cni-bin-dir)",
                )
            )
    conf_dir = Path(config.cni_conf_dir)
    files = cni.config_files(conf_dir)
    if not files:
        found.append(
            note(
                f"CNI config in {conf_dir}: none, so pods get loopback only and Status says "
                "NetworkReady=false",
                f"install a network config, e.g. cp examples/cni/10-pycri.conflist {conf_dir}/",
            )
        )
        return found
    try:
        network = cni.load_file(files[0])
    except cni.CNIConfigError as err:
        found.append(missing(f"CNI config {files[0]}: {err}", "fix or remove the file"))
        return found
    found.append(
        ok(
            f"CNI config {files[0]}: network {network.name!r}, cniVersion "
            f"{network.cni_version}, plugins {', '.join(network.plugin_types)}"
        )
    )
    runner = cni.PluginRunner(bin_dirs=config.cni_bin_dirs, timeout=10)
    try:
        asyncio.run(runner.validate(network))
        found.append(ok("CNI plugins of the config present and compatible"))
    except cni.CNIConfigError as err:
        found.append(
            missing(str(err), "apt-get install containernetworking-plugins or pass --cni-bin-dir")
        )
    if "portmap" in network.plugin_types:
        found.append(_binary("iptables", "iptables"))
    return found


def daemon_checks(config: Config) -> list[Finding]:
    sock = Path(config.socket)
    if sock.exists() and socket_answers(sock):
        return [note(f"a pycri daemon answers on {sock}")]
    return [note(f"no daemon answers on {sock} (yet)", "start it: scripts/run.sh")]


def security_checks() -> list[Finding]:
    """seccomp filters and AppArmor in the kernel, and whether runc can apply filters."""
    lines = [*probe_node_security().check_lines()]
    if shutil.which("runc"):
        lines.append(runc_check_line("runc"))
    return [ok(what) if good else missing(what, fix) for good, what, fix in lines]


def runtime_checks(config: Config) -> list[Finding]:
    """Each runtime handler as the daemon's probe sees it, and CRIU for checkpoints."""
    paths = Paths(root=Path(config.root), state=Path(config.state))
    handlers = RuntimeHandlers(config, paths=paths)
    asyncio.run(handlers.probe())
    found = []
    for handler in handlers.all():
        what = f"runtime handler {handler.name} ({handler.runtime_type} {handler.binary})".strip()
        if handler.error:
            default = handler.name == config.default_runtime_handler
            found.append(
                (missing if default else note)(
                    f"{what}: {handler.error}",
                    "install the binary or remove the [runtimes] table"
                    if default
                    else "pods asking for it are refused",
                )
            )
        else:
            rro = "with" if handler.features.recursive_read_only_mounts else "without"
            found.append(ok(f"{what}: {rro} recursive read-only mounts"))
    criu = asyncio.run(criu_status())
    if criu.usable:
        found.append(ok(f"criu {criu.version}: containers can be checkpointed"))
    else:
        fix = (
            "apt-get install criu"
            if not criu.binary
            else "a CRIU release that knows this kernel, or a kernel this CRIU knows"
        )
        found.append(note(f"checkpoints refused: {criu.problem}", fix))
    return found


def run_checks(config: Config) -> list[Finding]:
    found = [_binary("runc", "runc")]
    found += runtime_checks(config)
    found += containerd_checks(config)
    found += kernel_checks()
    found += security_checks()
    found += cni_checks(config)
    found += daemon_checks(config)
    if os.geteuid() != 0:
        found.append(missing("not running as root", "run pycri (and this check) as root"))
    return found


def report(findings: list[Finding]) -> tuple[str, bool]:
    lines = []
    for f in findings:
        line = f"{f.level.value:8} {f.what}"
        if f.fix:
            line += f"\n{'':8}   -> {f.fix}"
        lines.append(line)
    problems = sum(1 for f in findings if not f.ok)
    lines.append(
        "everything pycri needs is here" if not problems else f"{problems} thing(s) missing"
    )
    return "\n".join(lines), problems == 0
