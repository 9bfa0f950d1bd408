"""Reconciliation: compare every known running object with its task in containerd.

Run by the event stream after a reconnect and periodically as a safety net (containerd has
been known to lose exit deliveries). For each RUNNING container and READY sandbox: make sure
an exit monitor watches it (a monitor re-issues Wait, which returns at once for a task that
already exited), and if containerd says the task stopped or is gone while nothing handled
it, hand the exit to the dispatcher now. Handling is idempotent (the first recorded exit
wins), so a double report is harmless. A lookup that fails (containerd still away) leaves
the object for the next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from cri_api.v1 import api_pb2

from pycri.containerd.errors import ContainerdError, NotFoundError
from pycri.containerd.types import TaskInfo, TaskStatus
from pycri.events.monitor import ExitMonitors
from pycri.events.types import Kind, TaskExit
from pycri.store.container import REASON_UNKNOWN, UNKNOWN_EXIT_CODE, ContainerStore
from pycri.store.sandbox import SandboxState, SandboxStore

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT = 10.0


class TaskLookup(Protocol):
    async def get(
        self, container_id: str, exec_id: str = "", *, timeout: float | None = None
    ) -> TaskInfo: ...


class Reconciler:
    def __init__(
        self,
        *,
        containers: ContainerStore,
        sandboxes: SandboxStore,
        tasks: TaskLookup,
        monitors: ExitMonitors,
        submit: Callable[[str, TaskExit], Awaitable[object]],
    ) -> None:
        self._containers = containers
        self._sandboxes = sandboxes
        self._tasks = tasks
        self._monitors = monitors
        self._submit = submit

    async def run(self) -> None:
        for container in self._containers.all():
            if container.status.state == api_pb2.CONTAINER_RUNNING:
                await self._check(Kind.CONTAINER, container.id, container.status.pid)
        for sandbox in self._sandboxes.all():
            if sandbox.status.state is SandboxState.READY:
                await self._check(Kind.SANDBOX, sandbox.id, sandbox.status.pid)

    async def _check(self, kind: Kind, object_id: str, pid: int) -> None:
        try:
            task = await self._tasks.get(object_id, timeout=LOOKUP_TIMEOUT)
        except NotFoundError:
            exit_event = TaskExit(
                kind=kind,
                object_id=object_id,
                pid=pid,
                exit_status=UNKNOWN_EXIT_CODE,
                exited_at=time.time_ns(),
                reason=REASON_UNKNOWN,
            )
        except ContainerdError as err:
            log.debug("reconcile: task lookup failed", extra={"id": object_id, "error": str(err)})
            return
        else:
            if task.status is not TaskStatus.STOPPED:
                if not self._monitors.is_watching(object_id):
                    self._monitors.watch(kind=kind, object_id=object_id, pid=pid)
                return
            exit_event = TaskExit(
                kind=kind,
                object_id=object_id,
                pid=pid,
                exit_status=task.exit_status,
                exited_at=task.exited_at_ns,
            )
        log.warning(
            "reconcile found an unhandled exit",
            extra={"id": object_id, "exit_code": exit_event.exit_status},
        )
        await self._submit(object_id, exit_event)
