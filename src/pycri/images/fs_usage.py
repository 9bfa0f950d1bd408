"""Disk usage of the snapshotter's directory, for ImageFsInfo: sampled off the loop, cached.

kubelet calls ImageFsInfo every few seconds and decides on image GC and evictions from it.
Walking a snapshotter directory can take long on a busy node, so:

- The walk runs in a thread (``asyncio.to_thread``), never on the event loop.
- A sample is reused for ``max_age`` seconds: usage changes slowly and kubelet tolerates a
  slightly old value (containerd's plugin samples every 10 s in the background).
- Concurrent callers share one walk (single flight): a second request during a walk awaits the
  same task instead of starting another walk.
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
    """Cached usage of one snapshotter's root directory."""

    def __init__(self, client: ContainerdClient, *, snapshotter: str, max_age: float = 5.0) -> None:
        self._client = client
        self.snapshotter = snapshotter
        self.max_age = max_age
        self._root: Path | None = None
        self._sample: FilesystemUsage | None = None
        self._sampled_at = 0.0
        self._walk: asyncio.Task[FilesystemUsage] | None = None

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

    async def usage(self) -> FilesystemUsage:
        now = time.monotonic()
        if self._sample is not None and now - self._sampled_at < self.max_age:
            return self._sample
        if self._walk is None or self._walk.done():
            # A finished walk here failed (a good one left a fresh sample): walk again.
            self._walk = asyncio.create_task(self._measure())
            self._walk.add_done_callback(_consume_exception)
        # shield: a caller cancelled mid-walk must not cancel the walk other callers share
        return await asyncio.shield(self._walk)

    async def _measure(self) -> FilesystemUsage:
        root = await self.root()
        started = time.monotonic()
        used, inodes = await asyncio.to_thread(measure, root)
        sample = FilesystemUsage(
            timestamp_ns=time.time_ns(), mountpoint=str(root), used_bytes=used, inodes_used=inodes
        )
        self._sample, self._sampled_at = sample, time.monotonic()
        log.debug(
            "measured snapshotter usage",
            extra={
                "root": str(root),
                "used_bytes": used,
                "inodes": inodes,
                "duration_ms": round((time.monotonic() - started) * 1e3, 1),
            },
        )
        return sample


def _consume_exception(task: asyncio.Task[FilesystemUsage]) -> None:
    # Every waiter gets the error; this only keeps asyncio from warning when none is left.
    if not task.cancelled():
        task.exception()
