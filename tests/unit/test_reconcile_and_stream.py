"""Reconciliation and containerd's event stream, with fakes: missed exits are found, OOMs and
image events are routed, a broken stream is re-subscribed and followed by a reconcile."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

from pycri.containerd.errors import UnavailableError
from pycri.containerd.types import Envelope, ImageEvent, OtherEvent, TaskOOMEvent
from pycri.events.monitor import ExitMonitors
from pycri.events.stream import EventStream
from pycri.events.types import Kind, TaskExit, TaskOOM
from pycri.service.reconcile import Reconciler
from pycri.store.container import ContainerStatus, ContainerStore
from pycri.store.sandbox import SandboxState, SandboxStore
from tests.unit.fakes import SANDBOX_ID, FakeTasks, make_container, make_sandbox

RUNNING = ContainerStatus(created_at=1, started_at=2, pid=42)


async def test_reconcile_finds_exits_nobody_handled(tmp_path: Path, tasks: FakeTasks) -> None:
    containers, sandboxes = ContainerStore(), SandboxStore()
    ids = {"alive": "a" * 64, "stopped": "b" * 64, "gone": "9" * 64, "exited": "e" * 64}
    for name, cid in ids.items():
        status = RUNNING if name != "exited" else RUNNING.replace(finished_at=3)
        containers.add(make_container(tmp_path, container_id=cid, status=status))
    sandboxes.add(make_sandbox(tmp_path))
    sandboxes.add(make_sandbox(tmp_path, sandbox_id="n" * 64, state=SandboxState.NOTREADY))
    tasks.running(ids["alive"])
    tasks.stopped(ids["stopped"], exit_status=4, exited_at_ns=77)
    tasks.running(SANDBOX_ID)
    submitted: list[TaskExit] = []

    async def submit(object_id: str, event: TaskExit) -> None:
        submitted.append(event)

    monitors = ExitMonitors(waiter=tasks, submit=submit)
    reconciler = Reconciler(
        containers=containers, sandboxes=sandboxes, tasks=tasks, monitors=monitors, submit=submit
    )
    await reconciler.run()
    found = {(e.object_id, e.exit_status, e.exited_at, e.reason) for e in submitted}
    assert (ids["stopped"], 4, 77, "") in found
    assert any(
        e.object_id == ids["gone"] and e.exit_status == 255 and e.reason == "Unknown"
        for e in submitted
    )
    assert len(submitted) == 2  # the alive one and the EXITED one are left alone
    assert monitors.is_watching(ids["alive"]) and monitors.is_watching(SANDBOX_ID)
    looked_up = {object_id for method, object_id in tasks.calls if method == "get"}
    assert ids["exited"] not in looked_up and "n" * 64 not in looked_up
    await monitors.stop()


class FakeEvents:
    """containerd's event service: each subscription yields its script, then breaks."""

    def __init__(self, scripts: list[list[Envelope | ValueError]]) -> None:
        self.scripts = scripts
        self.subscriptions = 0
        self.done = asyncio.Event()

    def subscribe(self, filters: Sequence[str]) -> AsyncIterator[Envelope | ValueError]:
        self.subscriptions += 1
        return self._stream()

    async def _stream(self) -> AsyncIterator[Envelope | ValueError]:
        if not self.scripts:
            self.done.set()
            await asyncio.Event().wait()  # stays subscribed, quietly
        for item in self.scripts.pop(0):
            yield item
        raise UnavailableError("containerd went away")


class FakeClient:
    namespace = "k8s.io"

    def __init__(self, events: FakeEvents) -> None:
        self.events = events


async def test_stream_routes_events_and_reconciles_after_a_break() -> None:
    def env(event: TaskOOMEvent | ImageEvent | OtherEvent, ns: str = "k8s.io") -> Envelope:
        return Envelope(namespace=ns, topic="t", event=event)

    events = FakeEvents(
        [
            [
                env(TaskOOMEvent(container_id="c1")),
                env(TaskOOMEvent(container_id="other-ns"), ns="moby"),
                ValueError("undecodable /tasks/oom event"),
                env(ImageEvent(name="docker.io/library/busybox:latest")),
                env(OtherEvent(topic="/snapshot/prepare")),
                env(TaskOOMEvent(container_id="boom")),
            ],
            [env(ImageEvent(name="after-reconnect"))],
        ]
    )
    ooms: list[TaskOOM] = []
    images: list[str] = []
    reconciles: list[int] = []

    async def submit_oom(object_id: str, event: TaskOOM) -> None:
        if object_id == "boom":
            raise RuntimeError("a failing handler must not stop the stream")
        ooms.append(event)

    async def image_changed(name: str) -> None:
        images.append(name)

    async def reconcile() -> None:
        reconciles.append(events.subscriptions)

    stream = EventStream(
        client=FakeClient(events),  # type: ignore[arg-type]
        submit_oom=submit_oom,
        image_changed=image_changed,
        reconcile=reconcile,
        safety_net_interval=3600,
    )
    stream.start()
    async with asyncio.timeout(10):
        await events.done.wait()
    await stream.stop()
    assert ooms == [TaskOOM(container_id="c1")]
    assert images == ["docker.io/library/busybox:latest", "after-reconnect"]
    assert reconciles == [2, 3]  # after each re-subscription, not after the first
    assert stream.reconnects == 2


async def test_kind_values_name_the_record_label() -> None:
    # records label their containerd records with the Kind's value
    assert Kind.SANDBOX.value == "sandbox" and Kind.CONTAINER.value == "container"
