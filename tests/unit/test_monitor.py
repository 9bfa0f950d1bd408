"""Exit monitors with a fake containerd: connection loss is never an exit (behaviour 14),
NotFound is an unknown exit, cancellation produces nothing (behaviour 29)."""

from __future__ import annotations

import asyncio
from typing import Any

from pycri.containerd.errors import NotFoundError, UnavailableError
from pycri.events.container_events import ContainerEventBroadcaster, SubscriberTooSlow
from pycri.events.handlers import Faults
from pycri.events.monitor import ExitMonitors
from pycri.events.types import Kind, TaskExit


class _Ts:
    seconds = 5
    nanos = 7


class _WaitResponse:
    exit_status = 3
    exited_at = _Ts()


class FakeTasks:
    def __init__(self, outcomes: list[Any]) -> None:
        self.outcomes = outcomes
        self.calls = 0
        self.block = asyncio.Event()

    async def wait(self, object_id: str, exec_id: str = "", *, timeout: float | None = None) -> Any:
        self.calls += 1
        outcome = self.outcomes.pop(0) if self.outcomes else "block"
        if outcome == "block":
            await self.block.wait()
            return _WaitResponse()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class FakeClient:
    def __init__(self, outcomes: list[Any]) -> None:
        self.tasks = FakeTasks(outcomes)


async def _run(outcomes: list[Any]) -> tuple[list[TaskExit], FakeClient, ExitMonitors]:
    submitted: list[TaskExit] = []

    async def submit(object_id: str, event: TaskExit) -> None:
        submitted.append(event)

    client = FakeClient(outcomes)
    monitors = ExitMonitors(client=client, submit=submit)  # type: ignore[arg-type]
    monitors.watch(kind=Kind.CONTAINER, object_id="c1", pid=42)
    for _ in range(100):
        if submitted or not monitors.is_watching("c1"):
            break
        await asyncio.sleep(0.05)
    return submitted, client, monitors


async def test_exit_is_submitted_with_containerd_values() -> None:
    submitted, _, _ = await _run([_WaitResponse()])
    assert submitted == [
        TaskExit(
            kind=Kind.CONTAINER, object_id="c1", pid=42, exit_status=3, exited_at=5_000_000_007
        )
    ]


async def test_connection_loss_is_not_an_exit() -> None:
    submitted, client, _ = await _run(
        [UnavailableError("gone"), UnavailableError("gone"), _WaitResponse()]
    )
    assert client.tasks.calls == 3  # Wait re-issued after each loss
    assert [e.exit_status for e in submitted] == [3]


async def test_vanished_task_is_an_unknown_exit() -> None:
    submitted, _, _ = await _run([NotFoundError("no task")])
    assert [(e.exit_status, e.reason) for e in submitted] == [(255, "Unknown")]


async def test_cancelled_monitor_reports_nothing() -> None:
    submitted: list[TaskExit] = []

    async def submit(object_id: str, event: TaskExit) -> None:
        submitted.append(event)

    client = FakeClient(["block"])
    monitors = ExitMonitors(client=client, submit=submit)  # type: ignore[arg-type]
    monitors.watch(kind=Kind.SANDBOX, object_id="s1", pid=1)
    await asyncio.sleep(0.05)
    await monitors.stop()
    assert submitted == []
    assert not monitors.is_watching("s1")


def test_faults_only_when_enabled() -> None:
    labels = {"pycri.faults/delete-fail-times": "2", "pycri.faults/delete-delay-seconds": "5"}
    off = Faults(enabled=False)
    assert not off.should_fail("x", labels, "pycri.faults/delete-fail-times")
    assert off.remaining_delay("x", labels, "pycri.faults/delete-delay-seconds") == 0
    on = Faults(enabled=True)
    fails = [on.should_fail("x", labels, "pycri.faults/delete-fail-times") for _ in range(4)]
    assert fails == [True, True, False, False]
    first = on.remaining_delay("x", labels, "pycri.faults/delete-delay-seconds")
    assert 4.9 < first <= 5
    assert on.remaining_delay("x", labels, "pycri.faults/delete-delay-seconds") <= first
    on.forget("x")
    assert on.should_fail("x", labels, "pycri.faults/delete-fail-times")


async def test_broadcast_every_subscriber_gets_every_event_and_slow_ones_are_dropped() -> None:
    from cri_api.v1 import api_pb2

    hub = ContainerEventBroadcaster(buffer=3)
    fast, slow = hub.subscribe(), hub.subscribe()
    fast_task = asyncio.ensure_future(fast.__anext__())
    slow_task = asyncio.ensure_future(slow.__anext__())
    await asyncio.sleep(0)
    assert hub.subscribers == 2
    stamps = [hub.next_timestamp() for _ in range(3)]
    assert stamps == sorted(set(stamps))
    hub.publish(api_pb2.ContainerEventResponse(container_id="a"))
    assert (await fast_task).container_id == "a"
    assert (await slow_task).container_id == "a"
    for i in range(4):  # the slow subscriber never reads: its buffer of 3 overflows
        hub.publish(api_pb2.ContainerEventResponse(container_id=str(i)))
        assert (await fast.__anext__()).container_id == str(i)
    assert hub.dropped_subscribers == 1
    try:
        while True:
            await slow.__anext__()
    except SubscriberTooSlow:
        pass
    assert hub.subscribers == 1
