"""Disk usage of the snapshotter's directory, for ImageFsInfo: one walk, off the loop.

kubelet calls ImageFsInfo every few seconds and decides on image GC and evictions from it.
Walking a snapshotter directory can take long on a busy node, so the walk runs in a thread
(``asyncio.to_thread``), never on the event loop, and ``images.usage_refresher`` runs it in
the background and keeps the figure, so no call waits for it.

- The walk counts allocated blocks (like ``du``), each hard-linked inode once, and stays on the
  directory's file system, so bind or overlay mounts below it are not counted twice.

The directory comes from containerd: the snapshotter plugin exports its ``root`` through the
introspection API, so pycri reports the right path for a managed and a given containerd alike.
"""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from pycri.containerd.client import ContainerdClient

log = logging.getLogger(__name__)

SNAPSHOTTER_PLUGIN_TYPE = "io.containerd.snapshotter.v1"


@dataclass(frozen=True, kw_only=True)
class FilesystemUsage:
    timestamp_ns: int
    mountpoint: str
    used_bytes: int
    inodes_used: int


def measure(path: Path) -> tuple[int, int]:
    """(bytes allocated, inodes) below ``path`` on its file system. Blocking."""
    try:
        top = os.lstat(path)
    except FileNotFoundError:
        return 0, 0
    device = top.st_dev
    seen: set[int] = {top.st_ino}
    used = top.st_blocks * 512
    stack = [os.fspath(path)]
    while stack:
        directory = stack.pop()
        try:
            with os.scandir(directory) as it:
                entries = list(it)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue  # removed while walking, or unreadable: count what is there
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if st.st_dev != device or st.st_ino in seen:
                continue
            seen.add(st.st_ino)
            used += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return used, len(seen)


class SnapshotterUsage:
    """Measures one snapshotter's root directory; ``usage_refresher`` keeps the figure."""

    def __init__(self, client: ContainerdClient, *, snapshotter: str) -> None:
        self._client = client
        self.snapshotter = snapshotter
        self._root: Path | None = None

    async def root(self) -> Path:
        """The snapshotter's root directory, as containerd exports it (asked once)."""
        if self._root is None:
            # One filter: separate ones would be OR'ed by containerd.
            plugins = await self._client.plugins(
                [f"type=={SNAPSHOTTER_PLUGIN_TYPE},id=={self.snapshotter}"], timeout=10
            )
            for plugin in plugins.plugins:
                if (
                    plugin.type == SNAPSHOTTER_PLUGIN_TYPE
                    and plugin.id == self.snapshotter
                    and plugin.exports.get("root")
                ):
                    self._root = Path(plugin.exports["root"])
                    break
            else:
                raise RuntimeError(
                    f"containerd has no snapshotter {self.snapshotter!r} with a root directory"
                )
        return self._root

    async def measure(self) -> FilesystemUsage:
        """Walk the root now, in a thread."""
        root = await self.root()
        started = time.monotonic()
        used, inodes = await asyncio.to_thread(measure, root)
        log.debug(
            "measured snapshotter usage",
            extra={
                "root": str(root),
                "used_bytes": used,
                "inodes": inodes,
                "duration_ms": round((time.monotonic() - started) * 1e3, 1),
            },
        )
        return FilesystemUsage(
            timestamp_ns=time.time_ns(), mountpoint=str(root), used_bytes=used, inodes_used=inodes
        )
