"""A disk-usage figure kept fresh in the background, so ImageFsInfo never waits for a walk.

kubelet asks for ImageFsInfo every few seconds (eviction manager, image GC, summary API) and
tolerates a figure some seconds old: the response carries the sample's own timestamp.
containerd's CRI plugin works the same way (a snapshot syncer refreshes its usage every
``stats_collect_period``, 10 s by default, and ImageFsInfo reads the cache). Walking the
snapshotter's directory costs milliseconds on a small node and seconds on a busy one, so
answering from a cache refreshed by one background task keeps that cost off every call.

Staleness and races:

- **Period.** One task (``start``) walks, sleeps ``period`` seconds, walks again. A figure is
  at most ``period`` plus one walk old while the task runs.
- **Early refresh.** ``poke()`` (the image store calls it when an image is added, changed or
  removed) wakes the task at once instead of at the end of its sleep, so a kubelet sees a pull
  or a removal within about ``min_interval`` seconds. Pokes coalesce: any number during a
  walk cause one more walk after it (that walk may have read the directory before the change),
  and walks stay at least ``min_interval`` apart, so a burst of pulls costs a few walks, not
  one per pull. containerd removes a removed image's snapshots in its garbage collector,
  shortly after the record; what the walk after a poke misses, the next periodic walk sees.
- **Before the first walk.** A call that finds no figure yet (the daemon just started, or the
  first walk failed) waits for the walk in progress, or starts one; concurrent callers share
  it (single flight, shielded so a caller's cancellation does not cancel it for the others).
  A failed walk reaches the callers waiting for it; a later call tries again.
- **Without the task** (``start`` not called: tools, tests), a figure older than ``period``
  is refreshed on demand by the caller, as above.
- **Stop** cancels the task; a walk running in its thread finishes there and is dropped.

The walk itself (``source``) runs off the event loop (``images.fs_usage``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from pycri.images.fs_usage import FilesystemUsage

log = logging.getLogger(__name__)


class UsageRefresher:
    """The latest ``FilesystemUsage`` from ``source``, refreshed every ``period`` seconds."""

    def __init__(
        self,
        *,
        source: Callable[[], Awaitable[FilesystemUsage]],
        period: float,
        min_interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if period <= 0 or min_interval < 0:
            raise ValueError("period must be positive, min_interval not negative")
        self._source = source
        self.period = period
        self.min_interval = min(min_interval, period)
        self._clock = clock
        self._sample: FilesystemUsage | None = None
        self._sampled_at = 0.0  # clock() when the walk of the current sample started
        self._walk: asyncio.Task[FilesystemUsage] | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._poked = asyncio.Event()
        self.walks = 0

    @property
    def sample(self) -> FilesystemUsage | None:
        return self._sample

    async def usage(self) -> FilesystemUsage:
        """The latest figure; waits only when there is none (or, without the task, it is old)."""
        sample = self._sample
        if sample is not None and (self.running or self._clock() - self._sampled_at < self.period):
            return sample
        return await self._shared_walk()

    def poke(self) -> None:
        """Something changed the directory: refresh soon (coalesced; see the docstring)."""
        self._poked.set()

    @property
    def running(self) -> bool:
        return self._loop_task is not None and not self._loop_task.done()

    def start(self) -> None:
        if not self.running:
            self._loop_task = asyncio.create_task(self._run(), name="image-fs-usage")

    async def stop(self) -> None:
        for task in (self._loop_task, self._walk):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = None

    async def _run(self) -> None:
        while True:
            started = self._clock()
            self._poked.clear()  # a poke from now on may not be seen by this walk: walk again
            try:
                await self._shared_walk()
            except asyncio.CancelledError:
                raise
            except Exception as err:  # logged; the next period tries again
                log.warning("measuring image filesystem usage failed", extra={"error": str(err)})
            # At least min_interval between walks, at most period; a poke ends the wait early.
            await asyncio.sleep(max(0.0, self.min_interval - (self._clock() - started)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, self.period - self.min_interval)):
                    await self._poked.wait()

    async def _shared_walk(self) -> FilesystemUsage:
        if self._walk is None or self._walk.done():
            self._walk = asyncio.create_task(self._measure())
            self._walk.add_done_callback(_consume_exception)
        # shield: a caller cancelled mid-walk must not cancel the walk other callers share
        return await asyncio.shield(self._walk)

    async def _measure(self) -> FilesystemUsage:
        started = self._clock()
        sample = await self._source()
        self.walks += 1
        self._sample, self._sampled_at = sample, started
        return sample


def _consume_exception(task: asyncio.Task[FilesystemUsage]) -> None:
    # Every waiter gets the error; this only keeps asyncio from warning when none is left.
    if not task.cancelled():
        task.exception()
