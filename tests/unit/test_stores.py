from __future__ import annotations

import json
from pathlib import Path

import pytest
from cri_api.v1 import api_pb2

from pycri.errors import AlreadyExists, InvalidArgument, NotFound
from pycri.store import checkpoint
from pycri.store.container import Container, ContainerMetadata, ContainerStatus
from pycri.store.index import IdIndex
from pycri.store.names import NameIndex, container_name, sandbox_name


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


def _container(tmp_path: Path) -> Container:
    meta = ContainerMetadata(
        id="a" * 64,
        name="n",
        sandbox_id="b" * 64,
        config=api_pb2.ContainerConfig(),
        image_id="sha256:x",
        image_name="busybox",
        log_path="",
        stop_signal="",
        created_at=1,
    )
    return Container(
        metadata=meta, status=ContainerStatus(created_at=1), status_path=tmp_path / "status"
    )


async def test_update_persists_before_publishing(tmp_path: Path) -> None:
    c = _container(tmp_path)
    await c.update(lambda s: s.replace(started_at=5, pid=42))
    assert checkpoint.read_sync(tmp_path / "status")["started_at"] == 5
    assert c.status.state == api_pb2.CONTAINER_RUNNING
    assert not c.exited.is_set()
    await c.update(lambda s: s.replace(finished_at=9, exit_code=3))
    assert c.exited.is_set()


async def test_failed_update_changes_nothing(tmp_path: Path) -> None:
    c = _container(tmp_path)

    def boom(s: ContainerStatus) -> ContainerStatus:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        await c.update(boom)
    (tmp_path / "status").mkdir()  # the write will fail: a directory is in the way
    with pytest.raises(OSError):
        await c.update(lambda s: s.replace(started_at=5))
    assert c.status == ContainerStatus(created_at=1)


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
