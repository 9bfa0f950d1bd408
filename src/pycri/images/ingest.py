"""Storing an image in containerd: content under a lease, unpacked layers, GC labels, records.

The tarball importer (``importer``) and the registry pull (``pull``) differ only in where
bytes come from. Both plan an image (``plan_image``: target, manifest, config, layers) and
then run the same steps here, so a pulled image and an imported one look alike to the rest
of pycri and to containerd's GC:

1. **A lease** (``lease``, ``containerd.io/gc.expire`` an hour ahead) holds everything
   written until the image records exist. If the caller fails or pycri dies, deleting the
   lease (synchronously, so GC has run when we answer) or its expiry lets containerd's GC
   collect the half-stored image: no record ever points at incomplete content.
2. **Blobs** (``ImageWriter.write_blob``) are streamed through the content API with the
   expected size and digest, which containerd checks at commit: bytes that do not match
   fail the commit (``DigestMismatchError``) and nothing is stored. A blob already present is
   not sent again, but added to the lease, so a GC between that check and the records
   cannot take it. Writes resume: the source is asked for the bytes from the offset the
   ingest already holds (see ``ContainerdClient.content.write``), so a caller that retries
   under the same ingest ref sends only the rest.
3. **Unpack** (``unpack``): per layer, ``Prepare(random key, parent = previous chain ID)`` →
   ``Diff.Apply(layer, mounts)`` (the applied digest must be the config's diff ID) →
   ``Commit(name = chain ID)``. A layer whose chain-ID snapshot exists is reused (and
   leased). Two writers racing on one layer both apply it; the second commit finds the name
   taken (AlreadyExists), drops its own copy and goes on.
4. **GC labels** (``label_content``): the manifest (or index) references its config and
   layers (``containerd.io/gc.ref.content.*``), the config references the top snapshot
   (``containerd.io/gc.ref.snapshot.<snapshotter>`` → chain ID), layers carry their diff ID
   (``containerd.io/uncompressed``). From then on an image record keeps the whole graph.
5. **Records** (``record``), as containerd's CRI plugin makes them: each tag, a repo digest
   (``name@<target digest>``) per repository, and the image ID (``sha256:<config digest>``),
   all pointing at the target with label ``io.cri-containerd.image=managed``. An existing
   record is moved to the new target (a re-tag); records created here are deleted again if
   a later one fails.

Races: a blob present at the check but collected before it is leased (another image removed
in that window) fails the unpack with NOT_FOUND; a retry fetches it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import (
    AlreadyExistsError,
    ContainerdError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
)
from pycri.containerd.types import Descriptor
from pycri.images import reference, spec
from pycri.images.document import DigestMismatchError, ImageContentError

log = logging.getLogger(__name__)

LEASE_EXPIRY = timedelta(hours=1)
# Another writer holds an ingest ref: wait for it this long before giving up.
LOCKED_REF_WAIT = 60.0

LABEL_CRI_IMAGE = "io.cri-containerd.image"
LABEL_CRI_IMAGE_MANAGED = "managed"
LABEL_GC_EXPIRE = "containerd.io/gc.expire"
LABEL_GC_CONTENT = "containerd.io/gc.ref.content"
LABEL_GC_SNAPSHOT = "containerd.io/gc.ref.snapshot"
LABEL_UNCOMPRESSED = "containerd.io/uncompressed"

# ``source(offset)``: the blob's bytes from ``offset`` on.
ChunkSource = Callable[[int], AsyncGenerator[bytes, None]]
# ``ready(layer descriptor)``: returns once that layer's blob is in the content store.
LayerReady = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(kw_only=True)
class PlannedImage:
    names: list[str]  # tags (normalised references)
    target: dict[str, Any]  # descriptor of the record target (manifest or index)
    manifest_digest: str
    config_digest: str
    layers: list[dict[str, Any]]
    diff_ids: list[str]
    # repositories (``domain/path``) to record a repo digest for besides those of ``names``
    repositories: list[str] = field(default_factory=list)
    # digest → GC labels to set on that blob once it is written
    labels: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def chain_id(self) -> str:
        return spec.chain_id(self.diff_ids)

    def record_names(self) -> list[str]:
        """Every record this image gets: tags, repo digests, then the image ID."""
        names = list(self.names)
        repositories = [reference.parse(name).name for name in self.names]
        for repository in [*repositories, *self.repositories]:
            repo_digest = str(reference.parse(repository).with_digest(self.target["digest"]))
            if repo_digest not in names:
                names.append(repo_digest)
        names.append(self.config_digest)
        return names

    def add_index(self, index: dict[str, Any], *, position: int) -> None:
        """The record target is ``index``, whose entry ``position`` is this manifest."""
        self.target = index
        self.labels[index["digest"]] = {f"{LABEL_GC_CONTENT}.m.{position}": self.manifest_digest}


def plan_image(
    *,
    names: list[str],
    target: dict[str, Any],
    manifest_digest: str,
    config_digest: str,
    config: Any,
    layers: list[dict[str, Any]],
    arch: str,
) -> PlannedImage:
    """Check a parsed config against its manifest's layers; the GC labels the image needs."""
    if not isinstance(config, dict):
        raise ImageContentError(f"image config {config_digest} is not an object")
    rootfs = config.get("rootfs") or {}
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(
        isinstance(d, str) and spec.is_sha256_digest(d) for d in diff_ids
    ):
        raise ImageContentError(f"image config {config_digest}: rootfs.diff_ids is invalid")
    if len(diff_ids) != len(layers):
        raise ImageContentError(
            f"image config {config_digest} lists {len(diff_ids)} diff IDs for {len(layers)} layers"
        )
    for layer in layers:
        if layer["mediaType"] not in spec.LAYER_TYPES:
            raise ImageContentError(f"layer {layer['digest']}: unsupported {layer['mediaType']}")
    if config.get("os", "linux") != "linux" or config.get("architecture", arch) != arch:
        log.warning(
            "storing an image for another platform",
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
    return PlannedImage(
        names=names,
        target=target,
        manifest_digest=manifest_digest,
        config_digest=config_digest,
        layers=layers,
        diff_ids=list(diff_ids),
        labels=labels,
    )


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def descriptor(desc: dict[str, Any]) -> Descriptor:
    return Descriptor(media_type=desc["mediaType"], digest=desc["digest"], size=desc["size"])


@contextlib.asynccontextmanager
async def lease(client: ContainerdClient, *, prefix: str) -> AsyncIterator[str]:
    """A containerd lease for the block; deleted after it, synchronously if it failed.

    A synchronous delete makes containerd's GC collect what only the lease held before the
    failure is reported, so nothing half-stored outlives it.
    """
    lease_id = f"{prefix}-{secrets.token_hex(8)}"
    await client.leases.create(
        lease_id, labels={LABEL_GC_EXPIRE: _rfc3339(datetime.now(UTC) + LEASE_EXPIRY)}
    )
    succeeded = False
    try:
        yield lease_id
        succeeded = True
    finally:
        try:
            await client.leases.delete(lease_id, sync=not succeeded)
        except ContainerdError as err:
            log.warning(
                "could not delete lease; it expires by itself",
                extra={"lease": lease_id, "error": err.message},
            )


def memory_source(data: bytes) -> ChunkSource:
    """A ``ChunkSource`` over bytes held in memory (JSON documents)."""

    async def chunks(offset: int) -> AsyncGenerator[bytes, None]:
        yield data[offset:]

    return chunks


class ImageWriter:
    """Writes images into containerd under one lease (see the module doc)."""

    def __init__(self, client: ContainerdClient, *, lease: str, snapshotter: str) -> None:
        self.client = client
        self.lease = lease
        self.snapshotter = snapshotter

    async def hold_content(self, digest: str) -> None:
        await self.client.leases.add_resource(
            self.lease, resource_id=digest, resource_type="content"
        )

    async def has_content(self, digest: str) -> bool:
        """True (and the blob leased) when the content store has ``digest`` already."""
        try:
            await self.client.content.info(digest)
        except NotFoundError:
            return False
        await self.hold_content(digest)
        return True

    async def write_blob(
        self,
        *,
        digest: str,
        size: int,
        media_type: str,
        source: ChunkSource,
        ref: str = "",
        abort_on_error: bool = True,
    ) -> bool:
        """Store one blob; False when it was there already.

        ``ref`` names the ingest (a random one by default); a caller that retries a broken
        write under the same ref resumes it, and passes ``abort_on_error=False`` so a failed
        attempt keeps what it wrote. Bytes containerd refuses at commit (digest or size) raise
        ``DigestMismatchError`` and are always discarded.
        """
        if await self.has_content(digest):
            return False
        ref = ref or f"pycri-{digest.replace(':', '-')}-{secrets.token_hex(4)}"
        loop = asyncio.get_running_loop()
        give_up = loop.time() + LOCKED_REF_WAIT
        while True:
            try:
                await self.client.content.write(
                    ref=ref, expected=digest, total=size, chunks=source, lease=self.lease
                )
            except AlreadyExistsError:
                # Another writer committed it meanwhile.
                await self.hold_content(digest)
                return False
            except UnavailableError as err:
                if "locked" not in err.message or loop.time() > give_up:
                    raise
                # Another writer (another pycri, an import) holds this ref: wait for it.
                await asyncio.sleep(0.2)
                if await self.has_content(digest):
                    return False
                continue
            except (FailedPreconditionError, InvalidArgumentError) as err:
                await self.abort(ref)
                raise DigestMismatchError(
                    f"storing {media_type} {digest} ({size} bytes) failed: {err.message}"
                ) from None
            except BaseException:
                if abort_on_error:
                    await self.abort(ref)
                raise
            return True

    async def abort(self, ref: str) -> None:
        """Drop an ingest (what a failed write left); missing or unreachable is fine."""
        with contextlib.suppress(ContainerdError):
            await asyncio.shield(self.client.content.abort(ref))

    async def _snapshot_exists(self, key: str) -> bool:
        try:
            await self.client.snapshots.stat(self.snapshotter, key)
        except NotFoundError:
            return False
        return True

    async def unpack(self, image: PlannedImage, *, ready: LayerReady | None = None) -> int:
        """Unpack the layers into chain-ID snapshots; returns how many were applied.

        ``ready(layer)``, when given, returns once that layer's blob is stored (or raises why
        it never will be): a pull unpacks each layer as soon as it and those below it are
        downloaded, while the others still download.
        """
        applied_count = 0
        parent = ""
        for layer, diff_id, chain_id in zip(
            image.layers, image.diff_ids, spec.chain_ids(image.diff_ids), strict=True
        ):
            if ready is not None:
                await ready(layer)
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
                applied = await self.client.diff.apply(descriptor(layer), mounts, lease=self.lease)
                if applied.digest != diff_id:
                    raise DigestMismatchError(
                        f"layer {layer['digest']} unpacks to {applied.digest}, "
                        f"but the image config says {diff_id}"
                    )
                await self.client.snapshots.commit(
                    self.snapshotter, chain_id, key, lease=self.lease
                )
                applied_count += 1
            except AlreadyExistsError:
                # A concurrent writer committed this chain ID first: use theirs.
                with contextlib.suppress(ContainerdError):
                    await self.client.snapshots.remove(self.snapshotter, key)
            except BaseException:
                with contextlib.suppress(ContainerdError):
                    await asyncio.shield(self.client.snapshots.remove(self.snapshotter, key))
                raise
            log.debug(
                "unpacked layer",
                extra={"layer": layer["digest"], "chain_id": chain_id, "parent": parent},
            )
            parent = chain_id
        return applied_count

    async def label_content(self, image: PlannedImage) -> None:
        labels = {digest: dict(values) for digest, values in image.labels.items()}
        top = image.chain_id
        if top:
            labels.setdefault(image.config_digest, {})[
                f"{LABEL_GC_SNAPSHOT}.{self.snapshotter}"
            ] = top
        for digest, values in labels.items():
            await self.client.content.update(digest, values)

    async def record(self, image: PlannedImage) -> list[str]:
        """Create or move the image records; on failure, delete the ones created here."""
        record_names = image.record_names()
        created: list[str] = []
        try:
            # Tags last: an image event (or lookup) that finds the image by its tag then
            # always finds its repo digest and ID records too, never a half-recorded image.
            for name in reversed(record_names):
                labels = {LABEL_CRI_IMAGE: LABEL_CRI_IMAGE_MANAGED}
                target = descriptor(image.target)
                try:
                    await self.client.images.create(name=name, target=target, labels=labels)
                    created.append(name)
                except AlreadyExistsError:
                    await self.client.images.update(
                        name=name,
                        target=target,
                        labels=labels,
                        paths=("target", f"labels.{LABEL_CRI_IMAGE}"),
                    )
        except BaseException:
            for name in created:
                with contextlib.suppress(ContainerdError):
                    await self.client.images.delete(name)
            raise
        return record_names

    async def store(self, image: PlannedImage) -> tuple[list[str], int]:
        """Unpack, label and record an image whose blobs are written: (record names, applied)."""
        applied = await self.unpack(image)
        return await self.finish(image), applied

    async def finish(self, image: PlannedImage) -> list[str]:
        """Label and record an image whose blobs are written and unpacked: record names."""
        await self.label_content(image)
        return await self.record(image)
