"""Reading image JSON documents from untrusted sources: indexes, manifests, configs.

A tarball and a registry are both untrusted: the importer, the pull and the push read the
same documents the same way here. Nothing is believed before it is checked:

- A document fetched by digest is hashed, and its bytes must match the digest (and size)
  that named it (``verify``); only then is it parsed. Documents are refused above
  ``MAX_JSON_SIZE`` rather than held in memory.
- A descriptor must carry a sha256 digest and a non-negative size (``descriptor``); it comes
  back as a plain dict with ``mediaType``, ``digest`` and ``size`` only.
- An index picks the first manifest for linux/<arch> (``pick_platform``), as containerd's
  default platform matcher does for a node: there is no "best" variant to rank.

Errors are ``ImageContentError`` (malformed, unsupported, inconsistent) and its subclass
``DigestMismatchError`` (bytes that are not what their digest says: corruption in transit or
at rest). Callers turn them into their own errors (``ImageImportError``, gRPC statuses).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pycri.images import spec

# JSON documents (index, manifests, configs) larger than this are refused, not read into memory.
MAX_JSON_SIZE = 16 << 20


class ImageContentError(Exception):
    """An image document or blob is unusable: malformed, unsupported or inconsistent."""


class DigestMismatchError(ImageContentError):
    """Bytes do not match the digest or size that names them (corrupted)."""


def parse_json(data: bytes, *, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ImageContentError(f"{what} is not valid JSON: {err}") from None


def descriptor(doc: Any, *, what: str) -> dict[str, Any]:
    """A checked content descriptor: ``{"mediaType", "digest", "size"}``."""
    if not isinstance(doc, dict):
        raise ImageContentError(f"{what}: descriptor is not an object")
    digest, size, media_type = doc.get("digest"), doc.get("size"), doc.get("mediaType", "")
    if not isinstance(digest, str) or not spec.is_sha256_digest(digest):
        raise ImageContentError(f"{what}: descriptor digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageContentError(f"{what}: descriptor size {size!r} is invalid")
    return {"mediaType": str(media_type), "digest": digest, "size": size}


def verify(data: bytes, desc: dict[str, Any], *, what: str) -> bytes:
    """``data`` when it is what ``desc`` names; DigestMismatchError otherwise."""
    if len(data) != desc["size"] or spec.sha256_digest(data) != desc["digest"]:
        raise DigestMismatchError(
            f"{what} {desc['digest']}: content does not match its digest or size (corrupted?)"
        )
    return data


def media_type_of(doc: Any, fallback: str = "") -> str:
    """A document's own ``mediaType``, else what it looks like, else ``fallback``."""
    if isinstance(doc, dict):
        declared = doc.get("mediaType")
        if isinstance(declared, str) and declared:
            return declared
        if doc.get("schemaVersion") == 1:
            return "application/vnd.docker.distribution.manifest.v1+json"
        if "manifests" in doc:
            return spec.OCI_INDEX
        if "layers" in doc and "config" in doc:
            return spec.OCI_MANIFEST
    return fallback


def manifest_parts(manifest: Any, *, digest: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The config descriptor and layer descriptors of a parsed image manifest."""
    if not isinstance(manifest, dict):
        raise ImageContentError(f"manifest {digest} is not an object")
    if manifest.get("schemaVersion") == 1:
        raise ImageContentError(
            f"manifest {digest} is Docker schema 1, which pycri does not support "
            "(re-push the image with a current client)"
        )
    config_desc = descriptor(manifest.get("config"), what="manifest config")
    layer_docs = manifest.get("layers") or []
    if not isinstance(layer_docs, list):
        raise ImageContentError(f"manifest {digest}: layers is not a list")
    return config_desc, [descriptor(d, what="manifest layer") for d in layer_docs]


def index_entries(index: Any, *, digest: str) -> list[tuple[dict[str, Any], Any]]:
    """(descriptor, platform) of every entry of a parsed image index."""
    children = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(children, list):
        raise ImageContentError(f"image index {digest} lists no manifests")
    return [
        (descriptor(child, what="image index entry"), child.get("platform")) for child in children
    ]


def pick_platform(
    index: Any,
    *,
    digest: str,
    arch: str,
    available: Callable[[dict[str, Any]], bool] = lambda _desc: True,
) -> tuple[int, dict[str, Any]]:
    """(position, descriptor) of the first linux/``arch`` manifest of an index.

    ``available`` can veto entries (an archive that lacks a platform's blobs).
    """
    for position, (desc, platform) in enumerate(index_entries(index, digest=digest)):
        if (
            desc["mediaType"] in spec.MANIFEST_TYPES
            and spec.platform_matches(platform, arch=arch)
            and available(desc)
        ):
            return position, desc
    raise ImageContentError(f"image index {digest} has no linux/{arch} manifest")
