"""Pod sandboxes: immutable metadata, a checkpointed status, and the store that indexes them.

Sandbox states (each arrow a named transition, each transition one ``Transactional.update``):

    RunPodSandbox ──► READY ──record_exit──► NOTREADY ──remove──► (gone)
                   (pause task exited, or killed by StopPodSandbox)
    recovery: task running → READY; task gone or stopped → NOTREADY; lookup error → UNKNOWN

The sandbox is added to the store only once its pause task runs (no INIT state is
visible). NOTREADY only says the pause task is not running: StopPodSandbox must still
release the network, and the status records that it did (``record_network_torn_down``) or
how often it failed (``record_teardown_failure``), so Stop and Remove know what is left.

``record_resources`` keeps the pod-level resources UpdatePodSandboxResources applied (in
its OCI ``linux.resources`` form), whatever the state.

Closing: ``begin_closing`` (StopPodSandbox, RemovePodSandbox) fences the pod for good: no
container may be created or started in it from then on. A CreateContainer that passed the
check before holds the pod's ``creates`` count for its whole run and checks the fence once
more before it commits (and rolls back if it is set); Stop and Remove wait until the count
is zero, so the containers they then read are all there will ever be (no create in flight
can leave a container behind in a removed pod).

What is persisted (``ROOT/sandboxes/<id>/status``): the exit, the network teardown
progress and the applied resources. The state itself is not: it is derived from the pause
task at recovery, which is the truth after any crash; the checkpoint lets a restarted pycri
skip a finished CNI DEL and keep counting failed ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2
from google.protobuf import json_format

from pycri.cgroups import cgroups_path
from pycri.errors import FailedPrecondition
from pycri.store.store import Store
from pycri.store.task_presence import TaskPresence
from pycri.store.transaction import Transactional


class InFlight:
    """A count of operations under way, and a way to wait until there are none."""

    def __init__(self) -> None:
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def __len__(self) -> int:
        return self._count

    def enter(self) -> None:
        self._count += 1
        self._idle.clear()

    def leave(self) -> None:
        self._count -= 1
        if self._count == 0:
            self._idle.set()

    async def wait_idle(self) -> None:
        await self._idle.wait()


class SandboxState(enum.Enum):
    READY = "ready"
    NOTREADY = "notready"
    UNKNOWN = "unknown"

    def to_cri(self) -> api_pb2.PodSandboxState.ValueType:
        return api_pb2.SANDBOX_READY if self is SandboxState.READY else api_pb2.SANDBOX_NOTREADY


@dataclass(frozen=True, kw_only=True)
class SandboxMetadata:
    id: str
    name: str
    config: api_pb2.PodSandboxConfig
    netns_path: str  # empty for host network
    created_at: int  # ns
    runtime_handler: str = ""  # as RunPodSandbox asked ("" for the default), what Status echoes
    # the [runtimes.NAME] it resolved to then: its containers run under it for good, whatever
    # default_runtime_handler says later ("" in metadata written before handlers existed)
    resolved_runtime_handler: str = ""
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    cni_result: dict[str, Any] | None = None
    # the CNI network config list the pod was set up with (written before ADD, so DEL can
    # run with it after any crash); None: no CNI (host network or no config)
    cni_network: dict[str, Any] | None = None
    # the cgroup parent its cgroups are under: the config's, else the daemon's default at
    # creation (empty in metadata of older versions: the old default, /pycri)
    cgroup_parent: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "config": json_format.MessageToDict(self.config),
            "netns_path": self.netns_path,
            "created_at": self.created_at,
            "runtime_handler": self.runtime_handler,
            "resolved_runtime_handler": self.resolved_runtime_handler,
            "ip": self.ip,
            "additional_ips": list(self.additional_ips),
            "cni_result": self.cni_result,
            "cni_network": self.cni_network,
            "cgroup_parent": self.cgroup_parent,
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SandboxMetadata:
        config = api_pb2.PodSandboxConfig()
        json_format.ParseDict(doc["config"], config, ignore_unknown_fields=True)
        return cls(
            id=doc["id"],
            name=doc["name"],
            config=config,
            netns_path=doc.get("netns_path", ""),
            created_at=int(doc.get("created_at", 0)),
            runtime_handler=doc.get("runtime_handler", ""),
            resolved_runtime_handler=doc.get("resolved_runtime_handler", ""),
            ip=doc.get("ip", ""),
            additional_ips=tuple(doc.get("additional_ips") or ()),
            cni_result=doc.get("cni_result"),
            cni_network=doc.get("cni_network"),
            cgroup_parent=doc.get("cgroup_parent", ""),
        )

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    def cgroups_path(self, object_id: str) -> str:
        """The cgroup of the pod's pause container (its ID) or of one of its containers."""
        return cgroups_path(self.cgroup_parent, object_id)

    @property
    def host_network(self) -> bool:
        opts = self.config.linux.security_context.namespace_options
        return bool(opts.network == api_pb2.NODE)

    @property
    def handler(self) -> str:
        """The runtime handler the pod's containers run under ("" → the default)."""
        return self.resolved_runtime_handler or self.runtime_handler

    def replace(self, **changes: Any) -> SandboxMetadata:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class SandboxStatus:
    state: SandboxState
    pid: int = 0
    exit_code: int = 0
    exited_at: int = 0
    network_torn_down: bool = False  # CNI DEL done and netns removed
    network_teardown_failures: int = 0  # failed teardown calls (Remove gives up after a few)
    # the pod-level resources last applied by UpdatePodSandboxResources (OCI linux.resources)
    resources: dict[str, Any] = dataclasses.field(default_factory=dict)
    # not persisted (found at recovery): the netns pin was gone, so the IP is no longer valid
    netns_missing: bool = False
    # not persisted: Stop or Remove began; no container may be created or started in it
    closing: bool = False

    def persisted(self) -> dict[str, Any]:
        return {
            "exit_code": self.exit_code,
            "exited_at": self.exited_at,
            "network_torn_down": self.network_torn_down,
            "network_teardown_failures": self.network_teardown_failures,
            "resources": self.resources,
        }

    @classmethod
    def from_persisted(cls, doc: dict[str, Any], *, state: SandboxState, pid: int) -> SandboxStatus:
        return cls(
            state=state,
            pid=pid,
            exit_code=int(doc.get("exit_code", 0)),
            exited_at=int(doc.get("exited_at", 0)),
            network_torn_down=bool(doc.get("network_torn_down", False)),
            network_teardown_failures=int(doc.get("network_teardown_failures", 0)),
            resources=dict(doc.get("resources") or {}),
        )

    def replace(self, **changes: Any) -> SandboxStatus:
        return dataclasses.replace(self, **changes)


class Sandbox(Transactional[SandboxStatus]):
    def __init__(
        self, *, metadata: SandboxMetadata, status: SandboxStatus, status_path: Path | None
    ) -> None:
        super().__init__(status, status_path=status_path)
        self.metadata = metadata
        self.exited = asyncio.Event()  # set once the pause task's exit is recorded
        self._published(status)
        self.stopping = asyncio.Lock()  # serializes Stop/Remove of one sandbox
        self.creates = InFlight()  # CreateContainer calls under way in this pod
        self.task = TaskPresence()  # the pause task's (see ``task_presence``)

    @property
    def id(self) -> str:
        return self.metadata.id

    def _published(self, status: SandboxStatus) -> None:
        if status.state is not SandboxState.READY:
            self.exited.set()

    async def record_exit(self, *, exit_code: int, exited_at: int) -> bool:
        """The pause task exited (or was found gone): NOTREADY. True if this call changed it."""
        recorded = False

        def change(status: SandboxStatus) -> SandboxStatus:
            nonlocal recorded
            if status.state is not SandboxState.READY and not status.pid:
                return status
            recorded = True
            return status.replace(
                state=SandboxState.NOTREADY, pid=0, exit_code=exit_code, exited_at=exited_at
            )

        await self.update(change)
        return recorded

    async def begin_closing(self) -> None:
        """Stop or Remove began: fence new creates and starts (for good)."""
        await self.update(lambda s: s.replace(closing=True))

    def check_open(self) -> None:
        """FailedPrecondition unless containers may be created or started in the pod now."""
        status = self.status
        if status.closing:
            raise FailedPrecondition(f"sandbox {self.id} is being stopped or removed")
        if status.state is not SandboxState.READY:
            raise FailedPrecondition(f"sandbox {self.id} is not ready")

    async def record_network_torn_down(self) -> None:
        await self.update(lambda s: s.replace(network_torn_down=True))

    async def record_teardown_failure(self) -> int:
        """One more failed network teardown; returns how many there were."""
        status = await self.update(
            lambda s: s.replace(network_teardown_failures=s.network_teardown_failures + 1)
        )
        return status.network_teardown_failures

    async def record_resources(self, resources: dict[str, Any]) -> SandboxStatus:
        """UpdatePodSandboxResources applied these pod-level resources to the pod's cgroup."""
        return await self.update(lambda s: s.replace(resources=resources))

    async def record_netns_missing(self, *, nothing_to_release: bool) -> None:
        """Recovery found the netns pin gone; without CNI there is nothing left to tear down."""
        await self.update(
            lambda s: s.replace(
                netns_missing=True, network_torn_down=s.network_torn_down or nothing_to_release
            )
        )


class SandboxStore(Store[Sandbox]):
    def __init__(self) -> None:
        super().__init__("sandbox")
