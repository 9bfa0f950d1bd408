"""Exit monitors with a fake containerd: connection loss is never an exit, NotFound is an
unknown exit, cancellation produces nothing."""

from __future__ import annotations

import asyncio

from pycri.containerd.errors import NotFoundError, UnavailableError
from pycri.containerd.types import ExitStatus
from pycri.events.monitor import ExitMonitors
from pycri.events.types import Kind, TaskExit
from tests.unit.fakes import FakeTasks

EXIT = ExitStatus(exit_status=3, exited_at_ns=5_000_000_007)


async def _run(tasks: FakeTasks) -> tuple[list[TaskExit], ExitMonitors]:
    submitted: list[TaskExit] = []

    async def submit(object_id: str, event: TaskExit) -> None:
        submitted.append(event)

    monitors = ExitMonitors(waiter=tasks, submit=submit)
    monitors.watch(kind=Kind.CONTAINER, object_id="c1", pid=42)
    for _ in range(100):
        if submitted or not monitors.is_watching("c1"):
            break
        await asyncio.sleep(0.05)
    return submitted, monitors


async def test_exit_is_submitted_with_containerd_values(tasks: FakeTasks) -> None:
    tasks.waits["c1"] = [EXIT]
    submitted, _ = await _run(tasks)
    assert submitted == [
        TaskExit(
            kind=Kind.CONTAINER, object_id="c1", pid=42, exit_status=3, exited_at=5_000_000_007
        )
    ]


async def test_connection_loss_is_not_an_exit(tasks: FakeTasks) -> None:
    tasks.waits["c1"] = [UnavailableError("gone"), UnavailableError("gone"), EXIT]
    submitted, _ = await _run(tasks)
    assert tasks.calls == [("wait", "c1")] * 3  # Wait re-issued after each loss
    assert [e.exit_status for e in submitted] == [3]


async def test_vanished_task_is_an_unknown_exit(tasks: FakeTasks) -> None:
    tasks.waits["c1"] = [NotFoundError("no task")]
    submitted, _ = await _run(tasks)
    assert [(e.exit_status, e.reason) for e in submitted] == [(255, "Unknown")]


async def test_cancelled_monitor_reports_nothing(tasks: FakeTasks) -> None:
    submitted: list[TaskExit] = []

    async def submit(object_id: str, event: TaskExit) -> None:
        submitted.append(event)

    monitors = ExitMonitors(waiter=tasks, submit=submit)
    monitors.watch(kind=Kind.SANDBOX, object_id="s1", pid=1)
    await asyncio.sleep(0.05)
    await monitors.stop()
    assert submitted == []
    assert not monitors.is_watching("s1")


async def test_wait_issued_before_start_is_used_by_the_monitor(tasks: FakeTasks) -> None:
    tasks.waits["c1"] = [EXIT]
    submitted: list[TaskExit] = []

    async def submit(object_id: str, event: TaskExit) -> None:
        submitted.append(event)

    monitors = ExitMonitors(waiter=tasks, submit=submit)
    wait = await monitors.issue_wait("c1")
    assert tasks.calls == [("wait", "c1")]  # sent before the caller starts the task
    monitors.watch(kind=Kind.CONTAINER, object_id="c1", pid=42, wait=wait)
    for _ in range(50):
        if submitted:
            break
        await asyncio.sleep(0.02)
    assert [e.exit_status for e in submitted] == [3]
    assert tasks.calls == [("wait", "c1")]  # no second Wait
