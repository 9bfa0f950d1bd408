"""What every RPC implementation gets: config, the containerd client, the stores, the monitor.

RPC modules are plain async functions ``rpc(rt, request) -> response``; they share state only
through this object, which the daemon builds once. Tests build it with real parts too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pycri.config import Config
from pycri.containerd.client import ContainerdClient
from pycri.containerd.health import ContainerdHealth
from pycri.events.container_events import ContainerEventBroadcaster
from pycri.images.pull import ImagePuller
from pycri.images.store import ImageStore
from pycri.metrics import Metrics
from pycri.net.manager import PodNetwork
from pycri.net.netns import NetNS
from pycri.oci.spec import HostFeatures, probe_host_features
from pycri.store.container import ContainerStore
from pycri.store.names import NameIndex
from pycri.store.sandbox import SandboxStore

if TYPE_CHECKING:
    from pycri.events.dispatcher import EventDispatcher
    from pycri.events.handlers import Faults
    from pycri.events.monitor import ExitMonitors
    from pycri.events.types import Event


@dataclass(kw_only=True)
class RuntimeContext:
    config: Config
    containerd: ContainerdClient
    health: ContainerdHealth
    images: ImageStore
    host_features: HostFeatures = field(default_factory=probe_host_features)
    sandboxes: SandboxStore = field(default_factory=SandboxStore)
    metrics: Metrics = field(default_factory=Metrics)
    containers: ContainerStore = field(default_factory=ContainerStore)
    sandbox_names: NameIndex = field(default_factory=NameIndex)
    container_events: ContainerEventBroadcaster = field(default_factory=ContainerEventBroadcaster)
    container_names: NameIndex = field(default_factory=NameIndex)
    # set by the daemon once built (they need the context themselves)
    monitors: ExitMonitors = field(init=False)
    dispatcher: EventDispatcher[Event] = field(init=False)
    faults: Faults = field(init=False)
    # registry pulls: HTTP clients, pulls and downloads in flight; the daemon closes it
    pulls: ImagePuller = field(init=False)
    # pod networking (CNI); the daemon starts and stops its config watcher
    network: PodNetwork = field(init=False)

    def __post_init__(self) -> None:
        from pycri.events.handlers import Faults

        self.faults = Faults(enabled=self.config.enable_fault_injection)
        self.pulls = ImagePuller(
            client=self.containerd,
            config=self.config.registry,
            snapshotter=self.config.snapshotter,
        )
        self.network = PodNetwork(
            conf_dir=Path(self.config.cni_conf_dir),
            bin_dirs=self.config.cni_bin_dirs,
            netns=self.netns,
        )

    def emit_container_event(
        self, object_id: str, kind: str, *, sandbox_id: str | None = None
    ) -> None:
        """Publish a lifecycle event to GetContainerEvents subscribers (never blocks)."""
        if not self.container_events.subscribers:
            return  # nobody listens: skip building the snapshot
        from pycri.service.container_events import build_event

        self.container_events.publish(build_event(self, object_id, kind, sandbox_id=sandbox_id))

    @property
    def netns(self) -> NetNS:
        return NetNS(Path(self.config.state) / "netns")

    def sandbox_dir(self, sandbox_id: str) -> Path:
        return Path(self.config.root) / "sandboxes" / sandbox_id

    def container_dir(self, container_id: str) -> Path:
        return Path(self.config.root) / "containers" / container_id

    def container_status_path(self, container_id: str) -> Path:
        return self.container_dir(container_id) / "status"

    def container_io_dir(self, container_id: str) -> Path:
        return Path(self.config.state) / "containers" / container_id / "io"

    def network_status(self) -> tuple[bool, str]:
        """(ready, message) of pod networking, from the CNI config watcher's snapshot."""
        return self.network.status()
