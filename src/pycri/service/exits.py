"""Exit handling: what happens when a task exits or a container hits its memory limit.

The event dispatcher (``events/dispatcher.py``) calls ``ExitHandler.handle`` for every event,
serialized per ID, with a 10 s timeout per attempt and per-ID backoff retries; this module is
the handler, kept at the service level (it knows stores, containerd and the pod snapshots
kubelet gets), as containerd's CRI plugin keeps its ``events.go`` beside its RPCs.

Container exit, in this order:
1. drain the container's output for a short bounded time, so the log is complete in the
   normal case while a grandchild holding stdout cannot stall the exit;
2. with exit code 137, read the cgroup's OOM-kill counter, so the reason is ``OOMKilled``
   on the first read that shows the container EXITED;
3. record the exit in one status transaction (pid 0, exit code, finished_at from
   containerd's Wait result) and persist it — the first recorded exit wins;
4. publish CONTAINER_STOPPED;
5. only then delete the task (NotFound counts as deleted), then close the IO.
A failure in 3 or 5 raises ``StepFailed`` and the dispatcher retries the whole event later;
every step is idempotent, so a retry after a partial success is harmless. The whole of one
attempt is bounded by the dispatcher's handling timeout, so no step has a deadline of its
own that could outlast it.

Sandbox exit: NOTREADY (recorded first), published, then the task is deleted.
OOM: the reason becomes ``OOMKilled``, whenever the exit comes.

An event for an ID no longer in its store is a success (the object was removed).
Fault injection (``service/faults.py``) delays or fails task deletes and status writes of
labelled objects, to prove in tests that one stuck ID holds up no other.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from typing import Protocol

from pycri.cgroups import oom_kill_count
from pycri.containerd.errors import NotFoundError
from pycri.events.types import Event, Kind, TaskExit, TaskOOM
from pycri.metrics import Metrics
from pycri.service.container_events import STOPPED, ContainerEventPublisher
from pycri.service.faults import (
    FAULT_DELETE_DELAY,
    FAULT_DELETE_FAIL,
    FAULT_PERSIST_FAIL,
    Faults,
    InjectedFault,
)
from pycri.store.container import REASON_OOM_KILLED, Container, ContainerStore
from pycri.store.sandbox import SandboxStore

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 2.0


class TaskDeleter(Protocol):
    """containerd's Tasks.Delete (``ContainerdClient.tasks``; a fake in unit tests)."""

    async def delete(self, container_id: str, *, timeout: float | None = None) -> object: ...


class StepFailed(Exception):
    """One step of exit handling failed; ``step`` names it for metrics and logs."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {cause!r}")
        self.step = step


class ExitHandler:
    def __init__(
        self,
        *,
        containers: ContainerStore,
        sandboxes: SandboxStore,
        tasks: TaskDeleter,
        events: ContainerEventPublisher,
        faults: Faults,
        metrics: Metrics,
        drain_timeout: float = DRAIN_TIMEOUT,
    ) -> None:
        self._containers = containers
        self._sandboxes = sandboxes
        self._tasks = tasks
        self._events = events
        self._faults = faults
        self._metrics = metrics
        self._drain_timeout = drain_timeout

    async def handle(self, object_id: str, event: Event) -> None:
        """The dispatcher's handler: one entry point for every event kind."""
        if isinstance(event, TaskOOM):
            await self._oom(event)
        elif event.kind is Kind.SANDBOX:
            await self._sandbox_exit(event)
        else:
            container = self._containers.find(object_id)
            if container is not None:
                await self._container_exit(container, event)

    def failed(self, object_id: str, event: Event, err: BaseException) -> None:
        """The dispatcher's failure hook: count the failed step."""
        if isinstance(err, StepFailed):
            step = err.step
        else:
            step = "timeout" if isinstance(err, TimeoutError) else "other"
        self._metrics.step_failed(step)

    async def _container_exit(self, container: Container, event: TaskExit) -> None:
        labels = container.metadata.config.labels
        if container.io is not None and not await container.io.drain(timeout=self._drain_timeout):
            log.info(
                "container output still open after exit; not waiting for it",
                extra={"container_id": container.id},
            )
        oom = False
        if event.exit_status == 137 and not container.status.finished_at:
            sandbox = self._sandboxes.find(container.metadata.sandbox_id)
            if sandbox is not None:
                path = sandbox.metadata.cgroups_path(container.id)
                oom = await asyncio.to_thread(oom_kill_count, path) > 0
        try:
            if self._faults.should_fail(container.id, labels, FAULT_PERSIST_FAIL):
                raise InjectedFault(f"injected status write failure for {container.id}")
            status, recorded = await container.record_exit(
                exit_code=event.exit_status,
                finished_at=event.exited_at,
                reason=event.reason,
                oom=oom,
            )
        except Exception as err:
            raise StepFailed("persist", err) from err
        if recorded:
            self._metrics.exit_handled(max(time.time_ns() - event.exited_at, 0) / 1e9)
            self._events.emit(container.id, STOPPED)
        log.info(
            "container exit recorded",
            extra={
                "container_id": container.id,
                "exit_code": status.exit_code,
                "reason": status.reported_reason(),
            },
        )
        await self._delete_task(container.id, labels)
        container.task.deleted()
        if container.io is not None:
            await container.io.close()
            container.io = None

    async def _sandbox_exit(self, event: TaskExit) -> None:
        sandbox = self._sandboxes.find(event.object_id)
        if sandbox is None:
            return
        if await sandbox.record_exit(exit_code=event.exit_status, exited_at=event.exited_at):
            log.info(
                "sandbox exited", extra={"sandbox_id": sandbox.id, "exit_code": event.exit_status}
            )
            self._events.emit(sandbox.id, STOPPED)
        await self._delete_task(sandbox.id, sandbox.metadata.config.labels)
        sandbox.task.deleted()

    async def _oom(self, event: TaskOOM) -> None:
        container = self._containers.find(event.container_id)
        if container is None or container.status.reason == REASON_OOM_KILLED:
            return  # sandbox OOMs and unknown IDs are ignored
        await container.mark_oom()

    async def _delete_task(self, object_id: str, labels: Mapping[str, str]) -> None:
        try:
            delay = self._faults.remaining_delay(object_id, labels, FAULT_DELETE_DELAY)
            if delay > 0:
                await asyncio.sleep(delay)
            if self._faults.should_fail(object_id, labels, FAULT_DELETE_FAIL):
                raise InjectedFault(f"injected task delete failure for {object_id}")
            try:
                await self._tasks.delete(object_id)
            except NotFoundError:
                pass  # already deleted: what we wanted
        except Exception as err:
            raise StepFailed("delete_task", err) from err
