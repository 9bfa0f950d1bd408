"""The per-sandbox files every container of a pod shares: hostname, hosts, resolv.conf.

They live in ``ROOT/sandboxes/<id>/`` and are bind-mounted into each container, so a pod's
containers agree on name resolution. resolv.conf comes from the pod's DNSConfig, or is the
host's when the pod gives none (kubelet's ClusterFirst always gives one).

What goes into them is validated first (``validate_hostname``, ``validate_dns_config``): a
newline in a hostname, a server, a search domain or an option would otherwise become a line
of its own in the pod's hosts or resolv.conf (``evil\n6.6.6.6 registry.k8s.io``). The rules
are those the API server applies to a pod: a hostname is an RFC 1123 name of at most 64
characters (the kernel's limit; kubelet's FQDN hostnames fit), servers are IP addresses,
search domains are DNS names (at most 32 of them and 2048 characters, as kubelet sends),
options are ``name`` or ``name:value`` without blanks.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2

from pycri.errors import quote

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
MAX_HOSTNAME = 64  # HOST_NAME_MAX
MAX_SEARCHES = 32  # kubelet's MaxDNSSearchPaths
MAX_SEARCH_CHARS = 2048  # kubelet's MaxDNSSearchListChars
_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SEARCH_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_OPTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(:[A-Za-z0-9_.-]+)?")


def validate_hostname(hostname: str) -> None:
    """An RFC 1123 host name (dot-separated labels), at most 64 characters."""
    if not hostname:
        return
    if len(hostname) > MAX_HOSTNAME:
        raise ValueError(f"hostname {quote(hostname)} is longer than {MAX_HOSTNAME} characters")
    if not all(_LABEL.fullmatch(label) for label in hostname.split(".")):
        raise ValueError(
            f"hostname {quote(hostname)} is not an RFC 1123 name (letters, digits, '-' and "
            "'.'; labels start and end with a letter or digit)"
        )


def validate_dns_config(dns: api_pb2.DNSConfig) -> None:
    for server in dns.servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise ValueError(f"dns_config server {quote(server)} is not an IP address") from None
    if len(dns.searches) > MAX_SEARCHES:
        raise ValueError(f"dns_config has {len(dns.searches)} searches, more than {MAX_SEARCHES}")
    if sum(len(s) for s in dns.searches) + len(dns.searches) > MAX_SEARCH_CHARS:
        raise ValueError(f"dns_config searches are longer than {MAX_SEARCH_CHARS} characters")
    for search in dns.searches:
        name = search.removesuffix(".")
        if len(name) > 253 or not all(_SEARCH_LABEL.fullmatch(x) for x in name.split(".")):
            raise ValueError(f"dns_config search {quote(search)} is not a DNS name")
    for option in dns.options:
        if len(option) > 256 or not _OPTION.fullmatch(option):
            raise ValueError(
                f"dns_config option {quote(option)} is not name or name:value without blanks"
            )


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


async def write_sandbox_files(
    files: SandboxFiles, *, config: api_pb2.PodSandboxConfig, hostname: str
) -> None:
    await asyncio.to_thread(_write_all, files, config, hostname)


async def remove_sandbox_files(files: SandboxFiles) -> None:
    await asyncio.to_thread(remove_sandbox_files_sync, files)


def remove_sandbox_files_sync(files: SandboxFiles) -> None:
    shutil.rmtree(files.dir, True)
