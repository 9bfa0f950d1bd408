"""Atomic, versioned JSON checkpoints on disk.

A checkpoint is written to a temp file in the same directory, fsynced, renamed over the old
one, and the directory is fsynced: after a crash at any point the file holds either the old
or the new document, never a torn one. Writes run in a worker thread so a slow disk stalls
only the caller, never the event loop. Each document carries ``version``; an unknown version
is a load error (the caller rebuilds the status from containerd and logs it).

A write never creates directories: the object's directory is made when the object is
(CreateContainer, RunPodSandbox, recovery), so a late write for an object whose directory
removal already deleted fails instead of bringing the directory back.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

CHECKPOINT_VERSION = 1


class CheckpointError(Exception):
    """A checkpoint is missing, unreadable, corrupt, or of an unknown version."""


def write_sync(path: Path, document: dict[str, Any]) -> None:
    """Atomically replace ``path``; FileNotFoundError when its directory does not exist."""
    data = json.dumps({"version": CHECKPOINT_VERSION, **document}, sort_keys=True).encode()
    replace_file(path, data)


def replace_file(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Put ``data`` at ``path`` atomically (blocking): a dot-named temp file in the same dir,
    fsynced, renamed over ``path``, and the dir fsynced. Readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_sync(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} is missing") from None
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} is unreadable: {err}") from None
    try:
        document = json.loads(raw)
    except ValueError as err:
        raise CheckpointError(f"checkpoint {path} is corrupt: {err}") from None
    if not isinstance(document, dict):
        raise CheckpointError(f"checkpoint {path} is corrupt: not an object")
    if document.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"checkpoint {path} has unknown version {document.get('version')!r}")
    return document


async def write(path: Path, document: dict[str, Any]) -> None:
    await asyncio.to_thread(write_sync, path, document)


async def read(path: Path) -> dict[str, Any]:
    return await asyncio.to_thread(read_sync, path)


def remove_sync(path: Path) -> None:
    """Unlink ``path`` (missing is fine) and fsync its directory, so the removal is durable."""
    try:
        path.unlink()
    except FileNotFoundError:
        return
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
