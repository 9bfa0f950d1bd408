"""The node's pod CIDR from kubelet (UpdateRuntimeConfig), and the CNI config written from it.

kubelet sends the pod CIDR the control plane gave the node (``Node.spec.podCIDRs``, comma
separated for dual stack) and calls again only when it changes; until a call succeeds it
keeps retrying. pycri records it (``ROOT/runtime-config.json``, an atomic checkpoint, so it is
still known after a restart) and, when ``cni_conf_template`` is configured, renders the
template with it into ``cni_conf_dir/10-pycri-net.conflist``: a node then gets pod networking
from kubelet alone, as containerd's ``conf_template`` does.

The template is a CNI config list (JSON) in which ``{{.PodCIDR}}`` stands for the first range
and ``{{.PodCIDRRanges}}`` for all of them, comma separated (containerd's field names; pycri
substitutes these two strings and has no other template language). The rendered document must
parse as a CNI config list, or nothing is written.

Races and safety: the file is written to a dot-named temp file in the conf dir, fsynced and
renamed over the old one, so the CNI watcher (``pycri.net.watch``), which ignores names without
a config suffix, sees the old or the new file, never half of one; a refresh right after makes
Status tell at once. An operator's own config wins: when the conf dir holds any config file
other than pycri's, nothing is written (and the log says why), so a CNI DaemonSet's config is
never shadowed or overwritten. Updates run one at a time (a lock).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from pycri.net.cni import CNIConfigError, NetworkConfigList, config_files
from pycri.store import checkpoint

log = logging.getLogger(__name__)

GENERATED_NAME = "10-pycri-net.conflist"
POD_CIDR = "{{.PodCIDR}}"
POD_CIDR_RANGES = "{{.PodCIDRRanges}}"
# what ``validate_template`` renders the template with at start, to refuse a broken one early
EXAMPLE_CIDRS = ("10.244.0.0/24",)


class PodCIDRError(ValueError):
    """The pod CIDR, or the CNI config rendered with it, is invalid; the message says why."""


def parse_pod_cidr(value: str) -> tuple[str, ...]:
    """The ranges of a pod CIDR as kubelet sends it ("10.244.1.0/24,fd00:1::/64")."""
    ranges = []
    for part in (p.strip() for p in value.split(",")):
        try:
            if "/" not in part:
                raise ValueError(part)
            network = ipaddress.ip_network(part, strict=False)
        except ValueError:
            raise PodCIDRError(f"pod CIDR {value!r}: {part!r} is not an IP range") from None
        ranges.append(str(network))
    if len({ipaddress.ip_network(r).version for r in ranges}) != len(ranges):
        raise PodCIDRError(f"pod CIDR {value!r}: at most one range per IP family")
    return tuple(ranges)


def render(template: str, cidrs: tuple[str, ...], *, source: str) -> str:
    """The template with the CIDRs in; PodCIDRError if the result is no CNI config list."""
    text = template.replace(POD_CIDR_RANGES, ",".join(cidrs)).replace(POD_CIDR, cidrs[0])
    try:
        NetworkConfigList.from_json(json.loads(text), source=source)
    except json.JSONDecodeError as err:
        raise PodCIDRError(f"{source}: rendered config is not JSON: {err}") from None
    except CNIConfigError as err:
        raise PodCIDRError(str(err)) from None
    return text


def validate_template(path: Path) -> None:
    """Read and render the template with an example CIDR (blocking; at start); PodCIDRError."""
    try:
        text = path.read_text()
    except OSError as err:
        raise PodCIDRError(f"cannot read {path}: {err.strerror or err}") from None
    render(text, EXAMPLE_CIDRS, source=str(path))


@dataclass(frozen=True, kw_only=True)
class Applied:
    """What an update did: the recorded CIDR, and the config file written ("" if none)."""

    pod_cidr: str
    written: str = ""
    skipped: str = ""  # why no file was written, when a template is configured


class PodCIDR:
    """The recorded pod CIDR and the CNI config pycri writes from it (``rt.pod_cidr``)."""

    def __init__(self, *, state_file: Path, conf_dir: Path, template: Path | None) -> None:
        self.state_file = state_file
        self.conf_dir = conf_dir
        self.template = template
        self.value = ""
        self.last = Applied(pod_cidr="")
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        """The CIDR recorded before a restart (none yet: empty)."""
        try:
            doc = await asyncio.to_thread(checkpoint.read_sync, self.state_file)
        except checkpoint.CheckpointError as err:
            if self.state_file.exists():
                log.warning("runtime config checkpoint ignored", extra={"error": str(err)})
            return
        self.value = str(doc.get("pod_cidr", ""))
        self.last = Applied(pod_cidr=self.value, written=str(doc.get("written", "")))

    async def update(self, value: str) -> Applied:
        """Record ``value`` and write the CNI config from the template; PodCIDRError."""
        cidrs = parse_pod_cidr(value)
        async with self._lock:
            applied = Applied(pod_cidr=",".join(cidrs))
            if self.template is not None:
                applied = await asyncio.to_thread(self._write_config, cidrs)
            await checkpoint.write(
                self.state_file, {"pod_cidr": applied.pod_cidr, "written": applied.written}
            )
            self.value, self.last = applied.pod_cidr, applied
        log.info(
            "pod CIDR recorded",
            extra={
                "pod_cidr": applied.pod_cidr,
                "cni_config": applied.written,
                "skipped": applied.skipped,
            },
        )
        return applied

    def _write_config(self, cidrs: tuple[str, ...]) -> Applied:
        assert self.template is not None
        target = self.conf_dir / GENERATED_NAME
        others = [p for p in config_files(self.conf_dir) if p.name != GENERATED_NAME]
        if others:
            return Applied(
                pod_cidr=",".join(cidrs),
                skipped=f"{others[0]} is not pycri's: the operator's CNI config is kept",
            )
        try:
            text = self.template.read_text()
        except OSError as err:
            raise PodCIDRError(
                f"cni_conf_template {self.template}: {err.strerror or err}"
            ) from None
        rendered = render(text, cidrs, source=str(self.template))
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        checkpoint.replace_file(target, rendered.encode(), mode=0o644)
        return Applied(pod_cidr=",".join(cidrs), written=str(target))

    def describe(self) -> dict[str, str]:
        return {
            "podCIDR": self.value,
            "cniConfTemplate": str(self.template or ""),
            "written": self.last.written,
            "skipped": self.last.skipped,
        }
