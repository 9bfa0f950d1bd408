"""Exit monitors: one asyncio task per running sandbox or container task, each waiting on
containerd's ``Tasks.Wait`` and handing the exit to the dispatcher itself.

    start task ─► Wait issued (before Start) ─► ... process exits ...
        ─► Wait returns (exit_status, exited_at) ─► dispatcher.submit(id, TaskExit)
              └─ handler: drain output (bounded) ─► persist EXITED ─► delete task
                   on failure/timeout: per-ID backoff queue, retried in order

Why one task per object: with a single queue, one exit whose handling hangs (a stuck task
delete in a shim) delays every other exit on the node. Here monitors never wait for each
other; the dispatcher serializes only events of the same ID.

Races and rules:
- **Wait before Start.** The Wait call is sent before Start, so an instant exit is never
  missed; the object is in its store before the monitor runs (so the handler finds it).
- **A dropped connection is not an exit** (reference §4.6): UNAVAILABLE/CANCELLED from Wait
  means containerd went away. The monitor waits for containerd to answer again and issues
  Wait again: a running task blocks again, a task that exited meanwhile returns its stored
  exit status. NotFound means the task is gone: the exit is recorded as Unknown (255).
- **Exit first, teardown second**: the handler persists the status before it deletes the
  task, so a stuck delete never hides an exit (containerd's plugin does the opposite).
- **Cancellation** (shutdown, or a temporary monitor) never produces a fake exit: a
  cancelled monitor simply ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from pycri.containerd.errors import ContainerdError, NotFoundError, is_connection_loss
from pycri.containerd.types import ExitStatus
from pycri.events.types import Kind, TaskExit
from pycri.store.container import REASON_UNKNOWN, UNKNOWN_EXIT_CODE

log = logging.getLogger(__name__)

RECONNECT_DELAY_INITIAL = 0.2
RECONNECT_DELAY_MAX = 5.0

Submit = Callable[[str, TaskExit], Awaitable[object]]


class TaskWaiter(Protocol):
    """containerd's Tasks.Wait (``ContainerdClient.tasks``; a fake in unit tests)."""

    async def wait(
        self, container_id: str, exec_id: str = "", *, timeout: float | None = None
    ) -> ExitStatus: ...


class ExitMonitors:
    """Owns the monitor tasks; ``submit`` hands exits to the event dispatcher."""

    def __init__(self, *, waiter: TaskWaiter, submit: Submit) -> None:
        self._waiter = waiter
        self._submit = submit
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    async def issue_wait(self, object_id: str) -> asyncio.Task[ExitStatus]:
        """Send Tasks.Wait now (before Start) and return the pending call."""
        wait = asyncio.create_task(self._waiter.wait(object_id), name=f"wait-{object_id}")
        # Let the call be sent before the caller goes on to Start the task.
        await asyncio.sleep(0)
        return wait

    def watch(
        self, *, kind: Kind, object_id: str, pid: int, wait: asyncio.Task[ExitStatus] | None = None
    ) -> None:
        """Start the monitor of one task (replacing any earlier one for that ID)."""
        if self._closed:
            if wait is not None:
                wait.cancel()
            return
        old = self._tasks.pop(object_id, None)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(
            self._monitor(kind=kind, object_id=object_id, pid=pid, wait=wait),
            name=f"exit-monitor-{object_id[:12]}",
        )
        self._tasks[object_id] = task
        task.add_done_callback(lambda t: self._forget(object_id, t))

    def _forget(self, object_id: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(object_id) is task:
            del self._tasks[object_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("exit monitor crashed", exc_info=task.exception(), extra={"id": object_id})

    def is_watching(self, object_id: str) -> bool:
        return object_id in self._tasks

    def __len__(self) -> int:
        return len(self._tasks)

    async def _wait_for_exit(
        self, object_id: str, wait: asyncio.Task[ExitStatus] | None
    ) -> tuple[int, int, str]:
        delay = RECONNECT_DELAY_INITIAL
        while True:
            if wait is None:
                wait = asyncio.create_task(self._waiter.wait(object_id))
            try:
                resp = await wait
                return resp.exit_status, resp.exited_at_ns, ""
            except NotFoundError:
                # The task is gone (deleted behind our back): the exit status is lost.
                return UNKNOWN_EXIT_CODE, time.time_ns(), REASON_UNKNOWN
            except ContainerdError as err:
                if not is_connection_loss(err):
                    log.warning(
                        "wait failed; recording unknown exit",
                        extra={"id": object_id, "error": str(err)},
                    )
                    return UNKNOWN_EXIT_CODE, time.time_ns(), REASON_UNKNOWN
                log.info(
                    "lost containerd while waiting; waiting again",
                    extra={"id": object_id, "delay_s": delay},
                )
                wait = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY_MAX)

    async def _monitor(
        self, *, kind: Kind, object_id: str, pid: int, wait: asyncio.Task[ExitStatus] | None
    ) -> None:
        try:
            exit_status, exited_at, reason = await self._wait_for_exit(object_id, wait)
        except asyncio.CancelledError:
            if wait is not None:
                wait.cancel()
            raise
        log.info(
            "task exited",
            extra={"kind": str(kind), "id": object_id, "pid": pid, "exit_code": exit_status},
        )
        await self._submit(
            object_id,
            TaskExit(
                kind=kind,
                object_id=object_id,
                pid=pid,
                exit_status=exit_status,
                exited_at=exited_at,
                reason=reason,
            ),
        )

    async def stop(self) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
