from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from cri_api.v1 import api_pb2

from pycri.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from pycri.store import checkpoint
from pycri.store.container import ContainerMetadata, ContainerStatus, ContainerStore
from pycri.store.index import IdIndex
from pycri.store.names import NameIndex, container_name, sandbox_name
from pycri.store.sandbox import SandboxState, SandboxStatus, SandboxStore
from tests.unit.fakes import CONTAINER_ID, SANDBOX_ID, make_container, make_sandbox


def test_state_is_derived_in_priority_order() -> None:
    s = ContainerStatus()
    assert s.state == api_pb2.CONTAINER_UNKNOWN
    s = s.replace(created_at=1)
    assert s.state == api_pb2.CONTAINER_CREATED
    s = s.replace(started_at=2)
    assert s.state == api_pb2.CONTAINER_RUNNING
    s = s.replace(finished_at=3)
    assert s.state == api_pb2.CONTAINER_EXITED
    assert s.replace(unknown=True).state == api_pb2.CONTAINER_UNKNOWN


@pytest.mark.parametrize(
    ("exit_code", "stored", "reported"),
    [
        (0, "", "Completed"),
        (1, "", "Error"),
        (137, "OOMKilled", "OOMKilled"),
        (128, "StartError", "StartError"),
    ],
)
def test_reason_rules(exit_code: int, stored: str, reported: str) -> None:
    s = ContainerStatus(
        created_at=1, started_at=2, finished_at=3, exit_code=exit_code, reason=stored
    )
    assert s.reported_reason() == reported
    assert ContainerStatus(created_at=1).reported_reason() == ""


def test_checkpoint_roundtrip_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "c" / "status"
    with pytest.raises(FileNotFoundError):  # a write never makes the object's directory
        checkpoint.write_sync(path, {"a": 1})
    assert not path.parent.exists()
    path.parent.mkdir()
    checkpoint.write_sync(path, {"a": 1})
    assert checkpoint.read_sync(path) == {"version": 1, "a": 1}
    assert not list(path.parent.glob(".*tmp"))
    path.write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.read_sync(path)
    path.write_text(json.dumps({"version": 99}))
    with pytest.raises(checkpoint.CheckpointError, match="unknown version"):
        checkpoint.read_sync(path)
    with pytest.raises(checkpoint.CheckpointError, match="missing"):
        checkpoint.read_sync(tmp_path / "nope")


async def test_transitions_persist_before_publishing(tmp_path: Path) -> None:
    c = make_container(tmp_path)
    await c.record_started(pid=42, started_at=5)
    assert checkpoint.read_sync(c.status_path)["started_at"] == 5
    assert c.status.state == api_pb2.CONTAINER_RUNNING
    assert not c.exited.is_set()
    status, recorded = await c.record_exit(exit_code=3, finished_at=9)
    assert recorded and status.exit_code == 3 and c.exited.is_set()
    _, again = await c.record_exit(exit_code=255, finished_at=10, reason="Unknown")
    assert not again and c.status.exit_code == 3  # the first recorded exit wins
    assert checkpoint.read_sync(c.status_path)["finished_at"] == 9


async def test_failed_update_changes_nothing(tmp_path: Path) -> None:
    c = make_container(tmp_path)

    def boom(s: ContainerStatus) -> ContainerStatus:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await c.update(boom)
    c.status_path.mkdir(parents=True)  # the write will fail: a directory is in the way
    with pytest.raises(OSError):
        await c.record_started(pid=1, started_at=5)
    assert c.status == ContainerStatus(created_at=1)


@pytest.fixture
def slow_writes(monkeypatch: pytest.MonkeyPatch) -> asyncio.Event:
    """Checkpoint writes that wait for the returned event: an update held mid-write."""
    release = asyncio.Event()
    write = checkpoint.write

    async def held(path: Path, document: dict[str, Any]) -> None:
        await release.wait()
        await write(path, document)

    monkeypatch.setattr(checkpoint, "write", held)
    return release


async def test_a_fence_set_during_a_checkpoint_write_is_not_lost(
    tmp_path: Path, slow_writes: asyncio.Event
) -> None:
    """Regression: Remove's fence, set while UpdateContainerResources persisted, was lost."""
    c = make_container(tmp_path)
    update = asyncio.create_task(c.set_resources({"cpu": {"shares": 2}}))
    await asyncio.sleep(0.01)  # the update now waits in its checkpoint write
    fence = asyncio.create_task(c.begin_remove())
    await asyncio.sleep(0.01)
    slow_writes.set()
    await update
    assert await fence
    assert c.status.removing and c.status.resources == {"cpu": {"shares": 2}}


async def test_two_starts_never_both_pass_even_across_a_write(
    tmp_path: Path, slow_writes: asyncio.Event
) -> None:
    """Regression: StartContainer racing UpdateContainerResources let a second Start pass."""
    c = make_container(tmp_path)
    update = asyncio.create_task(c.set_resources({"memory": {"limit": 1 << 20}}))
    await asyncio.sleep(0.01)
    first = asyncio.create_task(c.begin_start())
    second = asyncio.create_task(c.begin_start())
    await asyncio.sleep(0.01)
    slow_writes.set()
    await update
    results = await asyncio.gather(first, second, return_exceptions=True)
    assert results[0] is None
    assert isinstance(results[1], FailedPrecondition)
    assert "already being started" in str(results[1])
    assert c.status.starting
    with pytest.raises(FailedPrecondition, match="being started"):
        await c.begin_remove()  # a container being started is not removed under it
    await c.end_start()
    assert await c.begin_remove()
    assert not await c.begin_remove()  # another Remove holds the fence
    with pytest.raises(FailedPrecondition, match="being removed"):
        await c.begin_start()


async def test_a_sandbox_exit_racing_its_stop_keeps_both(
    tmp_path: Path, slow_writes: asyncio.Event
) -> None:
    """Regression: the exit handler's status write and StopPodSandbox's teardown flags."""
    sandbox = make_sandbox(tmp_path)
    sandbox.status_path.parent.mkdir(parents=True, exist_ok=True)
    exit_recorded = asyncio.create_task(sandbox.record_exit(exit_code=137, exited_at=9))
    await asyncio.sleep(0.01)  # the exit waits in its checkpoint write
    torn_down = asyncio.create_task(sandbox.record_network_torn_down())
    failures = asyncio.create_task(sandbox.record_teardown_failure())
    await asyncio.sleep(0.01)
    slow_writes.set()
    assert await exit_recorded
    await torn_down
    assert await failures == 1
    status = sandbox.status
    assert (status.state, status.exit_code) == (SandboxState.NOTREADY, 137)
    assert status.network_torn_down and status.network_teardown_failures == 1
    assert sandbox.exited.is_set()
    on_disk = checkpoint.read_sync(sandbox.status_path)
    assert on_disk["exit_code"] == 137 and on_disk["network_torn_down"] is True
    assert on_disk["network_teardown_failures"] == 1
    restored = SandboxStatus.from_persisted(on_disk, state=SandboxState.NOTREADY, pid=0)
    assert restored == status


def test_one_store_for_both_kinds(tmp_path: Path) -> None:
    sandboxes, containers = SandboxStore(), ContainerStore()
    sandboxes.add(make_sandbox(tmp_path))
    containers.add(make_container(tmp_path))
    containers.add(make_container(tmp_path, container_id="d" * 64, sandbox_id="t" * 64))
    assert [c.id for c in containers.in_sandbox(SANDBOX_ID)] == [CONTAINER_ID]
    assert sandboxes.get(SANDBOX_ID[:8]).id == SANDBOX_ID
    with pytest.raises(NotFound, match="sandbox"):
        sandboxes.get("zzz")
    with pytest.raises(NotFound, match="container"):
        containers.get("zzz")


async def test_metadata_roundtrip() -> None:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name="x", attempt=2), labels={"a": "b"}
    )
    meta = ContainerMetadata(
        id="i",
        name="n",
        sandbox_id="s",
        config=config,
        image_id="sha256:x",
        image_name="busybox",
        log_path="/l",
        stop_signal="SIGQUIT",
        created_at=7,
    )
    assert ContainerMetadata.from_json(json.loads(meta.encode())) == meta


def test_names() -> None:
    pod = api_pb2.PodSandboxMetadata(name="p", namespace="ns", uid="u", attempt=1)
    assert sandbox_name(pod) == "p_ns_u_1"
    assert container_name(api_pb2.ContainerMetadata(name="c", attempt=0), pod) == "c_p_ns_u_0"
    idx = NameIndex()
    idx.reserve("x", "id1")
    idx.reserve("x", "id1")  # same owner: fine
    with pytest.raises(AlreadyExists, match="id1"):
        idx.reserve("x", "id2")
    idx.release("x", "id2")  # not the owner: no effect
    assert idx.holder("x") == "id1"
    idx.release("x", "id1")
    idx.reserve("x", "id2")


def test_id_prefix_lookup() -> None:
    idx: IdIndex[str] = IdIndex("container")
    idx.add("abc123", "one")
    idx.add("abd456", "two")
    assert idx.get("abc123") == "one"
    assert idx.get("abc") == "one"
    with pytest.raises(InvalidArgument, match="ambiguous"):
        idx.get("ab")
    with pytest.raises(InvalidArgument, match="empty"):
        idx.get("")
    with pytest.raises(NotFound):
        idx.get("zzz")
    assert idx.find("zzz") is None
