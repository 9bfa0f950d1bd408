"""Pod sandboxes: immutable metadata, in-memory status, and the store that indexes them.

Sandbox states (reference §2.3):

    RunPodSandbox ──► READY ──pause task exits / StopPodSandbox──► NOTREADY ──remove──► (gone)
    recovery: task running → READY; task gone or stopped → NOTREADY; lookup error → UNKNOWN

The sandbox is added to the store only once its pause task runs (no INIT state is
visible). Its status is not checkpointed: it is re-derived from the pause task at recovery.
NOTREADY only says the pause task is not running; StopPodSandbox must still release the
network (CRI contract).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
from dataclasses import dataclass
from typing import Any

from cri_api.v1 import api_pb2
from google.protobuf import json_format

from pycri.store.index import IdIndex


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
    runtime_handler: str = ""
    ip: str = ""
    additional_ips: tuple[str, ...] = ()
    cni_result: dict[str, Any] | None = None
    # the CNI network config list the pod was set up with (written before ADD, so DEL can
    # run with it after any crash); None: no CNI (host network or no config)
    cni_network: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "config": json_format.MessageToDict(self.config),
            "netns_path": self.netns_path,
            "created_at": self.created_at,
            "runtime_handler": self.runtime_handler,
            "ip": self.ip,
            "additional_ips": list(self.additional_ips),
            "cni_result": self.cni_result,
            "cni_network": self.cni_network,
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
            ip=doc.get("ip", ""),
            additional_ips=tuple(doc.get("additional_ips") or ()),
            cni_result=doc.get("cni_result"),
            cni_network=doc.get("cni_network"),
        )

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), sort_keys=True).encode()

    @property
    def host_network(self) -> bool:
        opts = self.config.linux.security_context.namespace_options
        return bool(opts.network == api_pb2.NODE)

    def replace(self, **changes: Any) -> SandboxMetadata:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True, kw_only=True)
class SandboxStatus:
    state: SandboxState
    pid: int = 0
    exit_code: int = 0
    exited_at: int = 0


class Sandbox:
    def __init__(self, *, metadata: SandboxMetadata, status: SandboxStatus) -> None:
        self.metadata = metadata
        self._status = status
        self.exited = asyncio.Event()  # set once the pause task's exit is handled
        if status.state is not SandboxState.READY:
            self.exited.set()
        self.network_torn_down = False  # CNI DEL done and netns removed
        self.netns_missing = False  # its netns pin was gone at recovery (IP no longer valid)
        self.network_teardown_failures = 0  # failed teardown calls (RemovePodSandbox gives up)
        self.stopping = asyncio.Lock()  # serializes Stop/Remove of one sandbox

    @property
    def id(self) -> str:
        return self.metadata.id

    @property
    def status(self) -> SandboxStatus:
        return self._status

    def set_status(self, status: SandboxStatus) -> None:
        self._status = status
        if status.state is not SandboxState.READY:
            self.exited.set()


class SandboxStore:
    def __init__(self) -> None:
        self._index: IdIndex[Sandbox] = IdIndex("sandbox")

    def add(self, sandbox: Sandbox) -> None:
        self._index.add(sandbox.id, sandbox)

    def get(self, id_or_prefix: str) -> Sandbox:
        return self._index.get(id_or_prefix)

    def find(self, id_or_prefix: str) -> Sandbox | None:
        return self._index.find(id_or_prefix)

    def remove(self, sandbox_id: str) -> None:
        self._index.remove(sandbox_id)

    def all(self) -> list[Sandbox]:
        return list(self._index)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, object_id: object) -> bool:
        return object_id in self._index
