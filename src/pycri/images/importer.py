"""Import OCI image-layout and docker-archive tarballs into containerd, unpacked and GC-safe.

This is how images reach a node without a registry (``pycri images import``, tests). The
result is what a pull leaves behind, so the rest of pycri cannot tell the two apart:

1. **Read the plan** (in a thread): find the images of the archive and their names. An OCI
   layout lists them in ``index.json`` (names from the ``io.containerd.image.name``
   annotation, or ``org.opencontainers.image.ref.name`` when that is a full reference rather
   than a bare tag); an entry that is an index (multi-platform) resolves to its linux/<this
   arch> manifest. A docker archive lists them in ``manifest.json``; it has no manifest
   blobs, so a Docker schema 2 manifest is made for each (``spec.docker_manifest``), and its
   layer digests are hashed here. JSON documents are checked against their digests before
   anything is trusted.
2. **Open a lease** (``containerd.io/gc.expire`` an hour ahead). Everything written below is
   held by the lease and nothing else until the image records exist; if the import fails or
   pycri dies, deleting (or the expiry of) the lease lets containerd's GC collect it all.
3. **Write the blobs** through the content API: streamed in chunks read off the event loop,
   with the expected size and digest, which containerd checks at commit (a corrupted blob
   fails here and nothing is stored). Blobs already present are not sent again, but added
   to the lease so a GC between this check and the image records cannot take them.
4. **Unpack** each image into the snapshotter: per layer, ``Prepare(random key, parent =
   previous chain ID)`` → ``Diff.Apply(layer, mounts)`` (the applied digest must be the
   config's diff ID) → ``Commit(name = chain ID)``. A layer whose chain-ID snapshot exists
   is reused (and leased). Two imports racing on one layer both apply it; the second commit
   finds the name taken (AlreadyExists), drops its own copy and goes on.
5. **Label the content** for containerd's GC: the manifest (or index) references its config
   and layers (``containerd.io/gc.ref.content.*``), the config references the top snapshot
   (``containerd.io/gc.ref.snapshot.<snapshotter>`` → chain ID), layers carry their diff ID
   (``containerd.io/uncompressed``). From then on an image record keeps the whole graph.
6. **Create the image records**, as containerd's CRI plugin does after a pull: each tag, a
   repo digest (``name@<target digest>``) per repository, and the image ID (``sha256:<config
   digest>``), all pointing at the target with label ``io.cri-containerd.image=managed``. An
   existing record is moved to the new target (a re-tag); records this import created are
   deleted again if a later one fails.
7. **Delete the lease.** Records and labels now hold what the image uses.

Re-importing is idempotent: blobs and snapshots are found, records updated in place. Other
platforms of a multi-platform layout are not imported (as ``ctr import`` without
``--all-platforms``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import sys
import tarfile
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

from pycri.containerd import api
from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import AlreadyExistsError, ContainerdError, NotFoundError
from pycri.images import reference, spec

if TYPE_CHECKING:
    from pycri.config import Config

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
# JSON documents (index, manifests, configs) larger than this are refused, not read into memory.
MAX_JSON_SIZE = 16 << 20
LEASE_EXPIRY = timedelta(hours=1)

LABEL_CRI_IMAGE = "io.cri-containerd.image"
LABEL_CRI_IMAGE_MANAGED = "managed"
LABEL_GC_EXPIRE = "containerd.io/gc.expire"
LABEL_GC_CONTENT = "containerd.io/gc.ref.content"
LABEL_GC_SNAPSHOT = "containerd.io/gc.ref.snapshot"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"


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
class _PlannedImage:
    names: list[str]
    target: dict[str, Any]  # descriptor of the record target
    manifest_digest: str
    config_digest: str
    layers: list[dict[str, Any]]
    diff_ids: list[str]
    # digest → GC labels to set on that blob once it is written
    labels: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass(kw_only=True)
class _Plan:
    blobs: dict[str, _Blob] = field(default_factory=dict)
    images: list[_PlannedImage] = field(default_factory=list)

    def add_blob(self, blob: _Blob) -> None:
        self.blobs.setdefault(blob.digest, blob)


class _Archive:
    """Random access to the members of a (possibly compressed) tarball. Blocking."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as err:
            raise ImageImportError(f"{path}: not a readable tar archive: {err}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for info in self._tar.getmembers():
            if info.isfile() or info.issym() or info.islnk():
                self.members[_clean_name(info.name)] = info

    def close(self) -> None:
        self._tar.close()

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        info = self.members.get(name)
        if info is None:
            raise ImageImportError(f"{self.path}: {name} is missing from the archive")
        try:
            fileobj = self._tar.extractfile(info)
        except (KeyError, tarfile.TarError) as err:
            raise ImageImportError(f"{self.path}: cannot read {name}: {err}") from None
        if fileobj is None:
            raise ImageImportError(f"{self.path}: {name} is not a regular file")
        return fileobj

    def read_json_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            data = f.read(MAX_JSON_SIZE + 1)
        if len(data) > MAX_JSON_SIZE:
            raise ImageImportError(f"{self.path}: {name} is larger than {MAX_JSON_SIZE} bytes")
        return data

    def hash(self, name: str) -> tuple[str, int, bool]:
        """(sha256 digest, size, gzip'd?) of a member."""
        sha = hashlib.sha256()
        size = 0
        head = b""
        with self.open(name) as f:
            while chunk := f.read(CHUNK_SIZE):
                if not head:
                    head = chunk[:2]
                sha.update(chunk)
                size += len(chunk)
        return "sha256:" + sha.hexdigest(), size, head == b"\x1f\x8b"


def _clean_name(name: str) -> str:
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    return "/".join(parts)


def _parse_json(data: bytes, *, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ImageImportError(f"{what} is not valid JSON: {err}") from None


def _blob_member(digest: str) -> str:
    algorithm, _, hex_part = digest.partition(":")
    if not algorithm or not hex_part or "/" in digest:
        raise ImageImportError(f"invalid digest {digest!r} in the archive")
    return f"blobs/{algorithm}/{hex_part}"


def _descriptor(doc: Any, *, what: str) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise ImageImportError(f"{what}: descriptor is not an object")
    digest, size, media_type = doc.get("digest"), doc.get("size"), doc.get("mediaType", "")
    if not isinstance(digest, str) or not spec.is_sha256_digest(digest):
        raise ImageImportError(f"{what}: descriptor digest {digest!r} is not a sha256 digest")
    if not isinstance(size, int) or size < 0:
        raise ImageImportError(f"{what}: descriptor size {size!r} is invalid")
    return {"mediaType": str(media_type), "digest": digest, "size": size}


def _read_verified(archive: _Archive, desc: dict[str, Any], *, what: str) -> bytes:
    data = archive.read_json_bytes(_blob_member(desc["digest"]))
    if spec.sha256_digest(data) != desc["digest"] or len(data) != desc["size"]:
        raise ImageImportError(
            f"{what} {desc['digest']}: content does not match its digest or size (corrupted?)"
        )
    return data


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
    archive: _Archive,
    plan: _Plan,
    manifest_desc: dict[str, Any],
    *,
    names: list[str],
    target: dict[str, Any],
    arch: str,
) -> _PlannedImage:
    manifest_bytes = _read_verified(archive, manifest_desc, what="manifest")
    manifest = _parse_json(manifest_bytes, what=f"manifest {manifest_desc['digest']}")
    if not isinstance(manifest, dict):
        raise ImageImportError(f"manifest {manifest_desc['digest']} is not an object")
    config_desc = _descriptor(manifest.get("config"), what="manifest config")
    layer_docs = manifest.get("layers") or []
    if not isinstance(layer_docs, list):
        raise ImageImportError(f"manifest {manifest_desc['digest']}: layers is not a list")
    layers = [_descriptor(d, what="manifest layer") for d in layer_docs]
    config_bytes = _read_verified(archive, config_desc, what="image config")
    config = _parse_json(config_bytes, what=f"image config {config_desc['digest']}")
    plan.add_blob(
        _Blob(
            digest=manifest_desc["digest"],
            size=manifest_desc["size"],
            media_type=manifest_desc["mediaType"],
            data=manifest_bytes,
        )
    )
    plan.add_blob(
        _Blob(
            digest=config_desc["digest"],
            size=config_desc["size"],
            media_type=config_desc["mediaType"],
            data=config_bytes,
        )
    )
    for layer in layers:
        member = _blob_member(layer["digest"])
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
    return _planned_image(
        names=names,
        target=target,
        manifest_digest=manifest_desc["digest"],
        config_digest=config_desc["digest"],
        config=config,
        layers=layers,
        arch=arch,
    )


def _planned_image(
    *,
    names: list[str],
    target: dict[str, Any],
    manifest_digest: str,
    config_digest: str,
    config: Any,
    layers: list[dict[str, Any]],
    arch: str,
) -> _PlannedImage:
    if not isinstance(config, dict):
        raise ImageImportError(f"image config {config_digest} is not an object")
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and spec.is_sha256_digest(d) for d in diff_ids
    ):
        raise ImageImportError(f"image config {config_digest}: rootfs.diff_ids is invalid")
    if len(diff_ids) != len(layers):
        raise ImageImportError(
            f"image config {config_digest} lists {len(diff_ids)} diff IDs for {len(layers)} layers"
        )
    for layer in layers:
        if layer["mediaType"] not in spec.LAYER_TYPES:
            raise ImageImportError(f"layer {layer['digest']}: unsupported {layer['mediaType']}")
    if config.get("os", "linux") != "linux" or config.get("architecture", arch) != arch:
        log.warning(
            "importing an image for another platform",
            extra={
                "image_id": config_digest,
                "os": config.get("os"),
                "architecture": config.get("architecture"),
            },
        )
    manifest_labels = {f"{LABEL_GC_CONTENT}.config": config_digest}
    manifest_labels |= {f"{LABEL_GC_CONTENT}.l.{i}": d["digest"] for i, d in enumerate(layers)}
    labels: dict[str, dict[str, str]] = {manifest_digest: manifest_labels}
    for layer, diff_id in zip(layers, diff_ids, strict=True):
        labels.setdefault(layer["digest"], {})[LABEL_UNCOMPRESSED] = diff_id
    return _PlannedImage(
        names=names,
        target=target,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layers=layers,
        diff_ids=list(diff_ids),
        labels=labels,
    )


def _plan_oci(archive: _Archive, *, arch: str) -> _Plan:
    plan = _Plan()
    index = _parse_json(archive.read_json_bytes("index.json"), what="index.json")
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ImageImportError("index.json lists no manifests")
    for entry in entries:
        desc = _descriptor(entry, what="index.json entry")
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
    archive: _Archive,
    plan: _Plan,
    index_desc: dict[str, Any],
    *,
    names: list[str],
    arch: str,
) -> _PlannedImage:
    index_bytes = _read_verified(archive, index_desc, what="image index")
    index = _parse_json(index_bytes, what=f"image index {index_desc['digest']}")
    children = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(children, list):
        raise ImageImportError(f"image index {index_desc['digest']} lists no manifests")
    chosen: tuple[int, dict[str, Any]] | None = None
    for position, child in enumerate(children):
        desc = _descriptor(child, what="image index entry")
        if (
            desc["mediaType"] in spec.MANIFEST_TYPES
            and spec.platform_matches(child.get("platform"), arch=arch)
            and _blob_member(desc["digest"]) in archive
        ):
            chosen = (position, desc)
            break
    if chosen is None:
        raise ImageImportError(
            f"image index {index_desc['digest']} has no linux/{arch} manifest in the archive"
        )
    position, manifest_desc = chosen
    image = _plan_manifest(archive, plan, manifest_desc, names=names, target=index_desc, arch=arch)
    plan.add_blob(
        _Blob(
            digest=index_desc["digest"],
            size=index_desc["size"],
            media_type=index_desc["mediaType"],
            data=index_bytes,
        )
    )
    image.labels[index_desc["digest"]] = {
        f"{LABEL_GC_CONTENT}.m.{position}": manifest_desc["digest"]
    }
    return image


def _plan_docker(archive: _Archive, *, arch: str) -> _Plan:
    plan = _Plan()
    entries = _parse_json(archive.read_json_bytes("manifest.json"), what="manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ImageImportError("manifest.json lists no images")
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str):
            raise ImageImportError("manifest.json: an entry has no Config")
        config_member = _clean_name(entry["Config"])
        config_bytes = archive.read_json_bytes(config_member)
        config_desc = spec.descriptor(spec.DOCKER_CONFIG, config_bytes)
        config = _parse_json(config_bytes, what=f"image config {config_member}")
        layers: list[dict[str, Any]] = []
        for layer_name in entry.get("Layers") or []:
            member = _clean_name(str(layer_name))
            digest, size, gzipped = archive.hash(member)
            media_type = spec.DOCKER_LAYER_GZIP if gzipped else spec.DOCKER_LAYER
            layers.append({"mediaType": media_type, "digest": digest, "size": size})
            plan.add_blob(_Blob(digest=digest, size=size, media_type=media_type, member=member))
        manifest_bytes = spec.docker_manifest(config_desc, layers)
        manifest_desc = spec.descriptor(spec.DOCKER_MANIFEST, manifest_bytes)
        plan.add_blob(
            _Blob(
                digest=manifest_desc["digest"],
                size=manifest_desc["size"],
                media_type=spec.DOCKER_MANIFEST,
                data=manifest_bytes,
            )
        )
        plan.add_blob(
            _Blob(
                digest=config_desc["digest"],
                size=config_desc["size"],
                media_type=spec.DOCKER_CONFIG,
                data=config_bytes,
            )
        )
        names = [_normalize(tag) for tag in entry.get("RepoTags") or []]
        plan.images.append(
            _planned_image(
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


def _make_plan(archive: _Archive, *, extra_names: Sequence[str], arch: str) -> _Plan:
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
    merged: dict[str, _PlannedImage] = {}
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


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pb_descriptor(desc: dict[str, Any]) -> Any:
    return api.descriptor.Descriptor(
        media_type=desc["mediaType"], digest=desc["digest"], size=desc["size"]
    )


class _Importer:
    """One import: a client, a lease and an open archive."""

    def __init__(
        self, client: ContainerdClient, archive: _Archive, *, lease: str, snapshotter: str
    ) -> None:
        self.client = client
        self.archive = archive
        self.lease = lease
        self.snapshotter = snapshotter

    async def _chunks(self, blob: _Blob) -> AsyncGenerator[bytes, None]:
        if blob.data is not None:
            yield blob.data
            return
        fileobj = await asyncio.to_thread(self.archive.open, blob.member)
        try:
            while chunk := await asyncio.to_thread(fileobj.read, CHUNK_SIZE):
                yield chunk
        finally:
            await asyncio.to_thread(fileobj.close)

    async def _hold_content(self, digest: str) -> None:
        await self.client.leases.add_resource(
            self.lease, resource_id=digest, resource_type="content"
        )

    async def write_blob(self, blob: _Blob) -> bool:
        """Store one blob; False when it was already there."""
        try:
            await self.client.content.info(blob.digest)
        except NotFoundError:
            pass
        else:
            await self._hold_content(blob.digest)
            return False
        ref = f"pycri-import-{blob.digest.replace(':', '-')}-{secrets.token_hex(4)}"
        try:
            # aclosing: a failed write closes the archive member at once, not at GC time
            async with contextlib.aclosing(self._chunks(blob)) as chunks:
                await self.client.content.write(
                    ref=ref,
                    expected=blob.digest,
                    total=blob.size,
                    chunks=chunks,
                    lease=self.lease,
                )
        except AlreadyExistsError:
            # Another import (or pull) committed it meanwhile.
            await self._hold_content(blob.digest)
            return False
        except ContainerdError as err:
            with contextlib.suppress(ContainerdError):
                await self.client.content.abort(ref)
            raise ImageImportError(
                f"storing {blob.media_type} {blob.digest} ({blob.size} bytes) failed: {err.message}"
            ) from None
        except BaseException:
            with contextlib.suppress(ContainerdError):
                await self.client.content.abort(ref)
            raise
        return True

    async def _snapshot_exists(self, key: str) -> bool:
        try:
            await self.client.snapshots.stat(self.snapshotter, key)
        except NotFoundError:
            return False
        return True

    async def unpack(self, image: _PlannedImage) -> int:
        """Unpack the layers into chain-ID snapshots; returns how many were applied."""
        applied_count = 0
        parent = ""
        for layer, diff_id, chain_id in zip(
            image.layers, image.diff_ids, spec.chain_ids(image.diff_ids), strict=True
        ):
            if await self._snapshot_exists(chain_id):
                await self.client.leases.add_resource(
                    self.lease, resource_id=chain_id, resource_type=f"snapshots/{self.snapshotter}"
                )
                parent = chain_id
                continue
            key = f"pycri-unpack-{secrets.token_hex(6)}-{chain_id}"
            mounts = await self.client.snapshots.prepare(
                self.snapshotter, key, parent, lease=self.lease
            )
            try:
                applied = await self.client.diff.apply(
                    _pb_descriptor(layer), mounts, lease=self.lease
                )
                if applied.digest != diff_id:
                    raise ImageImportError(
                        f"layer {layer['digest']} unpacks to {applied.digest}, "
                        f"but the image config says {diff_id}"
                    )
                await self.client.snapshots.commit(
                    self.snapshotter, chain_id, key, lease=self.lease
                )
                applied_count += 1
            except AlreadyExistsError:
                # A concurrent import committed this chain ID first: use theirs.
                with contextlib.suppress(ContainerdError):
                    await self.client.snapshots.remove(self.snapshotter, key)
            except BaseException:
                with contextlib.suppress(ContainerdError):
                    await self.client.snapshots.remove(self.snapshotter, key)
                raise
            log.debug(
                "unpacked layer",
                extra={"layer": layer["digest"], "chain_id": chain_id, "parent": parent},
            )
            parent = chain_id
        return applied_count

    async def label_content(self, image: _PlannedImage) -> None:
        labels = {digest: dict(values) for digest, values in image.labels.items()}
        top = spec.chain_id(image.diff_ids)
        if top:
            labels.setdefault(image.config_digest, {})[
                f"{LABEL_GC_SNAPSHOT}.{self.snapshotter}"
            ] = top
        for digest, values in labels.items():
            await self.client.content.update(digest, values)

    async def record(self, image: _PlannedImage) -> list[str]:
        """Create or move the image records; on failure, delete the ones created here."""
        record_names: list[str] = list(image.names)
        for name in image.names:
            repo_digest = str(reference.parse(name).with_digest(image.target["digest"]))
            if repo_digest not in record_names:
                record_names.append(repo_digest)
        record_names.append(image.config_digest)
        created: list[str] = []
        try:
            for name in record_names:
                record = api.images.Image(
                    name=name,
                    labels={LABEL_CRI_IMAGE: LABEL_CRI_IMAGE_MANAGED},
                    target=_pb_descriptor(image.target),
                )
                try:
                    await self.client.images.create(record)
                    created.append(name)
                except AlreadyExistsError:
                    await self.client.images.update(
                        record, paths=("target", f"labels.{LABEL_CRI_IMAGE}")
                    )
        except BaseException:
            for name in created:
                with contextlib.suppress(ContainerdError):
                    await self.client.images.delete(name)
            raise
        return record_names


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
    archive = await asyncio.to_thread(_Archive, tarball)
    try:
        plan = await asyncio.to_thread(_make_plan, archive, extra_names=extra_names, arch=arch)
        lease = f"pycri-import-{secrets.token_hex(8)}"
        await client.leases.create(
            lease, labels={LABEL_GC_EXPIRE: _rfc3339(datetime.now(UTC) + LEASE_EXPIRY)}
        )
        log.info(
            "importing images",
            extra={"tarball": str(tarball), "lease": lease, "blobs": len(plan.blobs)},
        )
        importer = _Importer(client, archive, lease=lease, snapshotter=snapshotter)
        succeeded = False
        try:
            written = 0
            for blob in plan.blobs.values():
                written += await importer.write_blob(blob)
            results: list[ImportedImage] = []
            for image in plan.images:
                applied = await importer.unpack(image)
                await importer.label_content(image)
                record_names = await importer.record(image)
                results.append(
                    ImportedImage(
                        names=tuple(image.names),
                        record_names=tuple(record_names),
                        target_digest=image.target["digest"],
                        manifest_digest=image.manifest_digest,
                        image_id=image.config_digest,
                        chain_id=spec.chain_id(image.diff_ids),
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
            succeeded = True
            return results
        finally:
            # Failed: a synchronous delete lets GC collect the partial import before we return.
            try:
                await client.leases.delete(lease, sync=not succeeded)
            except ContainerdError as err:
                log.warning(
                    "could not delete import lease; it expires by itself",
                    extra={"lease": lease, "error": err.message},
                )
    finally:
        await asyncio.to_thread(archive.close)


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
