"""The per-sandbox files every container of a pod shares: hostname, hosts, resolv.conf.

They live in ``ROOT/sandboxes/<id>/`` and are bind-mounted into each container, so a pod's
containers agree on name resolution. resolv.conf comes from the pod's DNSConfig, or is the
host's when the pod gives none (kubelet's ClusterFirst always gives one).
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2

HOST_RESOLV_CONF = Path("/etc/resolv.conf")


@dataclass(frozen=True)
class SandboxFiles:
    dir: Path

    @property
    def hostname(self) -> Path:
        return self.dir / "hostname"

    @property
    def hosts(self) -> Path:
        return self.dir / "hosts"

    @property
    def resolv_conf(self) -> Path:
        return self.dir / "resolv.conf"


def resolv_conf_text(dns: api_pb2.DNSConfig) -> str:
    lines = []
    if dns.searches:
        lines.append("search " + " ".join(dns.searches))
    lines += [f"nameserver {server}" for server in dns.servers]
    if dns.options:
        lines.append("options " + " ".join(dns.options))
    return "\n".join(lines) + "\n"


def hosts_text(hostname: str) -> str:
    lines = [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "fe00::0\tip6-localnet",
        "ff00::0\tip6-mcastprefix",
        "ff02::1\tip6-allnodes",
        "ff02::2\tip6-allrouters",
    ]
    if hostname:
        lines.append(f"127.0.1.1\t{hostname}")
    return "\n".join(lines) + "\n"


def _write_all(files: SandboxFiles, config: api_pb2.PodSandboxConfig, hostname: str) -> None:
    files.dir.mkdir(parents=True, exist_ok=True)
    files.hostname.write_text(hostname + "\n")
    files.hosts.write_text(hosts_text(hostname))
    dns = config.dns_config
    if dns.servers or dns.searches or dns.options:
        files.resolv_conf.write_text(resolv_conf_text(dns))
    elif HOST_RESOLV_CONF.exists():
        shutil.copyfile(HOST_RESOLV_CONF, files.resolv_conf)
    else:
        files.resolv_conf.write_text("")
    if config.log_directory:
        Path(config.log_directory).mkdir(parents=True, exist_ok=True)


async def write_sandbox_files(
    files: SandboxFiles, *, config: api_pb2.PodSandboxConfig, hostname: str
) -> None:
    await asyncio.to_thread(_write_all, files, config, hostname)


async def remove_sandbox_files(files: SandboxFiles) -> None:
    await asyncio.to_thread(shutil.rmtree, files.dir, True)
