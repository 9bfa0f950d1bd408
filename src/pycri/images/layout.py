"""Random access to image tarballs: OCI image layouts and docker archives. Blocking.

The importer reads them into containerd and the push sends them to a registry; both open
the tarball here and read members by name (``blobs/sha256/<hex>`` for an OCI layout).
Members are found by their cleaned path, so ``./index.json`` and ``index.json`` are one.
JSON documents are read whole but bounded (``MAX_JSON_SIZE``); blobs are streamed.
Every method of ``Archive`` blocks (tarfile, gzip): async callers run them in a thread, or
stream a member with ``member_chunks``, which does.
"""

from __future__ import annotations

import asyncio
import hashlib
import tarfile
from collections.abc import AsyncGenerator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pycri.images.document import MAX_JSON_SIZE, ImageContentError, verify

CHUNK_SIZE = 1 << 20


class LayoutError(ImageContentError):
    """The tarball cannot be read, or lacks a member it needs."""


def clean_name(name: str) -> str:
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    return "/".join(parts)


def blob_member(digest: str) -> str:
    """Where an OCI layout keeps the blob ``digest``."""
    algorithm, _, hex_part = digest.partition(":")
    if not algorithm or not hex_part or "/" in digest:
        raise LayoutError(f"invalid digest {digest!r} in the archive")
    return f"blobs/{algorithm}/{hex_part}"


class Archive:
    """The members of a (possibly compressed) tarball."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._tar = tarfile.open(path, mode="r:*")  # noqa: SIM115 - closed by close()
        except (tarfile.TarError, OSError) as err:
            raise LayoutError(f"{path}: not a readable tar archive: {err}") from None
        self.members: dict[str, tarfile.TarInfo] = {}
        for info in self._tar.getmembers():
            if info.isfile() or info.issym() or info.islnk():
                self.members[clean_name(info.name)] = info

    def close(self) -> None:
        self._tar.close()

    def __contains__(self, name: str) -> bool:
        return name in self.members

    def open(self, name: str) -> IO[bytes]:
        info = self.members.get(name)
        if info is None:
            raise LayoutError(f"{self.path}: {name} is missing from the archive")
        try:
            fileobj = self._tar.extractfile(info)
        except (KeyError, tarfile.TarError) as err:
            raise LayoutError(f"{self.path}: cannot read {name}: {err}") from None
        if fileobj is None:
            raise LayoutError(f"{self.path}: {name} is not a regular file")
        return fileobj

    def read_json_bytes(self, name: str) -> bytes:
        with self.open(name) as f:
            data = f.read(MAX_JSON_SIZE + 1)
        if len(data) > MAX_JSON_SIZE:
            raise LayoutError(f"{self.path}: {name} is larger than {MAX_JSON_SIZE} bytes")
        return data

    def read_blob(self, desc: dict[str, Any], *, what: str) -> bytes:
        """A JSON blob of an OCI layout, checked against its descriptor."""
        return verify(self.read_json_bytes(blob_member(desc["digest"])), desc, what=what)

    def has_blob(self, desc: dict[str, Any]) -> bool:
        return blob_member(desc["digest"]) in self

    def open_at(self, name: str, offset: int) -> IO[bytes]:
        """A member opened and positioned at ``offset`` (a resumed write)."""
        fileobj = self.open(name)
        if offset:
            fileobj.seek(offset)
        return fileobj

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


async def member_chunks(
    archive: Archive, name: str, offset: int = 0
) -> AsyncGenerator[bytes, None]:
    """A member's bytes from ``offset`` on, read in a thread chunk by chunk (non-blocking)."""
    fileobj = await asyncio.to_thread(archive.open_at, name, offset)
    try:
        while chunk := await asyncio.to_thread(fileobj.read, CHUNK_SIZE):
            yield chunk
    finally:
        await asyncio.to_thread(fileobj.close)
