"""Pulling images from registries into containerd: resolve, fetch, store, unpack, record.

One pull (``ImagePuller.pull``):

1. **Resolve** the reference to a manifest or index (``RegistrySession.resolve``: mirrors
   first, then the registry; the manifest's bytes are checked against the digest asked for,
   or the ``Docker-Content-Digest`` the registry declares). An index (multi-platform image,
   OCI or Docker manifest list) picks its linux/<this arch> manifest, fetched by digest and
   checked. The config blob is fetched, checked and parsed (the platform manifest and the
   config are read from containerd instead when it has them: a re-pull asks the registry
   for the top document only); the layers' media types and the
   config's diff IDs are checked against the manifest (``ingest.plan_image``) before a
   single layer byte is downloaded. Docker schema 2 and OCI manifests are supported, with
   gzip'd or uncompressed (or zstd, as far as containerd's differ goes) layers.
2. **Store** under a lease (``ingest``): the index, manifest and config from memory, the
   layers streamed from the registry into containerd's content store, a few at a time
   (``max_downloads`` per puller, shared by all pulls). Each layer is written to the ingest
   ``pycri-pull-<digest>``: if the download breaks (a reset connection, a short body, a
   timeout) it is retried, and the retry asks the registry only for the bytes containerd
   does not have yet (``Range``; a registry that ignores it has the prefix skipped).
   containerd hashes the bytes as they arrive and checks size and digest at commit; a
   mismatch (``DataLoss``) discards the ingest. The chunks go to containerd as pre-framed
   ``WriteContentRequest`` bytes (``containerd.client.encode_write_chunk``): protobuf's own
   serialization copied each chunk twice and was most of a large pull's CPU.
   **Unpack runs alongside**: each layer is applied as soon as its blob and those of the
   layers below it are stored, while the rest still download (a small base layer is
   unpacked during a big layer's download); then GC labels and records (tag, repo digest,
   image ID), as an import.
3. **Clean up on failure**: every download and the unpack are waited for (a failed layer
   does not stop the others midway: no write may outlive the lease), then the lease is
   deleted synchronously, so containerd's GC collects whatever was written or unpacked, and
   nothing is left that looks like an image — records are the last step, and a failed
   record step deletes the records it made.

**Concurrency.** Pulls of the same reference with the same credentials are one pull: later
callers join the running one (``SingleFlight``) and get its result or its error. Its task is
shielded, so a caller that gives up (kubelet's deadline) does not cancel it for the others;
``close`` cancels what is left at shutdown. Layers are shared one level down: one download
per digest at a time across all pulls, so two images with a common base fetch it once; a
pull that joins another's download adds the blob to its own lease once it is committed. If
that download fails (its pull failed and dropped its lease), the joiner downloads the blob
itself, unless the bytes were corrupt.

**Progress.** Each pull logs a line every ``progress_interval`` seconds while layers are
downloading (bytes done and total, rate), so a large pull is visible; a small one logs only
its result.

Errors are ``pycri.errors``: an unknown repository, tag or digest → ``NotFound`` with the
registry's answer; refused credentials → ``Unauthenticated`` or ``PermissionDenied``; an
unreachable registry → ``Unavailable``; corrupted content → ``DataLoss``; an unusable image
(schema 1, another platform only, malformed documents) → ``FailedPrecondition``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pycri.config import RegistryConfig
from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import NotFoundError
from pycri.errors import DataLoss, FailedPrecondition, Unavailable
from pycri.images import ingest, spec
from pycri.images.auth import Credentials
from pycri.images.document import (
    MAX_JSON_SIZE,
    DigestMismatchError,
    ImageContentError,
    manifest_parts,
    media_type_of,
    parse_json,
    pick_platform,
    verify,
)
from pycri.images.reference import Reference

if TYPE_CHECKING:
    from pycri.images.registry import Registry, RegistrySession

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

CHUNK_SIZE = 1 << 20  # bytes per content write to containerd
DOWNLOAD_ATTEMPTS = 4
RETRY_DELAY = 0.5  # seconds before the first retry of a broken download; doubles after


class SingleFlight(Generic[K, V]):
    """At most one running task per key; callers for a key in flight join that task."""

    def __init__(self) -> None:
        self._tasks: dict[K, asyncio.Task[V]] = {}

    def running(self, key: K) -> bool:
        return key in self._tasks

    async def run(self, key: K, factory: Callable[[], Awaitable[V]]) -> V:
        task = self._tasks.get(key)
        if task is None:

            async def call() -> V:
                return await factory()

            task = asyncio.create_task(call())
            self._tasks[key] = task
            task.add_done_callback(functools.partial(self._done, key))
        # shield: a caller that is cancelled leaves the task to the others
        return await asyncio.shield(task)

    def _done(self, key: K, task: asyncio.Task[V]) -> None:
        if self._tasks.get(key) is task:
            del self._tasks[key]
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning when nobody waits

    async def cancel_all(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@dataclass(frozen=True, kw_only=True)
class PulledImage:
    ref: str  # normalised, as pulled
    image_id: str  # config digest
    target_digest: str  # what the records point at: the manifest, or the index
    manifest_digest: str  # the manifest of this platform
    record_names: tuple[str, ...]  # tag (if any), repo digest, image ID
    chain_id: str
    size: int  # bytes of the config and layers, as stored
    downloaded: int  # layer bytes fetched by this pull (0 when all were present)
    seconds: float


class _Progress:
    """Bytes downloaded by one pull, logged now and then while it runs."""

    def __init__(self, ref: str, total: int) -> None:
        self.ref = ref
        self.total = total
        self.done = 0
        self.started = time.monotonic()

    def add(self, count: int) -> None:
        self.done += count

    async def report(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            elapsed = time.monotonic() - self.started
            log.info(
                "pull progress",
                extra={
                    "image": self.ref,
                    "downloaded_bytes": self.done,
                    "total_bytes": self.total,
                    "percent": round(100 * self.done / self.total, 1) if self.total else 100.0,
                    "mib_per_s": round(self.done / elapsed / (1 << 20), 2) if elapsed else 0.0,
                },
            )


class _BrokenDownload(Exception):
    """A blob download ended early or broke; what arrived is kept for a resumed attempt."""


@dataclass(kw_only=True)
class _Pull:
    """The state of one pull once its documents are fetched."""

    ref: Reference
    session: RegistrySession
    image: ingest.PlannedImage
    documents: list[tuple[dict[str, Any], bytes]]  # index, manifest, config: in memory


class ImagePuller:
    """Pulls for one daemon: HTTP clients, and the pulls and downloads in flight."""

    def __init__(
        self,
        *,
        client: ContainerdClient,
        config: RegistryConfig,
        snapshotter: str = "overlayfs",
        arch: str | None = None,
        max_downloads: int = 4,
        progress_interval: float = 10.0,
    ) -> None:
        self.client = client
        self._registry_config = config
        self._registry: Registry | None = None
        self.snapshotter = snapshotter
        self.arch = arch or spec.go_arch()
        self.progress_interval = progress_interval
        self._downloads = asyncio.Semaphore(max_downloads)
        self._pulls: SingleFlight[tuple[str, str], PulledImage] = SingleFlight()
        self._blobs: SingleFlight[str, int] = SingleFlight()

    @property
    def registry(self) -> Registry:
        """The registry client, made at the first pull: a node whose images are all loaded
        never imports the HTTP stack (httpx and its dependencies, about 2 MiB)."""
        if self._registry is None:
            from pycri.images.registry import Registry

            self._registry = Registry(self._registry_config)
        return self._registry

    async def close(self) -> None:
        await self._pulls.cancel_all()
        await self._blobs.cancel_all()
        if self._registry is not None:
            await self._registry.close()

    async def pull(self, ref: Reference, *, credentials: Credentials | None = None) -> PulledImage:
        """Pull ``ref`` (normalised; a digest wins over a tag) unless that pull is running."""
        key = (str(ref), credentials.fingerprint() if credentials else "")
        if self._pulls.running(key):
            log.info("joining a pull in progress", extra={"image": str(ref)})
        return await self._pulls.run(key, lambda: self._pull(ref, credentials))

    async def _pull(self, ref: Reference, credentials: Credentials | None) -> PulledImage:
        started = time.monotonic()
        log.info("pulling image", extra={"image": str(ref)})
        try:
            pull = await self._plan(ref, credentials)
            return await self._store(pull, started=started)
        except DigestMismatchError as err:
            raise DataLoss(f"pulling {ref}: {err}") from None
        except ImageContentError as err:
            raise FailedPrecondition(f"pulling {ref}: {err}") from None

    async def _plan(self, ref: Reference, credentials: Credentials | None) -> _Pull:
        session = self.registry.session(ref, credentials=credentials)
        target = await session.resolve(ref)
        doc = parse_json(target.data, what=f"manifest of {ref}")
        media_type = media_type_of(doc, target.descriptor["mediaType"])
        target_desc = {**target.descriptor, "mediaType": media_type}
        documents = [(target_desc, target.data)]
        position = -1
        manifest_desc, manifest_doc = target_desc, doc
        if media_type in spec.INDEX_TYPES:
            position, manifest_desc = pick_platform(
                doc, digest=target_desc["digest"], arch=self.arch
            )
            manifest_data = await self._stored(manifest_desc)
            if manifest_data is None:
                manifest_data = (await session.fetch_manifest(manifest_desc)).data
            manifest_doc = parse_json(manifest_data, what=f"manifest {manifest_desc['digest']}")
            documents.append((manifest_desc, manifest_data))
        config_desc, layers = manifest_parts(manifest_doc, digest=manifest_desc["digest"])
        if manifest_desc["mediaType"] not in spec.MANIFEST_TYPES:
            raise ImageContentError(
                f"{ref} is a {manifest_desc['mediaType'] or 'document of unknown type'}"
            )
        config_bytes = await self._stored(config_desc)
        if config_bytes is None:
            config_bytes = verify(
                await session.fetch_blob_bytes(config_desc, what="image config"),
                config_desc,
                what="image config",
            )
        documents.append((config_desc, config_bytes))
        image = ingest.plan_image(
            names=[str(ref)] if ref.tag and not ref.digest else [],
            target=target_desc,
            manifest_digest=manifest_desc["digest"],
            config_digest=config_desc["digest"],
            config=parse_json(config_bytes, what=f"image config {config_desc['digest']}"),
            layers=layers,
            arch=self.arch,
        )
        image.repositories.append(ref.name)
        if position >= 0:
            image.add_index(target_desc, position=position)
        return _Pull(ref=ref, session=session, image=image, documents=documents)

    async def _stored(self, desc: dict[str, Any]) -> bytes | None:
        """A document containerd has already (a re-pull), checked; None when it has not."""
        if desc["size"] > MAX_JSON_SIZE:
            return None
        try:
            data = await self.client.content.read(desc["digest"])
        except NotFoundError:
            return None
        return data if spec.sha256_digest(data) == desc["digest"] else None

    async def _store(self, pull: _Pull, *, started: float) -> PulledImage:
        image = pull.image
        layers = list({layer["digest"]: layer for layer in image.layers}.values())
        progress = _Progress(str(pull.ref), sum(layer["size"] for layer in layers))
        async with ingest.lease(self.client, prefix="pycri-pull") as lease:
            writer = ingest.ImageWriter(self.client, lease=lease, snapshotter=self.snapshotter)
            for desc, data in pull.documents:
                await writer.write_blob(
                    digest=desc["digest"],
                    size=desc["size"],
                    media_type=desc["mediaType"],
                    source=ingest.memory_source(data),
                )
            reporter = asyncio.create_task(progress.report(self.progress_interval))
            downloads = {
                layer["digest"]: asyncio.create_task(
                    self._layer(pull.session, writer, layer, progress)
                )
                for layer in layers
            }

            async def ready(layer: dict[str, Any]) -> None:
                await asyncio.shield(downloads[layer["digest"]])

            unpacking = asyncio.create_task(writer.unpack(image, ready=ready))
            try:
                # Wait for every layer and the unpack even when one fails: no download or
                # snapshot may outlive the lease.
                results = await asyncio.gather(
                    *downloads.values(), unpacking, return_exceptions=True
                )
            except asyncio.CancelledError:
                for task in [*downloads.values(), unpacking]:
                    task.cancel()
                await asyncio.gather(*downloads.values(), unpacking, return_exceptions=True)
                raise
            finally:
                reporter.cancel()
            # A download's error first: an unpack that failed waiting for it says less.
            for result in results:
                if isinstance(result, BaseException):
                    raise result
            applied = unpacking.result()
            record_names = await writer.finish(image)
        elapsed = time.monotonic() - started
        config_size = next(
            d["size"] for d, _ in pull.documents if d["digest"] == image.config_digest
        )
        pulled = PulledImage(
            ref=str(pull.ref),
            image_id=image.config_digest,
            target_digest=image.target["digest"],
            manifest_digest=image.manifest_digest,
            record_names=tuple(record_names),
            chain_id=image.chain_id,
            size=config_size + progress.total,
            downloaded=progress.done,
            seconds=elapsed,
        )
        log.info(
            "pulled image",
            extra={
                "image": pulled.ref,
                "image_id": pulled.image_id,
                "registry": pull.session.host,
                "layers": len(image.layers),
                "layers_applied": applied,
                "downloaded_bytes": pulled.downloaded,
                "seconds": round(elapsed, 3),
            },
        )
        return pulled

    async def _layer(
        self,
        session: RegistrySession,
        writer: ingest.ImageWriter,
        desc: dict[str, Any],
        progress: _Progress,
    ) -> None:
        """Get one layer into the content store, sharing a download already in flight."""
        digest = desc["digest"]
        for attempt in range(2):
            joined = self._blobs.running(digest)
            try:
                await self._blobs.run(
                    digest, lambda: self._download(session, writer, desc, progress)
                )
            except DigestMismatchError:
                raise
            except Exception:
                if not joined or attempt:
                    raise
                continue  # the other pull's download failed: try ours
            if joined:
                # Committed under the other pull's lease: hold it under ours too.
                await writer.hold_content(digest)
            return

    async def _download(
        self,
        session: RegistrySession,
        writer: ingest.ImageWriter,
        desc: dict[str, Any],
        progress: _Progress,
    ) -> int:
        """Download a blob into containerd, resuming broken attempts; bytes fetched."""
        digest, size = desc["digest"], desc["size"]
        ref = f"pycri-pull-{digest.replace(':', '-')}"
        fetched = 0

        async def chunks(offset: int) -> AsyncGenerator[bytes, None]:
            nonlocal fetched
            async for chunk in blob_chunks(session, desc, offset):
                fetched += len(chunk)
                progress.add(len(chunk))
                yield chunk

        async with self._downloads:
            for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
                try:
                    await writer.write_blob(
                        digest=digest,
                        size=size,
                        media_type=desc["mediaType"],
                        source=chunks,
                        ref=ref,
                        abort_on_error=False,
                    )
                except (_BrokenDownload, Unavailable) as err:
                    if attempt == DOWNLOAD_ATTEMPTS:
                        await writer.abort(ref)
                        raise Unavailable(
                            f"downloading {digest} from {session.host} failed "
                            f"{attempt} times; last: {err}"
                        ) from None
                    log.warning(
                        "blob download broke; resuming",
                        extra={"digest": digest, "attempt": attempt, "error": str(err)},
                    )
                    await asyncio.sleep(RETRY_DELAY * 2 ** (attempt - 1))
                    continue
                except BaseException:
                    await writer.abort(ref)
                    raise
                log.debug("blob stored", extra={"digest": digest, "size": size, "fetched": fetched})
                return fetched
        raise AssertionError("unreachable")


async def blob_chunks(
    session: RegistrySession, desc: dict[str, Any], offset: int
) -> AsyncGenerator[bytes, None]:
    """The blob's bytes from ``offset``, in ``CHUNK_SIZE`` pieces, never past its size."""
    import httpx  # loaded with the registry client, at the first pull (see ``registry``)

    digest, size = desc["digest"], desc["size"]
    async with session.open_blob(digest, offset=offset) as response:
        # 200: the registry ignored Range and sends it all; skip what containerd has.
        skip = offset if response.status_code == 200 else 0
        position = offset
        # The pieces (64 KiB reads) are joined once per chunk: one copy, no regrowing buffer.
        pieces: list[bytes] = []
        buffered = 0
        try:
            async for received in response.aiter_raw():
                piece = received
                if skip:
                    dropped = min(skip, len(piece))
                    piece, skip = piece[dropped:], skip - dropped
                if position + buffered + len(piece) > size:
                    raise DigestMismatchError(
                        f"blob {digest}: registry {session.host} sent more than its {size} bytes"
                    )
                if not piece:
                    continue
                pieces.append(piece)
                buffered += len(piece)
                if buffered >= CHUNK_SIZE:
                    position += buffered
                    chunk = b"".join(pieces)
                    pieces.clear()
                    buffered = 0
                    yield chunk
        except httpx.HTTPError as err:
            if pieces:  # keep what arrived: the retry resumes after it
                yield b"".join(pieces)
            raise _BrokenDownload(f"{type(err).__name__}: {err}") from None
        position += buffered
        if pieces:
            yield b"".join(pieces)
        if position < size:
            raise _BrokenDownload(f"blob {digest}: the body ended at {position} of {size} bytes")
