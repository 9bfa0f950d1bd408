"""Pushing an OCI image-layout tarball to a registry (OCI distribution API, HTTP API v2).

The tests fill their registries with it, and it moves an image built by ``pycri.testing.images``
to any registry. The push walks the image graph children first, so a registry never sees a
document naming content it does not have yet (registries check, and refuse such a
manifest):

1. Pick the image: the archive's only ``index.json`` entry, or the one whose
   ``io.containerd.image.name`` is the target reference.
2. For a manifest: upload its config and layers, then PUT the manifest by digest. For an
   index: push each child manifest (every one must be in the archive), then PUT the index
   by digest.
3. PUT the top document again under the target's tag (a digest target needs no tag, but
   must be the image's digest).

A blob the repository has already (``HEAD``) is not sent. Uploads are monolithic: ``POST``
opens an upload session, one ``PUT`` with the digest sends the whole blob, streamed from the
tarball off the event loop. Documents are sent byte for byte as the archive has them, so
their digests do not change. Authorization follows ``registry``: scope ``pull,push``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycri.images import reference, spec
from pycri.images.auth import Credentials
from pycri.images.document import (
    ImageContentError,
    descriptor,
    index_entries,
    manifest_parts,
    media_type_of,
    parse_json,
)
from pycri.images.layout import Archive, blob_member, member_chunks
from pycri.images.registry import Registry, RegistrySession

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PushedImage:
    ref: str  # normalised target
    digest: str  # of the top document (manifest or index)
    media_type: str
    uploaded: int  # blobs sent
    present: int  # blobs the registry had already


@dataclass(kw_only=True)
class _Push:
    archive: Archive
    session: RegistrySession
    uploaded: int = 0
    present: int = 0

    async def blob(self, desc: dict[str, Any]) -> None:
        digest = desc["digest"]
        if await self.session.blob_exists(digest):
            self.present += 1
            return
        member = blob_member(digest)
        if member not in self.archive:
            raise ImageContentError(f"blob {digest} is missing from {self.archive.path}")
        await self.session.upload_blob(desc, functools.partial(member_chunks, self.archive, member))
        self.uploaded += 1

    async def document(self, desc: dict[str, Any]) -> str:
        """Push a manifest or index and everything under it; its media type."""
        data = await asyncio.to_thread(self.archive.read_blob, desc, what="manifest")
        doc = parse_json(data, what=f"manifest {desc['digest']}")
        media_type = media_type_of(doc, desc["mediaType"])
        if media_type in spec.INDEX_TYPES:
            for child, _platform in index_entries(doc, digest=desc["digest"]):
                await self.document(child)
        elif media_type in spec.MANIFEST_TYPES:
            config, layers = manifest_parts(doc, digest=desc["digest"])
            for blob in (config, *layers):
                await self.blob(blob)
        else:
            raise ImageContentError(f"{desc['digest']}: cannot push a {media_type or 'document'}")
        await self.session.put_manifest(desc["digest"], data, media_type=media_type)
        return media_type


def _pick_entry(index: Any, target: reference.Reference) -> dict[str, Any]:
    entries = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ImageContentError("index.json lists no manifests")
    if len(entries) == 1:
        return descriptor(entries[0], what="index.json entry")
    for entry in entries:
        name = ((entry or {}).get("annotations") or {}).get(spec.ANNOTATION_CONTAINERD_NAME, "")
        if name and reference.normalize(name) == str(target):
            return descriptor(entry, what="index.json entry")
    raise ImageContentError(f"index.json lists {len(entries)} images, none named {target}")


async def push_layout(
    registry: Registry,
    tarball: Path,
    target: str,
    *,
    credentials: Credentials | None = None,
) -> PushedImage:
    """Push the image of an OCI-layout tarball to ``target`` (``host/repo:tag``)."""
    ref = reference.parse_normalized(target)
    archive = await asyncio.to_thread(Archive, tarball)
    try:
        index = parse_json(
            await asyncio.to_thread(archive.read_json_bytes, "index.json"), what="index.json"
        )
        entry = _pick_entry(index, ref)
        if ref.digest and ref.digest != entry["digest"]:
            raise ImageContentError(f"{tarball} holds {entry['digest']}, not {ref.digest}")
        push = _Push(
            archive=archive, session=registry.session(ref, credentials=credentials, push=True)
        )
        media_type = await push.document(entry)
        if ref.tag:
            data = await asyncio.to_thread(archive.read_blob, entry, what="manifest")
            await push.session.put_manifest(ref.tag, data, media_type=media_type)
    finally:
        await asyncio.to_thread(archive.close)
    pushed = PushedImage(
        ref=str(ref),
        digest=entry["digest"],
        media_type=media_type,
        uploaded=push.uploaded,
        present=push.present,
    )
    log.info(
        "pushed image",
        extra={"image": pushed.ref, "digest": pushed.digest, "uploaded": pushed.uploaded},
    )
    return pushed
