"""Import OCI image-layout and docker-archive tarballs into containerd, unpacked and GC-safe.

This is how images reach a node without a registry (``pycri images import``, tests). The
result is what a pull leaves behind, so the rest of pycri cannot tell the two apart: the
containerd side (lease, blobs, unpack, GC labels, records) is ``ingest``, shared with the
registry pull. What is the importer's own:

1. **Read the plan** (in a thread): find the images of the archive and their names. An OCI
   layout lists them in ``index.json`` (names from the ``io.containerd.image.name``
   annotation, or ``org.opencontainers.image.ref.name`` when that is a full reference rather
   than a bare tag); an entry that is an index (multi-platform) resolves to its linux/<this
   arch> manifest. A docker archive lists them in ``manifest.json``; it has no manifest
   blobs, so a Docker schema 2 manifest is made for each (``spec.docker_manifest``), and its
   layer digests are hashed here. JSON documents are checked against their digests before
   anything is trusted (``document``).
2. **Store** each image through ``ingest``: under one lease, write every blob (streamed from
   the archive off the event loop; a corrupted blob fails containerd's commit and nothing is
   stored), then unpack, label and record each image; the lease goes last.

Re-importing is idempotent: blobs and snapshots are found, records updated in place. Other
platforms of a multi-platform layout are not imported (as ``ctr import`` without
``--all-platforms``). Errors: ``ImageImportError`` for a bad archive (malformed, incomplete,
corrupted), ``ContainerdError`` when containerd fails.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import ContainerdError
from pycri.images import ingest, reference, spec
from pycri.images.document import (
    ImageContentError,
    descriptor,
    manifest_parts,
    parse_json,
    pick_platform,
)
from pycri.images.ingest import LABEL_CRI_IMAGE, LABEL_CRI_IMAGE_MANAGED, PlannedImage
from pycri.images.layout import Archive, blob_member, clean_name, member_chunks

if TYPE_CHECKING:
    from pycri.config import Config

__all__ = [
    "LABEL_CRI_IMAGE",
    "LABEL_CRI_IMAGE_MANAGED",
    "ImageImportError",
    "ImportedImage",
    "import_tarball",
    "import_tarball_cli",
]

log = logging.getLogger(__name__)


class ImageImportError(Exception):
    """The archive is unusable (malformed, incomplete, inconsistent) or containerd refused it."""


@dataclass(frozen=True, kw_only=True)
class ImportedImage:
    names: tuple[str, ...]  # the tags (normalised) the image was recorded under
    record_names: tuple[str, ...]  # every containerd image record: tags, repo digests, ID
    target_digest: str  # what the records point at: a manifest, or an index
    manifest_digest: str  # the manifest of this platform
    image_id: str  # config digest
    chain_id: str
    layers: int


@dataclass(frozen=True, kw_only=True)
class _Blob:
    digest: str
    size: int
    media_type: str
    member: str = ""  # streamed from this archive member, unless
    data: bytes | None = None  # the bytes are in memory already (JSON documents)


@dataclass(kw_only=True)
class _Plan:
    blobs: dict[str, _Blob] = field(default_factory=dict)
    images: list[PlannedImage] = field(default_factory=list)

    def add_blob(self, blob: _Blob) -> None:
        self.blobs.setdefault(blob.digest, blob)

    def add_document(self, desc: dict[str, Any], data: bytes) -> None:
        self.add_blob(
            _Blob(digest=desc["digest"], size=desc["size"], media_type=desc["mediaType"], data=data)
        )


def _names_of_entry(entry: dict[str, Any]) -> list[str]:
    annotations = entry.get("annotations") or {}
    full = annotations.get(spec.ANNOTATION_CONTAINERD_NAME)
    if full:
        return [_normalize(full)]
    ref_name = annotations.get(spec.ANNOTATION_REF_NAME, "")
    # A bare tag ("latest") names no repository: only full references are usable alone.
    if ref_name and ("/" in ref_name or ":" in ref_name):
        try:
            return [reference.normalize(ref_name)]
        except ValueError:
            log.warning("ignoring unparsable image name in archive", extra={"image_name": ref_name})
    return []


def _normalize(name: str) -> str:
    try:
        return reference.normalize(name)
    except ValueError as err:
        raise ImageImportError(f"image name {name!r} in the archive: {err}") from None


def _plan_manifest(
    archive: Archive,
    plan: _Plan,
    manifest_desc: dict[str, Any],
    *,
    names: list[str],
    target: dict[str, Any],
    arch: str,
) -> PlannedImage:
    manifest_bytes = archive.read_blob(manifest_desc, what="manifest")
    manifest = parse_json(manifest_bytes, what=f"manifest {manifest_desc['digest']}")
    config_desc, layers = manifest_parts(manifest, digest=manifest_desc["digest"])
    config_bytes = archive.read_blob(config_desc, what="image config")
    config = parse_json(config_bytes, what=f"image config {config_desc['digest']}")
    plan.add_document(manifest_desc, manifest_bytes)
    plan.add_document(config_desc, config_bytes)
    for layer in layers:
        member = blob_member(layer["digest"])
        if member not in archive:
            raise ImageImportError(f"layer {layer['digest']} is missing from the archive")
        plan.add_blob(
            _Blob(
                digest=layer["digest"],
                size=layer["size"],
                media_type=layer["mediaType"],
                member=member,
            )
        )
    return ingest.plan_image(
        names=names,
        target=target,
        manifest_digest=manifest_desc["digest"],
        config_digest=config_desc["digest"],
        config=config,
        layers=layers,
        arch=arch,
    )


def _plan_oci(archive: Archive, *, arch: str) -> _Plan:
    plan = _Plan()
    index = parse_json(archive.read_json_bytes("index.json"), what="index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ImageImportError("index.json lists no manifests")
    for entry in entries:
        desc = descriptor(entry, what="index.json entry")
        names = _names_of_entry(entry)
        if desc["mediaType"] in spec.INDEX_TYPES:
            image = _plan_index(archive, plan, desc, names=names, arch=arch)
        elif desc["mediaType"] in spec.MANIFEST_TYPES:
            image = _plan_manifest(archive, plan, desc, names=names, target=desc, arch=arch)
        else:
            log.warning(
                "skipping index.json entry of unknown type",
                extra={"digest": desc["digest"], "media_type": desc["mediaType"]},
            )
            continue
        plan.images.append(image)
    return plan


def _plan_index(
    archive: Archive,
    plan: _Plan,
    index_desc: dict[str, Any],
    *,
    names: list[str],
    arch: str,
) -> PlannedImage:
    index_bytes = archive.read_blob(index_desc, what="image index")
    index = parse_json(index_bytes, what=f"image index {index_desc['digest']}")
    try:
        position, manifest_desc = pick_platform(
            index, digest=index_desc["digest"], arch=arch, available=archive.has_blob
        )
    except ImageContentError as err:
        raise ImageImportError(f"{err} in the archive") from None
    image = _plan_manifest(archive, plan, manifest_desc, names=names, target=index_desc, arch=arch)
    plan.add_document(index_desc, index_bytes)
    image.add_index(index_desc, position=position)
    return image


def _plan_docker(archive: Archive, *, arch: str) -> _Plan:
    plan = _Plan()
    entries = parse_json(archive.read_json_bytes("manifest.json"), what="manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageImportError("manifest.json lists no images")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ImageImportError("manifest.json: an entry has no Config")
        config_member = clean_name(entry["Config"])
        config_bytes = archive.read_json_bytes(config_member)
        config_desc = spec.descriptor(spec.DOCKER_CONFIG, config_bytes)
        config = parse_json(config_bytes, what=f"image config {config_member}")
        layers: list[dict[str, Any]] = []
        for layer_name in entry.get("Layers") or []:
            member = clean_name(str(layer_name))
            digest, size, gzipped = archive.hash(member)
            media_type = spec.DOCKER_LAYER_GZIP if gzipped else spec.DOCKER_LAYER
            layers.append({"mediaType": media_type, "digest": digest, "size": size})
            plan.add_blob(_Blob(digest=digest, size=size, media_type=media_type, member=member))
        manifest_bytes = spec.docker_manifest(config_desc, layers)
        manifest_desc = spec.descriptor(spec.DOCKER_MANIFEST, manifest_bytes)
        plan.add_document(manifest_desc, manifest_bytes)
        plan.add_document(config_desc, config_bytes)
        names = [_normalize(tag) for tag in entry.get("RepoTags") or []]
        plan.images.append(
            ingest.plan_image(
                names=names,
                target=manifest_desc,
                manifest_digest=manifest_desc["digest"],
                config_digest=config_desc["digest"],
                config=config,
                layers=layers,
                arch=arch,
            )
        )
    return plan


def _make_plan(archive: Archive, *, extra_names: Sequence[str], arch: str) -> _Plan:
    """Read the archive's layout into a plan. Blocking."""
    if "index.json" in archive:
        plan = _plan_oci(archive, arch=arch)
    elif "manifest.json" in archive:
        plan = _plan_docker(archive, arch=arch)
    else:
        raise ImageImportError(
            f"{archive.path}: neither an OCI image layout (index.json) "
            "nor a docker archive (manifest.json)"
        )
    # The same image listed twice (two tags) becomes one image with both names.
    merged: dict[str, PlannedImage] = {}
    for image in plan.images:
        known = merged.get(image.target["digest"])
        if known is None:
            merged[image.target["digest"]] = image
        else:
            known.names += [n for n in image.names if n not in known.names]
    plan.images = list(merged.values())
    if extra_names:
        if len(plan.images) != 1:
            raise ImageImportError(
                f"--name needs an archive with one image; {archive.path} has {len(plan.images)}"
            )
        image = plan.images[0]
        image.names += [n for n in map(_normalize, extra_names) if n not in image.names]
    return plan


def _source(archive: Archive, blob: _Blob) -> ingest.ChunkSource:
    if blob.data is not None:
        return ingest.memory_source(blob.data)
    return functools.partial(member_chunks, archive, blob.member)


async def _store(
    client: ContainerdClient, archive: Archive, plan: _Plan, *, snapshotter: str
) -> list[ImportedImage]:
    async with ingest.lease(client, prefix="pycri-import") as lease:
        log.info(
            "importing images",
            extra={"tarball": str(archive.path), "lease": lease, "blobs": len(plan.blobs)},
        )
        writer = ingest.ImageWriter(client, lease=lease, snapshotter=snapshotter)
        written = 0
        for blob in plan.blobs.values():
            written += await writer.write_blob(
                digest=blob.digest,
                size=blob.size,
                media_type=blob.media_type,
                source=_source(archive, blob),
            )
        results: list[ImportedImage] = []
        for image in plan.images:
            record_names, applied = await writer.store(image)
            results.append(
                ImportedImage(
                    names=tuple(image.names),
                    record_names=tuple(record_names),
                    target_digest=image.target["digest"],
                    manifest_digest=image.manifest_digest,
                    image_id=image.config_digest,
                    chain_id=image.chain_id,
                    layers=len(image.layers),
                )
            )
            log.info(
                "imported image",
                extra={
                    "names": image.names,
                    "image_id": image.config_digest,
                    "target": image.target["digest"],
                    "layers_applied": applied,
                },
            )
        log.debug("import wrote blobs", extra={"written": written, "total": len(plan.blobs)})
        return results


async def import_tarball(
    client: ContainerdClient,
    tarball: Path,
    *,
    extra_names: Sequence[str] = (),
    snapshotter: str = "overlayfs",
    arch: str | None = None,
) -> list[ImportedImage]:
    """Import every image of an OCI-layout or docker-archive tarball (see the module doc).

    ``extra_names`` tag the archive's single image with more references. Raises
    ``ImageImportError`` for a bad archive, ``ContainerdError`` when containerd fails.
    """
    arch = arch or spec.go_arch()
    try:
        archive = await asyncio.to_thread(Archive, tarball)
        try:
            plan = await asyncio.to_thread(_make_plan, archive, extra_names=extra_names, arch=arch)
            return await _store(client, archive, plan, snapshotter=snapshotter)
        finally:
            await asyncio.to_thread(archive.close)
    except ImageContentError as err:
        raise ImageImportError(str(err)) from None


async def import_tarball_cli(config: Config, tarball: Path, *, extra_names: list[str]) -> int:
    """``pycri images import``: import into ``config.containerd_socket``; print what was made."""
    socket = Path(config.containerd_socket)
    if not await asyncio.to_thread(socket.exists):
        print(f"pycri: containerd socket {socket} does not exist", file=sys.stderr)
        return 1
    client = ContainerdClient(str(socket))
    try:
        await client.ensure_namespace(timeout=10)
        images = await import_tarball(
            client, tarball, extra_names=extra_names, snapshotter=config.snapshotter
        )
    except (ImageImportError, ContainerdError, OSError) as err:
        print(f"pycri: importing {tarball} failed: {err}", file=sys.stderr)
        return 1
    finally:
        await client.close()
    for image in images:
        names = ", ".join(image.names) or "(untagged)"
        print(
            f"imported {names}: image {image.image_id}, "
            f"{image.layers} layer(s), snapshot {image.chain_id}"
        )
    return 0
