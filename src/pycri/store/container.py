"""Containers: immutable metadata, a checkpointed status, and the store that indexes them.

State machine (derived from the status, never stored; each arrow is a named transition
below, and every transition is one ``Transactional.update``):

     create ──► CREATED ──record_started──► RUNNING ──record_exit──► EXITED ──remove──► (gone)
                   │                                                    ▲
                   └──────────────── record_start_error ────────────────┘
     recovery (restore) can yield UNKNOWN until reconciled; UNKNOWN ──record_exit──► EXITED

    unknown flag → UNKNOWN; finished_at → EXITED; started_at → RUNNING; created_at → CREATED.

Fences: ``begin_start``/``end_start`` and ``begin_remove``/``end_remove`` set the in-memory
``starting`` and ``removing`` flags (never persisted). They check and set under the same
lock as every persisted change, so a fence set during a checkpoint write is never lost and
two Starts (or a Start and a Remove) can never both pass. ``start_settled`` is set whenever
no Start is under way: a Stop (or Remove) that arrives during a Start waits on it and then
acts on the state the Start left (so a Stop right after a Start wins: the container ends
stopped, never RUNNING).

The first recorded exit wins: ``record_exit`` on an EXITED container changes nothing but the
UNKNOWN flag, so a retried or doubly reported exit is harmless.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cri_api.v1 import api_pb2
from google.protobuf import json_format

from pycri.errors import FailedPrecondition
from pycri.store.store import Store
from pycri.store.task_presence import TaskPresence
from pycri.store.transaction import Transactional

if TYPE_CHECKING:
    from pycri.cio.container_io import ContainerIO
    from pycri.containerd.client import Mount

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
    # the pod's runtime handler, and the runtime it put in the containerd record
    runtime_handler: str = ""
    runtime_type: str = ""
    runtime_options: dict[str, Any] = field(default_factory=dict)

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
            "runtime_handler": self.runtime_handler,
            "runtime_type": self.runtime_type,
            "runtime_options": self.runtime_options,
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
            runtime_handler=doc.get("runtime_handler", ""),
            runtime_type=doc.get("runtime_type", ""),
            runtime_options=dict(doc.get("runtime_options") or {}),
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


class Container(Transactional[ContainerStatus]):
    """One container: metadata, status (changed only by its transitions), runtime handles."""

    def __init__(
        self, *, metadata: ContainerMetadata, status: ContainerStatus, status_path: Path
    ) -> None:
        super().__init__(status, status_path=status_path)
        self.metadata = metadata
        # Set once the exit is recorded (or the container is known EXITED at load):
        # StopContainer waits on it; it is never cleared.
        self.exited = asyncio.Event()
        # Set while no Start is under way (``starting`` is false); Stop waits on it.
        self.start_settled = asyncio.Event()
        self._published(status)
        # The stop signal is sent once per container lifetime (kubelet's grace period must
        # not restart with every repeated StopContainer).
        self.stop_signal_sent = False
        self.io: ContainerIO | None = None  # while a task exists
        # The rootfs mounts of its snapshot, kept from CreateContainer (they never change);
        # None after a restart of pycri (Start then asks containerd).
        self.rootfs: list[Mount] | None = None
        self.task = TaskPresence()  # see ``task_presence``; CreateContainer: none yet

    @property
    def id(self) -> str:
        return self.metadata.id

    def _published(self, status: ContainerStatus) -> None:
        if status.state == api_pb2.CONTAINER_EXITED:
            self.exited.set()
        if status.starting:
            self.start_settled.clear()
        else:
            self.start_settled.set()

    # ---------------------------------------------------------------- fences

    async def begin_start(self) -> None:
        """Fence a Start: FailedPrecondition unless CREATED and not starting or removing."""

        def change(status: ContainerStatus) -> ContainerStatus:
            if status.starting:
                raise FailedPrecondition(f"container {self.id} is already being started")
            if status.removing:
                raise FailedPrecondition(f"container {self.id} is being removed")
            if status.state != api_pb2.CONTAINER_CREATED:
                raise FailedPrecondition(
                    f"container {self.id} is in state "
                    f"{api_pb2.ContainerState.Name(status.state)}, not CONTAINER_CREATED"
                )
            return status.replace(starting=True)

        await self.update(change)

    async def end_start(self) -> None:
        await self.update(lambda s: s.replace(starting=False))

    async def begin_remove(self) -> bool:
        """Fence a Remove; False when another Remove holds it. FailedPrecondition while a
        Start runs."""
        began = False

        def change(status: ContainerStatus) -> ContainerStatus:
            nonlocal began
            if status.starting:
                raise FailedPrecondition(f"container {self.id} is being started")
            if status.removing:
                return status
            began = True
            return status.replace(removing=True)

        await self.update(change)
        return began

    async def end_remove(self) -> None:
        """The removal failed: lift the fence so a later Remove can finish it."""
        await self.update(lambda s: s.replace(removing=False))

    # ---------------------------------------------------------------- transitions

    async def record_started(self, *, pid: int, started_at: int) -> ContainerStatus:
        return await self.update(lambda s: s.replace(pid=pid, started_at=started_at))

    async def record_exit(
        self, *, exit_code: int, finished_at: int, reason: str = "", oom: bool = False
    ) -> tuple[ContainerStatus, bool]:
        """Record an exit; (the status, whether this call recorded it) — the first one wins."""
        recorded = False

        def change(status: ContainerStatus) -> ContainerStatus:
            nonlocal recorded
            if status.finished_at:
                return status.replace(unknown=False)
            recorded = True
            return status.replace(
                pid=0,
                finished_at=finished_at,
                exit_code=exit_code,
                reason=REASON_OOM_KILLED if oom else (reason or status.reason),
                unknown=False,
            )

        status = await self.update(change)
        return status, recorded

    async def record_start_error(self, *, message: str, finished_at: int) -> ContainerStatus:
        return await self.update(
            lambda s: s.replace(
                pid=0,
                finished_at=finished_at,
                exit_code=START_ERROR_EXIT_CODE,
                reason=REASON_START_ERROR,
                message=message,
            )
        )

    async def mark_oom(self) -> ContainerStatus:
        """An OOM kill seen on the event stream: the reason, whenever the exit comes."""
        return await self.update(lambda s: s.replace(reason=REASON_OOM_KILLED))

    async def set_resources(self, resources: dict[str, Any]) -> ContainerStatus:
        return await self.update(lambda s: s.replace(resources=resources))

    async def restore(self, status: ContainerStatus) -> ContainerStatus:
        """Recovery: the status reconciled with containerd (its checkpoint rewritten)."""
        return await self.update(lambda _: status)


class ContainerStore(Store[Container]):
    def __init__(self) -> None:
        super().__init__("container")

    def in_sandbox(self, sandbox_id: str) -> list[Container]:
        return self.where(lambda c: c.metadata.sandbox_id == sandbox_id)
