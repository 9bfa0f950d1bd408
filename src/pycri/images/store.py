"""The image store: an in-memory index of containerd's images, as the CRI image service sees them.

containerd keeps image *records* (a name → a target descriptor); the CRI speaks of *images*
(an image ID = the config digest, with repo tags and repo digests). One CRI image is the set
of records whose target leads to the same config: its tags (``docker.io/library/busybox:
latest``), its repo digests (``docker.io/library/busybox@sha256:<manifest>``) and its ID
record (``sha256:<config>``, the name kubelet uses).

Memory:
- ``_records``: record name → what its target resolved to (image ID, manifest, config, size,
  chain ID). ``_names_by_id``: image ID → record names. ``_images``: image ID → ``Image``,
  rebuilt whenever the names of that ID change. Readers (``find``, ``list``, ``get``)
  only read these dicts and never await, so they are consistent and never touch containerd.
- ``_targets``: target digest → resolution. Content is immutable per digest, so this cache
  never goes stale; refreshes read the content store only for targets not seen before, and
  a target no record points at any more is dropped.

Refreshing talks to containerd: ``refresh_all()`` (daemon start) lists every record;
``refresh(name)`` re-reads one record (image events, and a lookup that missed). Records whose
content is incomplete for linux/<this arch> (a foreign platform, a pull in progress) are
skipped with a warning, like containerd's CRI plugin does at start.

Races:
- Two refreshes could read containerd in one order and apply in the other, leaving the older
  view in memory. All refreshes therefore run under one lock: each reads and applies before
  the next reads, so the last refresh applied is also the last one read.
- A lookup and an import race: an image imported (or removed) behind pycri's back is seen on
  its containerd event, or earlier by ``resolve``, which re-reads a missed name
  once. A stale *hit* (removed behind pycri's back, event not yet handled) is possible until
  the event arrives; consumers that need the content (CreateContainer) fail on containerd's
  side then, with NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import NotFoundError
from pycri.images import reference, spec
from pycri.images.fs_usage import FilesystemUsage, SnapshotterUsage
from pycri.images.model import Image, ImageConfig
from pycri.images.usage_refresher import UsageRefresher

log = logging.getLogger(__name__)

# containerd ≥1.7's CRI plugin marks pinned images with this label; honour it too.
LABEL_PINNED = "io.cri-containerd.pinned"
# Shortest image-ID prefix ``find`` accepts, so a short name never picks an image by chance.
MIN_ID_PREFIX = 4
_HEX_PREFIX = re.compile(r"^(?:sha256:)?([0-9a-f]+)$")


class IncompleteImageError(Exception):
    """A record's target cannot be followed to a config for this platform (content missing)."""


@dataclass(frozen=True, kw_only=True)
class _Resolved:
    image_id: str
    manifest_digest: str
    size: int
    chain_id: str
    config: ImageConfig


@dataclass(frozen=True, kw_only=True)
class _Record:
    target_digest: str
    resolved: _Resolved
    pinned: bool


def image_config_from_json(doc: Any) -> ImageConfig:
    """The runtime fields of an OCI/Docker image config document (its ``config`` object)."""
    body = doc.get("config") if isinstance(doc, dict) else None
    if not isinstance(body, dict):
        return ImageConfig()

    def strings(key: str) -> tuple[str, ...]:
        value = body.get(key)
        return tuple(str(v) for v in value) if isinstance(value, list) else ()

    def keys(key: str) -> tuple[str, ...]:
        value = body.get(key)
        return tuple(sorted(value)) if isinstance(value, dict) else ()

    labels = body.get("Labels")
    return ImageConfig(
        entrypoint=strings("Entrypoint"),
        cmd=strings("Cmd"),
        env=strings("Env"),
        working_dir=str(body.get("WorkingDir") or ""),
        user=str(body.get("User") or ""),
        stop_signal=str(body.get("StopSignal") or ""),
        labels={str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {},
        volumes=keys("Volumes"),
        exposed_ports=keys("ExposedPorts"),
    )


def _classify(name: str) -> str:
    """``id``, ``digest`` or ``tag``: what role a record name plays for the CRI ("" if none)."""
    if reference.is_image_id(name):
        return "id"
    try:
        parsed = reference.parse(name)
    except ValueError:
        return ""
    if parsed.digest:
        return "digest"
    return "tag" if parsed.tag else ""


class ImageStore:
    def __init__(
        self,
        client: ContainerdClient,
        *,
        snapshotter: str = "overlayfs",
        pinned_refs: Sequence[str] = (),
        arch: str | None = None,
        usage_period: float = 10.0,
    ) -> None:
        self._client = client
        self.snapshotter = snapshotter
        self.arch = arch or spec.go_arch()
        self._pinned_refs = frozenset(reference.normalize(r) for r in pinned_refs)
        self._records: dict[str, _Record] = {}
        self._names_by_id: dict[str, set[str]] = {}
        self._images: dict[str, Image] = {}
        self._targets: dict[str, _Resolved] = {}
        self._refresh_lock = asyncio.Lock()
        # ImageFsInfo's figure; the daemon starts its refresh task, image changes poke it.
        self.usage = UsageRefresher(
            source=SnapshotterUsage(client, snapshotter=snapshotter).measure, period=usage_period
        )

    # --- reads: memory only -------------------------------------------------------------

    def list(self) -> list[Image]:
        return sorted(self._images.values(), key=lambda image: image.id)

    def get(self, image_id: str) -> Image | None:
        return self._images.get(image_id)

    def names_of(self, image_id: str) -> tuple[str, ...]:
        """Every containerd record name of an image (tags, repo digests, ID record)."""
        return tuple(sorted(self._names_by_id.get(image_id, ())))

    def find(self, ref_or_id: str) -> Image | None:
        """The image a CRI image string names, from memory only; None when unknown.

        Accepts, in this order: a full image ID (``sha256:<64 hex>`` or the bare hex), a
        reference (``busybox``, ``repo:tag``, ``repo@sha256:...``; normalised; with both tag
        and digest the digest decides), or a unique ID prefix of at least ``MIN_ID_PREFIX``
        hex digits (with or without ``sha256:``). An ambiguous prefix resolves to None.
        """
        image_id = self._lookup_name(ref_or_id)
        if image_id is not None:
            return self._images.get(image_id)
        match = _HEX_PREFIX.match(ref_or_id)
        if match and len(match.group(1)) >= MIN_ID_PREFIX:
            prefix = f"sha256:{match.group(1)}"
            found = [i for i in self._images if i.startswith(prefix)]
            if len(found) == 1:
                return self._images[found[0]]
        return None

    def _lookup_name(self, ref_or_id: str) -> str | None:
        name = record_name_for(ref_or_id)
        if name is None:
            return None
        record = self._records.get(name)
        return record.resolved.image_id if record is not None else None

    async def snapshotter_usage(self) -> FilesystemUsage:
        return await self.usage.usage()

    # --- refreshes: talk to containerd, serialized --------------------------------------

    async def resolve(self, ref_or_id: str) -> Image | None:
        """``find``, and on a miss re-read that one name from containerd and look again.

        The miss path costs one containerd ``Images.Get``: it covers an image imported or
        pulled behind pycri's back whose event has not been handled yet (or was lost).
        """
        image = self.find(ref_or_id)
        if image is not None:
            return image
        name = record_name_for(ref_or_id)
        if name is None:
            return None
        await self.refresh(name)
        return self.find(ref_or_id)

    async def refresh_all(self) -> None:
        """Rebuild the whole index from containerd's image records."""
        async with self._refresh_lock:
            records = await self._client.images.list()
            fresh: dict[str, _Record] = {}
            for record in records:
                try:
                    fresh[record.name] = await self._read_record(record)
                except IncompleteImageError as err:
                    log.warning(
                        "skipping image record",
                        extra={"image_name": record.name, "reason": str(err)},
                    )
            self._records = fresh
            # Keep resolutions of current targets only, so removed images don't pile up.
            live = {item.target_digest for item in fresh.values()}
            self._targets = {d: r for d, r in self._targets.items() if d in live}
            self._names_by_id = {}
            for name, item in fresh.items():
                self._names_by_id.setdefault(item.resolved.image_id, set()).add(name)
            self._images = {}
            for image_id in self._names_by_id:
                self._rebuild(image_id)
            log.info(
                "image store loaded",
                extra={"records": len(self._records), "images": len(self._images)},
            )
        self.usage.poke()

    async def refresh(self, name: str) -> Image | None:
        """Re-read one containerd record (an image event for ``name``); the image it names now.

        The record's siblings (records with the same target: the repo digest and ID record
        made with a tag) are re-read with it, so an image first seen through one name comes
        with all its names. A record that is gone (or incomplete) drops the name; an image
        left without names drops out of the store.
        """
        async with self._refresh_lock:
            try:
                record = await self._client.images.get(name)
                item: _Record | None = await self._read_record(record)
            except NotFoundError:
                item = None
            except IncompleteImageError as err:
                log.warning(
                    "image record is incomplete", extra={"image_name": name, "reason": str(err)}
                )
                item = None
            self._apply(name, item)
            self.usage.poke()  # a pull, an import or a removal changes the snapshotter's use
            if item is not None:
                await self._refresh_siblings(name, item)
            return self._images.get(item.resolved.image_id) if item else None

    async def _refresh_siblings(self, name: str, item: _Record) -> None:
        digest = item.target_digest
        siblings = await self._client.images.list([f'target.digest=="{digest}"'])
        listed = {sibling.name for sibling in siblings}
        for sibling in siblings:
            if sibling.name != name and sibling.target.digest == digest:
                # Same target, so the same resolution: no content read.
                self._apply(sibling.name, await self._read_record(sibling))
        gone = [
            n for n, r in self._records.items() if r.target_digest == digest and n not in listed
        ]
        for stale in gone:
            self._apply(stale, None)

    def _apply(self, name: str, item: _Record | None) -> None:
        touched: set[str] = set()
        old = self._records.pop(name, None)
        if old is not None:
            old_id = old.resolved.image_id
            self._names_by_id.get(old_id, set()).discard(name)
            touched.add(old_id)
        if item is not None:
            self._records[name] = item
            self._names_by_id.setdefault(item.resolved.image_id, set()).add(name)
            touched.add(item.resolved.image_id)
        for image_id in touched:
            self._rebuild(image_id)
        if old is not None and all(
            r.target_digest != old.target_digest for r in self._records.values()
        ):
            self._targets.pop(old.target_digest, None)
        if old is None and item is not None:
            log.debug(
                "image record added", extra={"image_name": name, "image_id": item.resolved.image_id}
            )
        elif old is not None and item is None:
            log.debug("image record dropped", extra={"image_name": name})

    def _rebuild(self, image_id: str) -> None:
        names = self._names_by_id.get(image_id)
        if not names:
            self._names_by_id.pop(image_id, None)
            self._images.pop(image_id, None)
            return
        records = {n: self._records[n] for n in names}
        # The ID record decides which manifest (and so size) the image reports, when there is
        # one: both an OCI and a docker manifest can carry the same config.
        main = records.get(image_id) or records[min(records)]
        tags = sorted(n for n in names if _classify(n) == "tag")
        self._images[image_id] = Image(
            id=image_id,
            repo_tags=tuple(tags),
            repo_digests=tuple(sorted(n for n in names if _classify(n) == "digest")),
            size=main.resolved.size,
            chain_id=main.resolved.chain_id,
            config=main.resolved.config,
            manifest_digest=main.resolved.manifest_digest,
            pinned=any(r.pinned for r in records.values())
            or any(t in self._pinned_refs for t in tags),
        )

    async def _read_record(self, record: Any) -> _Record:
        target = record.target
        resolved = self._targets.get(target.digest)
        if resolved is None:
            resolved = await self._resolve_target(target.media_type, target.digest)
            self._targets[target.digest] = resolved
        return _Record(
            target_digest=target.digest,
            resolved=resolved,
            pinned=record.labels.get(LABEL_PINNED) == "pinned",
        )

    async def _read_json(self, digest: str, *, what: str) -> Any:
        try:
            data = await self._client.content.read(digest)
        except NotFoundError:
            raise IncompleteImageError(f"{what} {digest} is not in the content store") from None
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise IncompleteImageError(f"{what} {digest} is not valid JSON: {err}") from None

    async def _resolve_target(self, media_type: str, digest: str) -> _Resolved:
        doc = await self._read_json(digest, what="image target")
        manifest_digest = digest
        # An index (multi-platform image): follow it to the manifest of this platform.
        for _depth in range(4):
            if not isinstance(doc, dict):
                raise IncompleteImageError(f"image document {manifest_digest} is not an object")
            if media_type not in spec.INDEX_TYPES and "manifests" not in doc:
                break
            manifest_digest, media_type = self._pick_platform(doc, index_digest=manifest_digest)
            doc = await self._read_json(manifest_digest, what="manifest")
        config_desc = doc.get("config") if isinstance(doc, dict) else None
        layers = doc.get("layers") if isinstance(doc, dict) else None
        if not isinstance(config_desc, dict) or not isinstance(layers, list):
            raise IncompleteImageError(f"manifest {manifest_digest} has no config or layers")
        config = await self._read_json(str(config_desc.get("digest")), what="image config")
        rootfs = config.get("rootfs") if isinstance(config, dict) else None
        diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
        if not isinstance(diff_ids, list):
            raise IncompleteImageError(f"image config {config_desc.get('digest')} has no diff_ids")
        size = int(config_desc.get("size") or 0) + sum(
            int(layer.get("size") or 0) for layer in layers if isinstance(layer, dict)
        )
        return _Resolved(
            image_id=str(config_desc["digest"]),
            manifest_digest=manifest_digest,
            size=size,
            chain_id=spec.chain_id([str(d) for d in diff_ids]),
            config=image_config_from_json(config),
        )

    def _pick_platform(self, index: dict[str, Any], *, index_digest: str) -> tuple[str, str]:
        entries: Iterable[Any] = index.get("manifests") or []
        for entry in entries:
            if isinstance(entry, dict) and spec.platform_matches(
                entry.get("platform"), arch=self.arch
            ):
                return str(entry.get("digest")), str(entry.get("mediaType", ""))
        raise IncompleteImageError(f"image index {index_digest} has no linux/{self.arch} manifest")


def record_name_for(ref_or_id: str) -> str | None:
    """The containerd record name a CRI image string would be stored under, or None.

    ``sha256:<hex>`` and bare 64-hex IDs → the ID record; references → their normalised
    spelling (``name@digest`` when a digest is given, even with a tag).
    """
    if reference.is_image_id(ref_or_id):
        return ref_or_id
    if re.fullmatch(r"[0-9a-f]{64}", ref_or_id):
        return f"sha256:{ref_or_id}"
    try:
        parsed = reference.parse_normalized(ref_or_id)
    except ValueError:
        return None
    if parsed.digest:
        return str(parsed.with_digest(parsed.digest))
    return str(parsed)
