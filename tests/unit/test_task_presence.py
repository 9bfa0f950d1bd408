"""TaskPresence: "may exist" by default, false once deleted, true again before a create."""

from __future__ import annotations

import asyncio

from pycri.store.task_presence import TaskPresence


async def test_waiting_for_a_delete_ends_when_it_happens_or_at_the_bound() -> None:
    task = TaskPresence()
    assert task.may_exist  # the safe default (found at recovery)
    assert not await task.wait_gone(timeout=0.01)
    waiter = asyncio.create_task(task.wait_gone(timeout=5))
    await asyncio.sleep(0)
    task.deleted()
    assert await asyncio.wait_for(waiter, 1) and not task.may_exist
    task.creating()  # a new Start
    assert task.may_exist and not await task.wait_gone(timeout=0.01)


async def test_an_object_made_without_a_task_is_gone_at_once() -> None:
    task = TaskPresence()
    task.deleted()  # what CreateContainer says of a new container
    assert await task.wait_gone(timeout=0)
