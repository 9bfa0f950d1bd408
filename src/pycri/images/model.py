"""The parts of an OCI image that the runtime needs, decoupled from how it was obtained."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class ImageConfig:
    """The runtime-relevant fields of an OCI image config (``config`` object of the JSON)."""

    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    working_dir: str = ""
    user: str = ""
    stop_signal: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    volumes: tuple[str, ...] = ()
    exposed_ports: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class Image:
    """An image known to containerd, as the CRI image service reports it.

    ``id`` is the config digest (``sha256:...``), which kubelet uses as the image reference.
    ``chain_id`` names the top snapshot of the unpacked layers in the snapshotter.
    """

    id: str
    repo_tags: tuple[str, ...]
    repo_digests: tuple[str, ...]
    size: int
    chain_id: str
    config: ImageConfig
    manifest_digest: str = ""
    pinned: bool = False
