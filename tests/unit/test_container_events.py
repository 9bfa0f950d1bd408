"""GetContainerEvents: the broadcaster (every subscriber gets every event, slow ones dropped)
and the publisher's pod snapshots."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cri_api.v1 import api_pb2

from pycri.events.container_events import ContainerEventBroadcaster, SubscriberTooSlow
from pycri.images.store import ImageStore
from pycri.service.container_events import DELETED, STOPPED, ContainerEventPublisher
from pycri.store.container import ContainerStore
from pycri.store.sandbox import SandboxStore
from tests.unit.fakes import CONTAINER_ID, SANDBOX_ID, make_container, make_sandbox


async def test_broadcast_every_subscriber_gets_every_event_and_slow_ones_are_dropped() -> None:
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


def _publisher(tmp_path: Path) -> tuple[ContainerEventPublisher, ContainerStore]:
    sandboxes, containers = SandboxStore(), ContainerStore()
    sandboxes.add(make_sandbox(tmp_path))
    containers.add(make_container(tmp_path))
    publisher = ContainerEventPublisher(
        sandboxes=sandboxes,
        containers=containers,
        images=ImageStore(client=None, snapshotter="overlayfs"),  # type: ignore[arg-type]
        broadcaster=ContainerEventBroadcaster(),
    )
    return publisher, containers


def test_an_event_carries_its_pods_snapshot(tmp_path: Path) -> None:
    publisher, _ = _publisher(tmp_path)
    event = publisher.build(CONTAINER_ID, STOPPED)
    assert event.container_event_type == api_pb2.CONTAINER_STOPPED_EVENT
    assert event.pod_sandbox_status.id == SANDBOX_ID
    assert [c.id for c in event.containers_statuses] == [CONTAINER_ID]
    sandbox_event = publisher.build(SANDBOX_ID, STOPPED)
    assert sandbox_event.pod_sandbox_status.id == SANDBOX_ID


def test_a_deleted_container_names_its_pod(tmp_path: Path) -> None:
    publisher, containers = _publisher(tmp_path)
    containers.remove(CONTAINER_ID)
    event = publisher.build(CONTAINER_ID, DELETED, sandbox_id=SANDBOX_ID)
    assert event.pod_sandbox_status.id == SANDBOX_ID
    assert list(event.containers_statuses) == []


def test_no_subscriber_no_snapshot(tmp_path: Path) -> None:
    publisher, _ = _publisher(tmp_path)
    publisher.emit(CONTAINER_ID, STOPPED)
    assert publisher.broadcaster.published == 0
