"""What happens when a task exits or a container hits its memory limit.

Container exit, in this order (design.md "The event monitor", step 2):
1. drain the container's output for a short bounded time, so the log is complete in the
   normal case while a grandchild holding stdout cannot stall the exit;
2. with exit code 137, read the cgroup's OOM-kill counter, so the reason is ``OOMKilled``
   on the first read that shows the container EXITED;
3. record the exit in one status transaction (pid 0, exit code, finished_at from
   containerd's Wait result) and persist it — the first recorded exit wins;
4. only then delete the task (NotFound counts as deleted).
A failure in 3 or 4 raises, and the dispatcher retries the whole event later with backoff;
every step is idempotent, so a retry after a partial success is harmless.

Sandbox exit: NOTREADY, pid 0 (in memory; sandboxes are re-derived at recovery), then the
task is deleted.

An event for an ID no longer in its store is a success (the object was removed).
Fault injection (``--enable-fault-injection`` only) delays or fails task deletes and
status writes for objects labelled ``pycri.faults/...``, to prove the isolation in tests.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from pycri.containerd.errors import NotFoundError
from pycri.events.types import Event, Kind, TaskExit, TaskOOM
from pycri.service.cgroups import cgroups_path, oom_kill_count
from pycri.service.context import RuntimeContext
from pycri.store.container import REASON_OOM_KILLED, Container, ContainerStatus
from pycri.store.sandbox import SandboxState, SandboxStatus

log = logging.getLogger(__name__)

DRAIN_TIMEOUT = 2.0
FAULT_DELETE_DELAY = "pycri.faults/delete-delay-seconds"
FAULT_DELETE_FAIL = "pycri.faults/delete-fail-times"
FAULT_PERSIST_FAIL = "pycri.faults/persist-fail-times"


class InjectedFault(RuntimeError):
    """A failure made on purpose by a pycri.faults/* label."""


class StepFailed(Exception):
    """One step of exit handling failed; ``step`` names it for metrics and logs."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {cause!r}")
        self.step = step


class Faults:
    """Counts injected failures per object (in memory: a restart resets them)."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._used: dict[tuple[str, str], int] = {}
        self._opened: dict[tuple[str, str], float] = {}

    def _value(self, labels: Any, key: str) -> float:
        if not self.enabled:
            return 0
        try:
            return float(labels.get(key, "0"))
        except ValueError:
            return 0

    def remaining_delay(self, object_id: str, labels: Any, key: str) -> float:
        """Seconds left of a stuck window that opened at the first call for this object.

        Models a teardown stuck for N s: every attempt within the window hangs until it
        closes (or the handling timeout cuts it off and a retry comes back later).
        """
        total = self._value(labels, key)
        if total <= 0:
            return 0
        opened = self._opened.setdefault((object_id, key), time.monotonic())
        return max(0.0, opened + total - time.monotonic())

    def should_fail(self, object_id: str, labels: Any, key: str) -> bool:
        times = int(self._value(labels, key))
        used = self._used.get((object_id, key), 0)
        if used < times:
            self._used[(object_id, key)] = used + 1
            return True
        return False

    def forget(self, object_id: str) -> None:
        for k in [k for k in self._used if k[0] == object_id]:
            del self._used[k]
        for k in [k for k in self._opened if k[0] == object_id]:
            del self._opened[k]


async def delete_task(rt: RuntimeContext, object_id: str, labels: Any) -> None:
    delay = rt.faults.remaining_delay(object_id, labels, FAULT_DELETE_DELAY)
    if delay > 0:
        await asyncio.sleep(delay)
    if rt.faults.should_fail(object_id, labels, FAULT_DELETE_FAIL):
        raise InjectedFault(f"injected task delete failure for {object_id}")
    try:
        await rt.containerd.tasks.delete(object_id, timeout=30)
    except NotFoundError:
        pass  # already deleted: what we wanted


def _record_exit(event: TaskExit, oom: bool) -> Any:
    def change(status: ContainerStatus) -> ContainerStatus:
        if status.finished_at:  # first recorded exit wins; still leaves UNKNOWN
            return status.replace(unknown=False)
        reason = event.reason or status.reason
        if oom:
            reason = REASON_OOM_KILLED
        return status.replace(
            pid=0,
            finished_at=event.exited_at,
            exit_code=event.exit_status,
            reason=reason,
            unknown=False,
        )

    return change


async def handle_container_exit(rt: RuntimeContext, container: Container, event: TaskExit) -> None:
    labels = container.metadata.config.labels
    if container.io is not None:
        drained = await container.io.drain(timeout=DRAIN_TIMEOUT)
        if not drained:
            log.info(
                "container output still open after exit; not waiting for it",
                extra={"container_id": container.id},
            )
    oom = False
    if event.exit_status == 137 and not container.status.finished_at:
        sandbox = rt.sandboxes.find(container.metadata.sandbox_id)
        if sandbox is not None:
            path = cgroups_path(sandbox.metadata.config, container.id)
            oom = await asyncio.to_thread(oom_kill_count, path) > 0
    try:
        if rt.faults.should_fail(container.id, labels, FAULT_PERSIST_FAIL):
            raise InjectedFault(f"injected status write failure for {container.id}")
        already_recorded = bool(container.status.finished_at)
        status = await container.update(_record_exit(event, oom))
    except Exception as err:
        raise StepFailed("persist", err) from err
    if not already_recorded:
        rt.metrics.exit_latency.observe(max(time.time_ns() - event.exited_at, 0) / 1e9)
    log.info(
        "container exit recorded",
        extra={
            "container_id": container.id,
            "exit_code": status.exit_code,
            "reason": status.reported_reason(),
        },
    )
    if not already_recorded:
        rt.emit_container_event(container.id, "STOPPED")
    try:
        await delete_task(rt, container.id, labels)
    except Exception as err:
        raise StepFailed("delete_task", err) from err
    if container.io is not None:
        await container.io.close()
        container.io = None


async def handle_sandbox_exit(rt: RuntimeContext, event: TaskExit) -> None:
    sandbox = rt.sandboxes.find(event.object_id)
    if sandbox is None:
        return
    if sandbox.status.state is SandboxState.READY or sandbox.status.pid:
        sandbox.set_status(
            SandboxStatus(
                state=SandboxState.NOTREADY,
                pid=0,
                exit_code=event.exit_status,
                exited_at=event.exited_at,
            )
        )
        log.info("sandbox exited", extra={"sandbox_id": sandbox.id, "exit_code": event.exit_status})
        rt.emit_container_event(sandbox.id, "STOPPED")
    try:
        await delete_task(rt, sandbox.id, sandbox.metadata.config.labels)
    except Exception as err:
        raise StepFailed("delete_task", err) from err


async def handle_oom(rt: RuntimeContext, event: TaskOOM) -> None:
    container = rt.containers.find(event.container_id)
    if container is None or container.status.reason == REASON_OOM_KILLED:
        return  # sandbox OOMs and unknown IDs are ignored
    await container.update(lambda s: s.replace(reason=REASON_OOM_KILLED))


async def handle_event(rt: RuntimeContext, object_id: str, event: Event) -> None:
    """The dispatcher's handler: one entry point for every event kind."""
    if isinstance(event, TaskOOM):
        await handle_oom(rt, event)
    elif event.kind is Kind.SANDBOX:
        await handle_sandbox_exit(rt, event)
    else:
        container = rt.containers.find(object_id)
        if container is not None:
            await handle_container_exit(rt, container, event)
