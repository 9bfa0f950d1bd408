"""Containers: immutable metadata, a checkpointed status, and the store that indexes them.

State machine (derived from the status timestamps, never stored; reference §2.1):

     create ──► CREATED ──start──► RUNNING ──exit/stop──► EXITED ──remove──► (gone)
                   │                                         ▲
                   └────────────── start failed ─────────────┘
     recovery can yield UNKNOWN until reconciled; UNKNOWN ──stop/exit──► EXITED

    unknown flag → UNKNOWN; finished_at → EXITED; started_at → RUNNING; created_at → CREATED.

``starting`` and ``removing`` are transient, in-memory fences against a concurrent Start and
Remove. ``Container.update`` is the single transactional way to change the status: the
callback gets a copy, the result is checkpointed (temp + fsync + rename) and only then
published; if the callback or the write fails, nothing changes. The per-container lock is
held only around that (never across containerd calls), so an exit handler never waits
behind a slow shim call made by an RPC (reference §6.1 item 11).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2
from google.protobuf import json_format

from pycri.store import checkpoint
from pycri.store.index import IdIndex

UNKNOWN_EXIT_CODE = 255
START_ERROR_EXIT_CODE = 128
REASON_UNKNOWN = "Unknown"
REASON_START_ERROR = "StartError"
REASON_OOM_KILLED = "OOMKilled"
REASON_COMPLETED = "Completed"
REASON_ERROR = "Error"


@dataclass(frozen=True, kw_only=True)
class ContainerMetadata:
    """Who the container is; written once at create (and kept in containerd's extensions)."""

    id: str
    name: str
    sandbox_id: str
    config: api_pb2.ContainerConfig
    image_id: str  # the config digest, kubelet's image reference
    image_name: str  # the reference the user asked for
    log_path: str  # absolute; empty disables logging
    stop_signal: str  # from the image config; empty means SIGTERM
    created_at: int  # ns, from the create; survives a lost checkpoint

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "sandbox_id": self.sandbox_id,
            "config": json_format.MessageToDict(self.config),
            "image_id": self.image_id,
            "image_name": self.image_name,
            "log_path": self.log_path,
            "stop_signal": self.stop_signal,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> ContainerMetadata:
        config = api_pb2.ContainerConfig()
        json_format.ParseDict(doc["config"], config, ignore_unknown_fields=True)
        return cls(
            id=doc["id"],
            name=doc["name"],
            sandbox_id=doc["sandbox_id"],
            config=config,
            image_id=doc["image_id"],
            image_name=doc.get("image_name", ""),
            log_path=doc.get("log_path", ""),
            stop_signal=doc.get("stop_signal", ""),
            created_at=int(doc.get("created_at", 0)),
        )

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()


@dataclass(frozen=True, kw_only=True)
class ContainerStatus:
    pid: int = 0
    created_at: int = 0
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    resources: dict[str, Any] = field(default_factory=dict)  # OCI linux resources
    # not persisted:
    unknown: bool = False
    starting: bool = False
    removing: bool = False

    @property
    def state(self) -> api_pb2.ContainerState.ValueType:
        if self.unknown:
            return api_pb2.CONTAINER_UNKNOWN
        if self.finished_at:
            return api_pb2.CONTAINER_EXITED
        if self.started_at:
            return api_pb2.CONTAINER_RUNNING
        if self.created_at:
            return api_pb2.CONTAINER_CREATED
        return api_pb2.CONTAINER_UNKNOWN

    def reported_reason(self) -> str:
        """An explicit reason wins; EXITED synthesizes Completed/Error (not stored)."""
        if self.reason:
            return self.reason
        if self.state == api_pb2.CONTAINER_EXITED:
            return REASON_COMPLETED if self.exit_code == 0 else REASON_ERROR
        return ""

    def persisted(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "message": self.message,
            "resources": self.resources,
        }

    @classmethod
    def from_persisted(cls, doc: dict[str, Any]) -> ContainerStatus:
        return cls(
            pid=int(doc.get("pid", 0)),
            created_at=int(doc.get("created_at", 0)),
            started_at=int(doc.get("started_at", 0)),
            finished_at=int(doc.get("finished_at", 0)),
            exit_code=int(doc.get("exit_code", 0)),
            reason=str(doc.get("reason", "")),
            message=str(doc.get("message", "")),
            resources=dict(doc.get("resources") or {}),
        )

    def replace(self, **changes: Any) -> ContainerStatus:
        return dataclasses.replace(self, **changes)


PersistHook = Callable[["Container", ContainerStatus], None]


class Container:
    """One container: metadata, status (changed only via ``update``), and runtime handles."""

    def __init__(
        self,
        *,
        metadata: ContainerMetadata,
        status: ContainerStatus,
        status_path: Path,
        before_persist: PersistHook | None = None,
    ) -> None:
        self.metadata = metadata
        self._status = status
        self.status_path = status_path
        self._lock = asyncio.Lock()
        # Set once the exit is recorded (or the container is known EXITED at load):
        # StopContainer waits on it; it is never cleared.
        self.exited = asyncio.Event()
        if status.state == api_pb2.CONTAINER_EXITED:
            self.exited.set()
        # The stop signal is sent once per container lifetime (reference §6.4 item 17).
        self.stop_signal_sent = False
        self.io: Any = None  # pycri.cio.ContainerIO while a task exists
        self._before_persist = before_persist

    @property
    def id(self) -> str:
        return self.metadata.id

    @property
    def status(self) -> ContainerStatus:
        return self._status  # frozen: callers get an immutable snapshot

    async def update(
        self, change: Callable[[ContainerStatus], ContainerStatus], *, persist: bool = True
    ) -> ContainerStatus:
        """Apply ``change`` transactionally: checkpoint first, then publish."""
        async with self._lock:
            new = change(self._status)
            if persist and new.persisted() != self._status.persisted():
                if self._before_persist is not None:
                    self._before_persist(self, new)  # fault injection hook (tests)
                await checkpoint.write(self.status_path, new.persisted())
            self._status = new
            if new.state == api_pb2.CONTAINER_EXITED:
                self.exited.set()
            return new

    def set_transient(self, **flags: bool) -> None:
        """Change the in-memory fences (starting/removing); they are never persisted."""
        self._status = self._status.replace(**flags)


class ContainerStore:
    def __init__(self) -> None:
        self._index: IdIndex[Container] = IdIndex("container")

    def add(self, container: Container) -> None:
        self._index.add(container.id, container)

    def get(self, id_or_prefix: str) -> Container:
        return self._index.get(id_or_prefix)

    def find(self, id_or_prefix: str) -> Container | None:
        return self._index.find(id_or_prefix)

    def remove(self, container_id: str) -> None:
        self._index.remove(container_id)

    def all(self) -> list[Container]:
        return list(self._index)

    def in_sandbox(self, sandbox_id: str) -> list[Container]:
        return [c for c in self._index if c.metadata.sandbox_id == sandbox_id]

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._index
