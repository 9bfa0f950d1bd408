"""What every RPC implementation gets: one ``RuntimeContext``, built once by the daemon.

RPC modules are plain async functions ``rpc(rt, request) -> response``; they share state
only through this object. Every field is given at construction (``daemon.build_runtime``;
the integration tests use the daemon itself), none is filled in later, and nothing is built
here: it is a record of the parts, not a factory.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pycri.config import Config
from pycri.containerd.client import ContainerdClient
from pycri.containerd.health import ContainerdHealth
from pycri.events.dispatcher import EventDispatcher
from pycri.events.monitor import ExitMonitors
from pycri.events.types import Event
from pycri.images.pull import ImagePuller
from pycri.images.store import ImageStore
from pycri.metrics import Metrics
from pycri.net.manager import PodNetwork
from pycri.net.netns import NetNS
from pycri.net.pod_cidr import PodCIDR
from pycri.oci.host import HostFeatures
from pycri.oci.runtime_handlers import RuntimeHandlers
from pycri.paths import Paths
from pycri.security.apparmor import AppArmor
from pycri.security.node import NodeSecurity
from pycri.security.seccomp import SeccompSettings
from pycri.service.faults import Faults
from pycri.service.undo import UndoJournal
from pycri.store.container import ContainerStore
from pycri.store.names import NameIndex
from pycri.store.sandbox import SandboxStore
from pycri.stream.server import StreamServer

if TYPE_CHECKING:
    from pycri.service.container_events import ContainerEventPublisher


@dataclass(frozen=True, kw_only=True)
class RuntimeContext:
    config: Config
    paths: Paths
    # containerd: the client, and the background probe Status answers from
    containerd: ContainerdClient
    health: ContainerdHealth
    # what the node has: host facts for specs, the runtime handlers (probed at start),
    # images, registry pulls, pod networking
    host_features: HostFeatures
    handlers: RuntimeHandlers
    # what the node enforces: seccomp filters (settings for the resolution), AppArmor
    security: NodeSecurity
    seccomp: SeccompSettings
    apparmor: AppArmor
    images: ImageStore
    pulls: ImagePuller
    network: PodNetwork
    netns: NetNS
    # the node's pod CIDR from kubelet, and the CNI config written from it
    pod_cidr: PodCIDR
    # the objects and their names
    sandboxes: SandboxStore
    containers: ContainerStore
    sandbox_names: NameIndex
    container_names: NameIndex
    # the event machinery: exit monitors, the dispatcher they submit to, lifecycle events out
    monitors: ExitMonitors
    dispatcher: EventDispatcher[Event]
    events: ContainerEventPublisher
    # the streaming server behind Exec, Attach and PortForward (URLs with one-use tokens)
    streams: StreamServer
    # slots for ExecSync calls running at once (config max_concurrent_exec_sync)
    exec_sync_slots: asyncio.Semaphore
    faults: Faults
    metrics: Metrics
    # half-made objects of failed creates, undone for sure (service/undo.py)
    undo: UndoJournal
