"""Fakes shared by the unit tests: a hand-driven clock, a scriptable containerd task service,
and factories for stores' objects. Pure Python: no containerd, no runc."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2

from pycri.containerd.errors import NotFoundError
from pycri.containerd.types import ExitStatus, TaskInfo, TaskStatus
from pycri.store.container import Container, ContainerMetadata, ContainerStatus
from pycri.store.sandbox import Sandbox, SandboxMetadata, SandboxState, SandboxStatus

CONTAINER_ID = "c" * 64
SANDBOX_ID = "s" * 64


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeTasks:
    """containerd's task service as the exit path uses it (Wait, Get, Delete), scriptable.

    ``waits[id]`` is a queue of outcomes for Wait: an ``ExitStatus`` to answer, an exception
    to raise, or ``"block"`` to wait until ``release(id)``. ``delete_failures[id]`` fails that
    many deletes first. Every call is recorded in ``calls`` as ``(method, id)``, in order.
    """

    waits: dict[str, list[Any]] = field(default_factory=lambda: defaultdict(list))
    tasks: dict[str, TaskInfo] = field(default_factory=dict)
    delete_failures: dict[str, int] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    _released: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))

    def release(self, object_id: str) -> None:
        self._released[object_id].set()

    async def wait(
        self, container_id: str, exec_id: str = "", *, timeout: float | None = None
    ) -> ExitStatus:
        self.calls.append(("wait", container_id))
        queue = self.waits[container_id]
        outcome = queue.pop(0) if queue else "block"
        if outcome == "block":
            await self._released[container_id].wait()
            return ExitStatus(exit_status=0, exited_at_ns=1)
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, ExitStatus)
        return outcome

    async def get(
        self, container_id: str, exec_id: str = "", *, timeout: float | None = None
    ) -> TaskInfo:
        self.calls.append(("get", container_id))
        if container_id not in self.tasks:
            raise NotFoundError(f"task {container_id} not found")
        return self.tasks[container_id]

    async def delete(self, container_id: str, *, timeout: float | None = None) -> object:
        self.calls.append(("delete", container_id))
        left = self.delete_failures.get(container_id, 0)
        if left:
            self.delete_failures[container_id] = left - 1
            raise RuntimeError(f"shim did not answer for {container_id}")
        if self.tasks.pop(container_id, None) is None:
            raise NotFoundError(f"task {container_id} not found")
        return None

    def running(self, object_id: str, pid: int = 42) -> None:
        self.tasks[object_id] = TaskInfo(status=TaskStatus.RUNNING, pid=pid)

    def stopped(self, object_id: str, *, exit_status: int, exited_at_ns: int) -> None:
        self.tasks[object_id] = TaskInfo(
            status=TaskStatus.STOPPED,
            pid=42,
            exit_status=exit_status,
            exited_at_ns=exited_at_ns,
        )


def container_metadata(
    *,
    container_id: str = CONTAINER_ID,
    sandbox_id: str = SANDBOX_ID,
    labels: dict[str, str] | None = None,
) -> ContainerMetadata:
    return ContainerMetadata(
        id=container_id,
        name=f"name-{container_id[:6]}",
        sandbox_id=sandbox_id,
        config=api_pb2.ContainerConfig(
            metadata=api_pb2.ContainerMetadata(name="app"), labels=labels or {}
        ),
        image_id="sha256:" + "i" * 64,
        image_name="busybox",
        log_path="",
        stop_signal="",
        created_at=1,
    )


def make_container(
    tmp_path: Path,
    *,
    container_id: str = CONTAINER_ID,
    sandbox_id: str = SANDBOX_ID,
    status: ContainerStatus | None = None,
    labels: dict[str, str] | None = None,
) -> Container:
    """A container whose status checkpoint lives under ``tmp_path`` (CREATED by default);
    its directory exists, as CreateContainer makes it."""
    (tmp_path / container_id).mkdir(parents=True, exist_ok=True)
    return Container(
        metadata=container_metadata(
            container_id=container_id, sandbox_id=sandbox_id, labels=labels
        ),
        status=status or ContainerStatus(created_at=1),
        status_path=tmp_path / container_id / "status",
    )


def make_sandbox(
    tmp_path: Path,
    *,
    sandbox_id: str = SANDBOX_ID,
    state: SandboxState = SandboxState.READY,
    pid: int = 7,
    labels: dict[str, str] | None = None,
) -> Sandbox:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(name="pod", namespace="ns", uid="uid"),
        labels=labels or {},
    )
    (tmp_path / sandbox_id).mkdir(parents=True, exist_ok=True)  # as RunPodSandbox makes it
    return Sandbox(
        metadata=SandboxMetadata(
            id=sandbox_id, name="pod_ns_uid_0", config=config, netns_path="", created_at=1
        ),
        status=SandboxStatus(state=state, pid=pid),
        status_path=tmp_path / sandbox_id / "status",
    )
