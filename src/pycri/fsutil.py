"""File system helpers for paths a request names: opened beneath a directory without
following links, and directories made so that a rollback can take exactly them away again.

A CRI client names paths inside directories pycri trusts (a container's ``log_path`` inside
its pod's ``log_directory``). Joining the two and calling ``open`` would follow any symlink
a container (which can write to its log directory through a volume) or another user put
there, and append pycri's output to whatever file it points at. ``open_beneath`` walks the
relative part one component at a time with ``openat(..., O_NOFOLLOW)`` from a descriptor of
the trusted directory, so no component may be a symlink and nothing outside is ever
reached (the kernel's ``openat2(RESOLVE_BENEATH)`` would allow links that stay beneath; a
log directory has no business holding any, so refusing them all is simpler and as safe).
``..`` and ``.`` components are refused before the walk.

``make_dirs`` is ``mkdir -p`` that reports which directories it created, so that undoing a
failed create removes only those (and only while they are still empty).

Everything here blocks (file system calls): callers on the event loop use
``asyncio.to_thread``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

DIR_MODE = 0o755


def clean_components(relative: str) -> list[str]:
    """The components of a relative path; ValueError for ``..``, ``.`` or an empty one."""
    if not relative or relative.startswith("/"):
        raise ValueError(f"{relative!r} is not a relative path")
    parts = relative.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise ValueError(f"{relative!r} has an empty, '.' or '..' component")
    return parts


def _open_dir_beneath(base_fd: int, parts: list[str]) -> int:
    """A descriptor of ``parts`` below ``base_fd`` (which is not closed), links refused."""
    fd = os.dup(base_fd)
    try:
        for part in parts:
            next_fd = os.open(
                part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
            )
            os.close(fd)
            fd = next_fd
    except BaseException:
        os.close(fd)
        raise
    return fd


def _parent_beneath(base: str, relative: str) -> tuple[int, str]:
    """(a descriptor of ``relative``'s directory, reached from ``base`` without links, and
    its last component); the caller closes the descriptor."""
    parts = clean_components(relative)
    base_fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_dir_beneath(base_fd, parts[:-1]), parts[-1]
    finally:
        os.close(base_fd)


def open_beneath(base: str, relative: str, flags: int, mode: int = 0o640) -> int:
    """Open ``base/relative`` without following a symlink in any component of ``relative``.

    ``base`` itself is trusted and may contain links. OSError from the kernel (ELOOP or
    ENOTDIR for a link, ENOENT for a missing directory); ValueError for a path with ``..``.
    """
    dir_fd, name = _parent_beneath(base, relative)
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    finally:
        os.close(dir_fd)


def check_beneath(base: str, relative: str) -> None:
    """Raise OSError/ValueError unless ``relative``'s directory exists beneath ``base``
    without links, and its last component is not a link nor a directory."""
    dir_fd, name = _parent_beneath(base, relative)
    try:
        try:
            info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return  # created at start
        if not stat.S_ISREG(info.st_mode):
            code = errno.EISDIR if stat.S_ISDIR(info.st_mode) else errno.ELOOP
            raise OSError(code, os.strerror(code))
    finally:
        os.close(dir_fd)


def make_dirs(path: Path, mode: int = DIR_MODE) -> list[Path]:
    """``mkdir -p path``; the directories it created, outermost first (empty: all existed).

    OSError when a component exists and is not a directory, or cannot be made; what this
    call created before the failure is removed again.
    """
    missing: list[Path] = []
    current = path
    while not current.exists():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    created: list[Path] = []
    try:
        for directory in reversed(missing):
            try:
                directory.mkdir(mode=mode)
            except FileExistsError:
                if not directory.is_dir():
                    raise
                continue  # made concurrently by someone else: not ours to remove
            created.append(directory)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "not a directory", str(path))
    except BaseException:
        remove_empty_dirs(created)
        raise
    return created


def remove_empty_dirs(created: list[Path]) -> None:
    """Undo ``make_dirs``: remove what it created, innermost first, if still empty."""
    for directory in reversed(created):
        try:
            directory.rmdir()
        except FileNotFoundError:
            continue
        except OSError:
            return  # something was put there since: keep it and everything above it
