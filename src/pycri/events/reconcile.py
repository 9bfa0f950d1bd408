"""Reconciliation: compare every known running object with its task in containerd.

Run after a reconnect and periodically as a safety net. For each RUNNING container and
READY sandbox: make sure an exit monitor watches it (a monitor re-issues Wait, which
returns at once for a task that already exited), and if containerd says the task stopped
or is gone while nothing handled it, hand the exit to the dispatcher now. Handling is
idempotent (first recorded exit wins), so a double report is harmless.
"""

from __future__ import annotations

import logging
import time

from cri_api.v1 import api_pb2

from pycri.containerd import api
from pycri.containerd.errors import ContainerdError, NotFoundError
from pycri.events.monitor import UNKNOWN_EXIT_CODE, timestamp_ns
from pycri.events.types import Kind, TaskExit
from pycri.service.context import RuntimeContext
from pycri.store.sandbox import SandboxState

log = logging.getLogger(__name__)


async def _check(rt: RuntimeContext, kind: Kind, object_id: str, pid: int) -> None:
    try:
        process = await rt.containerd.tasks.get(object_id, timeout=10)
    except NotFoundError:
        exit_event = TaskExit(
            kind=kind,
            object_id=object_id,
            pid=pid,
            exit_status=UNKNOWN_EXIT_CODE,
            exited_at=time.time_ns(),
            reason="Unknown",
        )
    except ContainerdError as err:
        log.debug("reconcile: task lookup failed", extra={"id": object_id, "error": str(err)})
        return
    else:
        if process.status != api.task_types.Status.STOPPED:
            if not rt.monitors.is_watching(object_id):
                rt.monitors.watch(kind=kind, object_id=object_id, pid=pid)
            return
        exit_event = TaskExit(
            kind=kind,
            object_id=object_id,
            pid=pid,
            exit_status=int(process.exit_status),
            exited_at=timestamp_ns(process.exited_at),
        )
    log.warning(
        "reconcile found an unhandled exit",
        extra={"id": object_id, "exit_code": exit_event.exit_status},
    )
    await rt.dispatcher.submit(object_id, exit_event)


async def reconcile(rt: RuntimeContext) -> None:
    for container in rt.containers.all():
        if container.status.state == api_pb2.CONTAINER_RUNNING:
            await _check(rt, Kind.CONTAINER, container.id, container.status.pid)
    for sandbox in rt.sandboxes.all():
        if sandbox.status.state is SandboxState.READY:
            await _check(rt, Kind.SANDBOX, sandbox.id, sandbox.status.pid)
