"""Whether an object's containerd task may still exist: runtime knowledge, never persisted.

The exit handler records an exit first and deletes the task after it (``service/exits.py``),
so between the two an object is EXITED while its task still exists. Stop and Remove use this
to line up behind that delete instead of racing it: StopContainer and StopPodSandbox wait
a bounded time for the task to be gone (as containerd's plugin returns from Stop only after
its delete), and RemoveContainer/RemovePodSandbox delete the task themselves only when it may
still exist. "May exist" is the safe default (an object found at recovery); it turns false
when a delete succeeded or found nothing, and true again just before a task is created.

One asyncio loop, no threads: the flag and its event change together, in one step.
"""

from __future__ import annotations

import asyncio


class TaskPresence:
    """``may_exist`` and an event set while it is false."""

    def __init__(self) -> None:
        self._gone = asyncio.Event()

    @property
    def may_exist(self) -> bool:
        return not self._gone.is_set()

    def creating(self) -> None:
        """A task is about to be created (before the call: a crash in it leaves one)."""
        self._gone.clear()

    def deleted(self) -> None:
        """The task was deleted, or found not to exist."""
        self._gone.set()

    async def wait_gone(self, *, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the task to be deleted; whether it was."""
        try:
            async with asyncio.timeout(timeout):
                await self._gone.wait()
        except TimeoutError:
            return False
        return True
