"""Exit handling with a fake containerd: the monitor → dispatcher → handler path, the order
"exit persisted, then task deleted", retries of failed steps, OOM reasons, sandboxes."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from pycri.containerd.types import ExitStatus
from pycri.errors import FailedPrecondition
from pycri.events.container_events import ContainerEventBroadcaster
from pycri.events.dispatcher import EventDispatcher
from pycri.events.monitor import ExitMonitors
from pycri.events.types import Event, Kind, TaskExit, TaskOOM
from pycri.images.store import ImageStore
from pycri.metrics import Metrics
from pycri.service.container_events import ContainerEventPublisher
from pycri.service.exits import ExitHandler
from pycri.service.faults import FAULT_DELETE_FAIL, FAULT_PERSIST_FAIL, Faults
from pycri.store import checkpoint
from pycri.store.container import Container, ContainerStatus, ContainerStore
from pycri.store.sandbox import SandboxState, SandboxStore
from tests.unit.fakes import (
    CONTAINER_ID,
    SANDBOX_ID,
    FakeClock,
    FakeTasks,
    make_container,
    make_sandbox,
)

RUNNING = ContainerStatus(created_at=1, started_at=2, pid=42)


@dataclass
class Node:
    containers: ContainerStore
    sandboxes: SandboxStore
    tasks: FakeTasks
    dispatcher: EventDispatcher[Event]
    events: list[api_pb2.ContainerEventResponse]
    metrics: Metrics
    container: Container


@pytest.fixture
async def node(tmp_path: Path, tasks: FakeTasks, clock: FakeClock) -> AsyncIterator[Node]:
    sandboxes, containers = SandboxStore(), ContainerStore()
    sandboxes.add(make_sandbox(tmp_path))
    labels = {FAULT_PERSIST_FAIL: "0"}
    container = make_container(tmp_path, status=RUNNING, labels=labels)
    containers.add(container)
    tasks.running(SANDBOX_ID, pid=7)
    tasks.running(CONTAINER_ID)
    broadcaster = ContainerEventBroadcaster()
    publisher = ContainerEventPublisher(
        sandboxes=sandboxes,
        containers=containers,
        images=ImageStore(client=None, snapshotter="overlayfs"),  # type: ignore[arg-type]
        broadcaster=broadcaster,
    )
    metrics = Metrics()
    handler = ExitHandler(
        containers=containers,
        sandboxes=sandboxes,
        tasks=tasks,
        events=publisher,
        faults=Faults(enabled=True),
        metrics=metrics,
        drain_timeout=0.1,
    )
    dispatcher: EventDispatcher[Event] = EventDispatcher(
        handler=handler.handle, on_failure=handler.failed, clock=clock
    )
    events: list[api_pb2.ContainerEventResponse] = []

    async def collect() -> None:
        async for event in broadcaster.subscribe():
            events.append(event)

    collector = asyncio.create_task(collect())
    await asyncio.sleep(0)
    yield Node(containers, sandboxes, tasks, dispatcher, events, metrics, container)
    collector.cancel()
    await dispatcher.stop()


def _exit(code: int, *, object_id: str = CONTAINER_ID, kind: Kind = Kind.CONTAINER) -> TaskExit:
    return TaskExit(kind=kind, object_id=object_id, pid=42, exit_status=code, exited_at=5_000)


async def _published(node: Node) -> list[api_pb2.ContainerEventResponse]:
    await asyncio.sleep(0.01)  # let the subscriber take what was published
    return node.events


def _failures(metrics: Metrics, step: str) -> float:
    for line in metrics.render().splitlines():
        if line.startswith(f'pycri_event_handling_failures_total{{step="{step}"}}'):
            return float(line.split()[1])
    return 0.0


async def test_the_exit_is_persisted_before_the_task_is_deleted(node: Node) -> None:
    seen_on_disk: list[int] = []
    delete = node.tasks.delete

    async def delete_after_checking(container_id: str, *, timeout: float | None = None) -> object:
        seen_on_disk.append(checkpoint.read_sync(node.container.status_path)["finished_at"])
        return await delete(container_id, timeout=timeout)

    node.tasks.delete = delete_after_checking  # type: ignore[method-assign]
    await node.dispatcher.submit(CONTAINER_ID, _exit(3))
    assert seen_on_disk == [5_000]  # on disk when the delete was issued
    status = node.container.status
    assert (status.state, status.exit_code, status.pid) == (api_pb2.CONTAINER_EXITED, 3, 0)
    assert CONTAINER_ID not in node.tasks.tasks
    assert not node.container.task.may_exist  # a Remove now skips the task
    events = await _published(node)
    assert [e.container_event_type for e in events] == [api_pb2.CONTAINER_STOPPED_EVENT]


async def test_a_failed_delete_is_retried_and_the_exit_is_visible_meanwhile(
    node: Node, clock: FakeClock
) -> None:
    node.tasks.delete_failures[CONTAINER_ID] = 2
    await node.dispatcher.submit(CONTAINER_ID, _exit(1))
    assert node.container.status.state == api_pb2.CONTAINER_EXITED  # recorded anyway
    assert node.dispatcher.in_backoff(CONTAINER_ID)
    assert node.container.task.may_exist  # a Remove meanwhile deletes it itself
    clock.advance(1)
    await node.dispatcher.tick()  # second failure: the delay doubles
    assert CONTAINER_ID in node.tasks.tasks
    clock.advance(1)
    await node.dispatcher.tick()
    assert CONTAINER_ID in node.tasks.tasks  # not due yet (2 s)
    clock.advance(1)
    await node.dispatcher.tick()
    assert CONTAINER_ID not in node.tasks.tasks and not node.container.task.may_exist
    assert not node.dispatcher.in_backoff(CONTAINER_ID)
    assert _failures(node.metrics, "delete_task") == 2
    assert len(await _published(node)) == 1  # the retries do not report the exit again


async def test_a_failed_status_write_keeps_the_old_status_until_the_retry(
    tmp_path: Path, node: Node, clock: FakeClock
) -> None:
    container = make_container(
        tmp_path, container_id="d" * 64, status=RUNNING, labels={FAULT_PERSIST_FAIL: "1"}
    )
    node.containers.add(container)
    node.tasks.running(container.id)
    await node.dispatcher.submit(container.id, _exit(2, object_id=container.id))
    assert container.status.state == api_pb2.CONTAINER_RUNNING
    assert container.id in node.tasks.tasks  # never deleted before the exit is recorded
    clock.advance(1)
    await node.dispatcher.tick()
    assert (container.status.exit_code, container.status.finished_at) == (2, 5_000)
    assert container.id not in node.tasks.tasks
    assert _failures(node.metrics, "persist") == 1


async def test_oom_killed_is_the_reason_at_the_first_read(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("pycri.service.exits.oom_kill_count", lambda path: 1)
    await node.dispatcher.submit(CONTAINER_ID, _exit(137))
    assert node.container.status.reported_reason() == "OOMKilled"
    assert (await _published(node))[0].containers_statuses[0].reason == "OOMKilled"


async def test_an_oom_event_before_the_exit_sets_the_reason(node: Node) -> None:
    await node.dispatcher.submit(CONTAINER_ID, TaskOOM(container_id=CONTAINER_ID))
    await node.dispatcher.submit(CONTAINER_ID, _exit(137))
    assert node.container.status.reported_reason() == "OOMKilled"
    assert node.container.status.exit_code == 137


async def test_the_first_recorded_exit_wins(node: Node) -> None:
    await node.dispatcher.submit(CONTAINER_ID, _exit(3))
    node.tasks.running(CONTAINER_ID)  # a late second report (reconcile after a reconnect)
    await node.dispatcher.submit(CONTAINER_ID, _exit(255))
    assert node.container.status.exit_code == 3
    assert len(await _published(node)) == 1


async def test_a_sandbox_exit_makes_it_notready_then_deletes_its_task(node: Node) -> None:
    sandbox = node.sandboxes.get(SANDBOX_ID)
    await node.dispatcher.submit(SANDBOX_ID, _exit(0, object_id=SANDBOX_ID, kind=Kind.SANDBOX))
    assert sandbox.status.state is SandboxState.NOTREADY and sandbox.exited.is_set()
    assert SANDBOX_ID not in node.tasks.tasks and not sandbox.task.may_exist
    assert (await _published(node))[-1].pod_sandbox_status.state == api_pb2.SANDBOX_NOTREADY


async def test_events_of_removed_objects_are_successes(node: Node) -> None:
    node.containers.remove(CONTAINER_ID)
    await node.dispatcher.submit(CONTAINER_ID, _exit(1))
    await node.dispatcher.submit("x" * 64, _exit(1, object_id="x" * 64, kind=Kind.SANDBOX))
    assert not node.dispatcher.in_backoff(CONTAINER_ID)
    assert node.tasks.calls == []


async def test_monitor_to_persisted_exit(node: Node) -> None:
    node.tasks.waits[CONTAINER_ID] = [ExitStatus(exit_status=9, exited_at_ns=7_000)]
    monitors = ExitMonitors(waiter=node.tasks, submit=node.dispatcher.submit)
    monitors.watch(kind=Kind.CONTAINER, object_id=CONTAINER_ID, pid=42)
    async with asyncio.timeout(5):
        await node.container.exited.wait()
    assert (node.container.status.exit_code, node.container.status.finished_at) == (9, 7_000)
    await monitors.stop()


def test_faults_only_when_enabled() -> None:
    labels = {FAULT_DELETE_FAIL: "2", "pycri.faults/delete-delay-seconds": "5"}
    off = Faults(enabled=False)
    assert not off.should_fail("x", labels, FAULT_DELETE_FAIL)
    assert off.remaining_delay("x", labels, "pycri.faults/delete-delay-seconds") == 0
    on = Faults(enabled=True)
    fails = [on.should_fail("x", labels, FAULT_DELETE_FAIL) for _ in range(4)]
    assert fails == [True, True, False, False]
    first = on.remaining_delay("x", labels, "pycri.faults/delete-delay-seconds")
    assert 4.9 < first <= 5
    assert on.remaining_delay("x", labels, "pycri.faults/delete-delay-seconds") <= first
    on.forget("x")
    assert on.should_fail("x", labels, FAULT_DELETE_FAIL)


async def test_late_retries_and_events_never_recreate_a_removed_containers_dir(
    node: Node, clock: FakeClock
) -> None:
    """The lead's suspicion: a backoff retry (or an OOM event) for a container whose removal
    already deleted ``ROOT/containers/<id>/`` must not bring the directory back."""
    node.tasks.delete_failures[CONTAINER_ID] = 2
    await node.dispatcher.submit(CONTAINER_ID, _exit(1))  # persisted; delete failed → queued
    assert node.dispatcher.in_backoff(CONTAINER_ID)
    # RemoveContainer's last steps, with the container still in its store (the window
    # before it is forgotten and its retries dropped)
    await node.container.retire(f"container {CONTAINER_ID}")
    directory = node.container.status_path.parent
    shutil.rmtree(directory)
    clock.advance(2)
    await node.dispatcher.tick()  # the retry of the exit: the first recorded exit wins
    await node.dispatcher.submit(CONTAINER_ID, TaskOOM(container_id=CONTAINER_ID))
    clock.advance(10)
    await node.dispatcher.tick()
    assert not directory.exists()
    assert node.container.status.exit_code == 1  # what was recorded before stays


async def test_a_retired_object_refuses_persisted_changes_only(tmp_path: Path) -> None:
    container = make_container(tmp_path, status=RUNNING)
    await container.retire("container x")
    shutil.rmtree(container.status_path.parent)
    with pytest.raises(FailedPrecondition, match="being removed"):
        await container.set_resources({"memory": {"limit": 1}})
    with pytest.raises(FailedPrecondition, match="being removed"):
        await container.mark_oom()
    await container.end_start()  # in-memory changes still apply
    assert not container.status_path.parent.exists()
    assert container.status.reason == ""
