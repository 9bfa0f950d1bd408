"""The ImageFsInfo figure: served from the background refresh, walked early on a poke, shared
by callers before the first walk; a fake walker and clock, real asyncio."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from pycri.images.fs_usage import FilesystemUsage
from pycri.images.usage_refresher import UsageRefresher


class FakeWalker:
    """Each walk returns the current ``used`` figure; a walk can be held until released."""

    def __init__(self) -> None:
        self.used = 100
        self.walks = 0
        self.hold: asyncio.Event | None = None
        self.fail: Exception | None = None

    async def __call__(self) -> FilesystemUsage:
        self.walks += 1
        if self.hold is not None:
            await self.hold.wait()
        if self.fail is not None:
            raise self.fail
        return FilesystemUsage(
            timestamp_ns=self.walks, mountpoint="/snap", used_bytes=self.used, inodes_used=1
        )


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():  # noqa: ASYNC110 - polls a fake's state, nothing to wait on
            await asyncio.sleep(0.005)


async def test_calls_are_served_from_the_background_figure() -> None:
    walker = FakeWalker()
    refresher = UsageRefresher(source=walker, period=3600)
    refresher.start()
    try:
        await _until(lambda: refresher.sample is not None)
        for _ in range(20):
            assert (await refresher.usage()).used_bytes == 100
        assert walker.walks == 1  # no walk per call
    finally:
        await refresher.stop()


async def test_a_poke_refreshes_early_and_pokes_coalesce() -> None:
    walker = FakeWalker()
    refresher = UsageRefresher(source=walker, period=3600, min_interval=0.05)
    refresher.start()
    try:
        await _until(lambda: walker.walks == 1)
        walker.used = 250
        for _ in range(10):
            refresher.poke()
        await _until(lambda: refresher.sample is not None and refresher.sample.used_bytes == 250)
        await asyncio.sleep(0.2)
        assert walker.walks == 2  # ten pokes, one walk
    finally:
        await refresher.stop()


async def test_a_poke_during_a_walk_walks_again_after_it() -> None:
    walker = FakeWalker()
    walker.hold = asyncio.Event()
    refresher = UsageRefresher(source=walker, period=3600, min_interval=0.0)
    refresher.start()
    try:
        await _until(lambda: walker.walks == 1)  # the first walk is running, held
        walker.used = 300  # the change lands while that walk may have read the old state
        refresher.poke()
        walker.hold.set()
        await _until(lambda: walker.walks == 2)
        await _until(lambda: refresher.sample is not None and refresher.sample.used_bytes == 300)
    finally:
        await refresher.stop()


async def test_callers_before_the_first_walk_share_it() -> None:
    walker = FakeWalker()
    walker.hold = asyncio.Event()
    refresher = UsageRefresher(source=walker, period=3600)
    refresher.start()
    try:
        waiters = [asyncio.create_task(refresher.usage()) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert not any(w.done() for w in waiters)
        walker.hold.set()
        results = await asyncio.gather(*waiters)
        assert {r.used_bytes for r in results} == {100}
        assert walker.walks == 1
    finally:
        await refresher.stop()


async def test_a_failed_first_walk_reaches_its_callers_and_the_next_call_retries() -> None:
    walker = FakeWalker()
    walker.fail = OSError("snapshotter root unreadable")
    refresher = UsageRefresher(source=walker, period=3600)
    with pytest.raises(OSError, match="unreadable"):
        await refresher.usage()
    walker.fail = None
    assert (await refresher.usage()).used_bytes == 100
    assert walker.walks == 2


async def test_without_the_task_an_old_figure_is_walked_on_demand() -> None:
    walker, clock = FakeWalker(), FakeClock()
    refresher = UsageRefresher(source=walker, period=10, clock=clock)
    assert (await refresher.usage()).used_bytes == 100
    walker.used = 200
    clock.now += 9
    assert (await refresher.usage()).used_bytes == 100  # young enough: cached
    clock.now += 2
    assert (await refresher.usage()).used_bytes == 200
    assert walker.walks == 2


async def test_stop_ends_the_task_and_a_held_walk() -> None:
    walker = FakeWalker()
    walker.hold = asyncio.Event()
    refresher = UsageRefresher(source=walker, period=3600)
    refresher.start()
    await _until(lambda: walker.walks == 1)
    await refresher.stop()
    assert not refresher.running


def test_period_must_be_positive() -> None:
    with pytest.raises(ValueError, match="period"):
        UsageRefresher(source=FakeWalker(), period=0)
