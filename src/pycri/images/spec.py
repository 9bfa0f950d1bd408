"""What pycri needs of the OCI image and Docker schema 2 specs: media types, digests, chain IDs.

Shared by the image builder (``pycri.testing.images``), the importer and the image store, so
all three agree on how JSON is serialized, how digests are spelled and how chain IDs are derived.

- **Digests** are ``sha256:<64 lowercase hex>``; only sha256 is produced, and only sha256 is
  accepted where pycri computes a digest itself (other algorithms pass through containerd).
- **Chain IDs** name a stack of unpacked layers in the snapshotter. Per the OCI image spec,
  ``ChainID(L0) = DiffID(L0)`` and ``ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " +
  DiffID(Ln))``, where a DiffID is the digest of the *uncompressed* layer tar.
- **Canonical JSON** (sorted keys, no spaces) makes the JSON pycri writes byte-stable, so the
  same image always gets the same digests. Documents read from elsewhere are never
  re-serialized: their digest is the digest of the bytes as found.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
from collections.abc import Mapping, Sequence
from typing import Any

OCI_LAYOUT_VERSION = "1.0.0"

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
LAYER_TYPES = frozenset(
    {OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER, DOCKER_LAYER_GZIP}
)

# Annotations of index.json entries that carry an image's name.
ANNOTATION_CONTAINERD_NAME = "io.containerd.image.name"
ANNOTATION_REF_NAME = "org.opencontainers.image.ref.name"

_SHA256_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")

# Go's GOARCH names for Python's ``platform.machine()``: the names image configs use.
_GO_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


def go_arch(machine: str | None = None) -> str:
    """This machine's architecture as Go (and so the OCI image spec) names it."""
    name = (machine or platform.machine()).lower()
    return _GO_ARCH.get(name, name)


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_sha256_digest(value: str) -> bool:
    return bool(_SHA256_DIGEST.match(value))


def digest_hex(digest: str) -> str:
    """The hex part of ``sha256:<hex>``; ValueError for anything else."""
    if not is_sha256_digest(digest):
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest.split(":", 1)[1]


def canonical_json(document: Mapping[str, Any] | Sequence[Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_ids(diff_ids: Sequence[str]) -> list[str]:
    """The chain ID of every prefix of the layer stack; the last one names the whole image."""
    chain: list[str] = []
    for diff_id in diff_ids:
        chain.append(diff_id if not chain else sha256_digest(f"{chain[-1]} {diff_id}".encode()))
    return chain


def chain_id(diff_ids: Sequence[str]) -> str:
    """The chain ID of the whole layer stack ("" for an image without layers)."""
    chain = chain_ids(diff_ids)
    return chain[-1] if chain else ""


def descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    """An OCI content descriptor for bytes held in memory."""
    return {"mediaType": media_type, "digest": sha256_digest(data), "size": len(data)}


def docker_manifest(config: Mapping[str, Any], layers: Sequence[Mapping[str, Any]]) -> bytes:
    """A Docker schema 2 manifest for a config and layer descriptors, canonically serialized.

    docker-archive tarballs carry no manifest; the importer makes one with this function, and
    the builder uses it too so it can tell which manifest digest an import will produce.
    """
    return canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": dict(config),
            "layers": [dict(layer) for layer in layers],
        }
    )


def platform_matches(entry_platform: Mapping[str, Any] | None, *, arch: str) -> bool:
    """True when an index entry's platform is linux on ``arch`` (a missing platform matches)."""
    if not entry_platform:
        return True
    return entry_platform.get("os") == "linux" and entry_platform.get("architecture") == arch
