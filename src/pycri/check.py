"""``pycri check``: what this node lacks to run pycri, and how to get it."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from pycri.config import Config
from pycri.net import cni

CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")


@dataclass(frozen=True)
class Finding:
    ok: bool
    what: str
    fix: str = ""


def _cgroup_mode() -> str:
    if Path("/sys/fs/cgroup/cgroup.controllers").exists():
        return "v2"
    if Path("/sys/fs/cgroup/memory").is_dir():
        return "v1"
    return ""


def run_checks(config: Config) -> list[Finding]:
    found: list[Finding] = []

    def binary(name: str, package: str) -> None:
        path = shutil.which(name)
        found.append(
            Finding(bool(path), f"{name}: {path or 'missing'}", f"apt-get install {package}")
        )

    binary("runc", "runc")
    if config.managed_containerd:
        binary(config.containerd_binary, "containerd")
    else:
        sock = Path(config.containerd_address)
        found.append(
            Finding(sock.exists(), f"containerd socket {sock}", "start containerd or fix the path")
        )
    filesystems = Path("/proc/filesystems").read_text()
    found.append(Finding("overlay" in filesystems, "kernel overlay filesystem", "modprobe overlay"))
    for ns in ("net", "ipc", "uts", "pid", "mnt"):
        found.append(
            Finding(
                Path(f"/proc/self/ns/{ns}").exists(),
                f"kernel {ns} namespaces",
                "a kernel with namespaces",
            )
        )
    mode = _cgroup_mode()
    found.append(Finding(bool(mode), f"cgroups {mode or 'not mounted'}", "mount cgroupfs"))
    for plugin in CNI_PLUGINS:
        where = next((d for d in config.cni_bin_dirs if (Path(d) / plugin).exists()), None)
        found.append(
            Finding(
                where is not None,
                f"CNI plugin {plugin}: {where or 'missing'}",
                "apt-get install containernetworking-plugins",
            )
        )
    found += cni_checks(config)
    return found


def cni_checks(config: Config) -> list[Finding]:
    """The CNI network config: present, parses, its plugins found and speaking its version.

    The same checks the daemon's config watcher makes (``PluginRunner.validate`` runs each
    plugin's VERSION command), so "ok" here means NetworkReady=true there.
    """
    conf_dir = Path(config.cni_conf_dir)
    files = cni.config_files(conf_dir)
    if not files:
        return [
            Finding(
                False,
                f"CNI config in {conf_dir}: none (pods get loopback only)",
                "install a CNI config (e.g. examples/cni/10-pycri.conflist) or run "
                "host-network pods only",
            )
        ]
    try:
        network = cni.load_file(files[0])
    except cni.CNIConfigError as err:
        return [Finding(False, f"CNI config {files[0]}: {err}", "fix or remove the file")]
    found = [
        Finding(
            True,
            f"CNI config {files[0]}: network {network.name!r}, cniVersion "
            f"{network.cni_version}, plugins {', '.join(network.plugin_types)}",
        )
    ]
    runner = cni.PluginRunner(bin_dirs=config.cni_bin_dirs, timeout=10)
    try:
        asyncio.run(runner.validate(network))
        found.append(Finding(True, "CNI plugins of the config present and compatible"))
    except cni.CNIConfigError as err:
        found.append(
            Finding(
                False,
                str(err),
                "apt-get install containernetworking-plugins or pass --cni-bin-dir",
            )
        )
    if "portmap" in network.plugin_types:
        path = shutil.which("iptables")
        found.append(
            Finding(
                bool(path),
                f"iptables (for portmap): {path or 'missing'}",
                "apt-get install iptables",
            )
        )
    return found


def report(findings: list[Finding]) -> tuple[str, bool]:
    lines = []
    for f in findings:
        mark = "ok  " if f.ok else "MISSING"
        lines.append(f"{mark:8} {f.what}" + ("" if f.ok else f"  -> {f.fix}"))
    return "\n".join(lines), all(f.ok for f in findings)
