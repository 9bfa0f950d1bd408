"""The pycri daemon: brings up containerd (managed or given), the runtime, then the CRI server.

Start order (reference §1.1): containerd reachable → namespace ``k8s.io`` → health prober →
CRI server listening but refusing RPCs → (recovery, event monitor) → initialized. Shutdown
runs it backwards: stop serving, stop the prober, close the client, stop the managed
containerd (running containers survive in their shims).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pycri.api.server import CRIServer, prepare_socket
from pycri.config import Config, ConfigError
from pycri.containerd.client import ContainerdClient
from pycri.containerd.health import ContainerdHealth
from pycri.containerd.supervisor import ManagedContainerd, disabled_plugins, go_environment
from pycri.events.container_events import ContainerEventBroadcaster
from pycri.events.dispatcher import EventDispatcher
from pycri.events.monitor import ExitMonitors
from pycri.events.stream import EventStream
from pycri.events.types import Event
from pycri.images.pull import ImagePuller
from pycri.images.store import ImageStore
from pycri.metrics import Metrics, MetricsServer
from pycri.net.manager import PodNetwork
from pycri.net.netns import NetNS
from pycri.net.pod_cidr import PodCIDR, PodCIDRError, validate_template
from pycri.oci.host import probe_host_features
from pycri.oci.runtime_handlers import RuntimeHandlers
from pycri.paths import Paths
from pycri.security.apparmor import AppArmor
from pycri.security.node import probe_node_security
from pycri.security.seccomp import validate_unset_profile
from pycri.service.container_events import ContainerEventPublisher
from pycri.service.context import RuntimeContext
from pycri.service.exits import ExitHandler
from pycri.service.faults import Faults
from pycri.service.reconcile import Reconciler
from pycri.service.recovery import recover
from pycri.service.registry import IMAGE_RPCS, RUNTIME_RPCS, bind
from pycri.service.streaming import StreamingBackend
from pycri.service.undo import Cleanup, UndoJournal
from pycri.store.container import ContainerStore
from pycri.store.names import NameIndex
from pycri.store.sandbox import SandboxStore
from pycri.stream.server import StreamServer, StreamServerConfig

log = logging.getLogger(__name__)


def build_runtime(
    *, config: Config, client: ContainerdClient, health: ContainerdHealth, images: ImageStore
) -> RuntimeContext:
    """Every part of the runtime, wired once, in dependency order (no field is set later).

    The exit path: monitors wait on containerd and submit to the dispatcher, which runs the
    exit handler; the handler records into the stores and publishes through the event
    publisher. Nothing here starts a task: ``Daemon.start`` does, in its order.
    """
    paths = Paths(root=Path(config.root), state=Path(config.state))
    metrics = Metrics(enabled=bool(config.metrics_address))  # off: prometheus never loaded
    sandboxes, containers = SandboxStore(), ContainerStore()
    events = ContainerEventPublisher(
        sandboxes=sandboxes,
        containers=containers,
        images=images,
        broadcaster=ContainerEventBroadcaster(),
    )
    faults = Faults(enabled=config.enable_fault_injection)
    exits = ExitHandler(
        containers=containers,
        sandboxes=sandboxes,
        tasks=client.tasks,
        events=events,
        faults=faults,
        metrics=metrics,
    )
    dispatcher: EventDispatcher[Event] = EventDispatcher(
        handler=exits.handle, on_failure=exits.failed, name="exits"
    )
    netns = NetNS(paths.netns_dir)
    streams = StreamServer(
        backend=StreamingBackend(
            containers=containers, sandboxes=sandboxes, containerd=client, paths=paths
        ),
        config=StreamServerConfig(
            address=config.stream_address,
            port=config.stream_port,
            tls=config.stream_tls,
            tls_cert_file=config.stream_tls_cert_file or None,
            tls_key_file=config.stream_tls_key_file or None,
            idle_timeout_s=float(config.stream_idle_timeout),
            max_concurrent_streams=config.stream_max_concurrent,
        ),
    )
    network = PodNetwork(
        conf_dir=Path(config.cni_conf_dir), bin_dirs=config.cni_bin_dirs, netns=netns
    )
    security = probe_node_security()
    try:
        validate_unset_profile(config.seccomp_unset_profile)
    except ValueError as err:
        raise ConfigError(f"config key 'seccomp_unset_profile': {err}") from None
    template = Path(config.cni_conf_template) if config.cni_conf_template else None
    if template is not None:
        try:
            validate_template(template)
        except PodCIDRError as err:
            raise ConfigError(f"config key 'cni_conf_template': {err}") from None
    return RuntimeContext(
        config=config,
        paths=paths,
        containerd=client,
        health=health,
        host_features=probe_host_features(),
        handlers=RuntimeHandlers(config, paths=paths),
        security=security,
        seccomp=security.seccomp_settings(unset_profile=config.seccomp_unset_profile),
        apparmor=AppArmor(host=security.apparmor),
        images=images,
        pulls=ImagePuller(client=client, config=config.registry, snapshotter=config.snapshotter),
        network=network,
        netns=netns,
        pod_cidr=PodCIDR(
            state_file=paths.runtime_config_file,
            conf_dir=Path(config.cni_conf_dir),
            template=template,
        ),
        sandboxes=sandboxes,
        containers=containers,
        sandbox_names=NameIndex(),
        container_names=NameIndex(),
        monitors=ExitMonitors(waiter=client.tasks, submit=dispatcher.submit),
        dispatcher=dispatcher,
        events=events,
        streams=streams,
        exec_sync_slots=asyncio.Semaphore(config.max_concurrent_exec_sync),
        faults=faults,
        metrics=metrics,
        undo=UndoJournal(
            directory=paths.undo_dir,
            cleanup=Cleanup(
                client=client,
                snapshotter=config.snapshotter,
                paths=paths,
                netns=netns,
                network=network,
            ),
        ),
    )


class StateDirInUseError(RuntimeError):
    """Another pycri daemon runs with the same state dir."""


def _lock_state_dir(lock_file: Path) -> int:
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StateDirInUseError(
            f"another pycri daemon is running with state dir {lock_file.parent}"
        ) from None
    return fd


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.managed: ManagedContainerd | None = None
        if config.managed_containerd:
            self.managed = ManagedContainerd(
                root=Path(config.root),
                state=Path(config.state),
                binary=config.containerd_binary,
                disabled=disabled_plugins(
                    unused=config.managed_containerd_disabled_plugins,
                    snapshotter=config.snapshotter,
                ),
                env=go_environment(
                    memory_limit=config.managed_containerd_memory_limit,
                    gogc=config.managed_containerd_gogc,
                ),
            )
        self.client = ContainerdClient(config.containerd_socket)
        self.health = ContainerdHealth(self.client)
        self.images = ImageStore(
            self.client,
            snapshotter=config.snapshotter,
            pinned_refs=[config.sandbox_image],
            usage_period=float(config.image_fs_info_period),
        )
        self.runtime = rt = build_runtime(
            config=config, client=self.client, health=self.health, images=self.images
        )
        reconciler = Reconciler(
            containers=rt.containers,
            sandboxes=rt.sandboxes,
            tasks=self.client.tasks,
            monitors=rt.monitors,
            submit=rt.dispatcher.submit,
        )
        self.events = EventStream(
            client=self.client,
            submit_oom=rt.dispatcher.submit,
            image_changed=self.images.refresh,
            reconcile=reconciler.run,
        )
        self.metrics_server: MetricsServer | None = None
        if config.metrics_address:
            self.metrics_server = MetricsServer(rt.metrics, address=config.metrics_address)
        self._bind_metrics(rt.metrics)
        self.initialized = False
        self._lock_fd: int | None = None
        self.server = CRIServer(
            socket_path=Path(config.socket),
            runtime_impls=bind(rt, RUNTIME_RPCS),
            image_impls=bind(rt, IMAGE_RPCS),
            is_ready=lambda: self.initialized,
        )

    def _bind_metrics(self, metrics: Metrics) -> None:
        rt = self.runtime
        readers = {
            "pycri_backoff_queue_depth": lambda: rt.dispatcher.stats().queued_events,
            "pycri_backoff_ids": lambda: rt.dispatcher.stats().ids_in_backoff,
            "pycri_event_retries_total": lambda: sum(rt.dispatcher.stats().retries.values()),
            "pycri_exit_monitors": lambda: len(rt.monitors),
            "pycri_network_ready": lambda: float(rt.network.status()[0]),
            "pycri_cni_del_failures_total": lambda: rt.network.teardown_failures,
            "pycri_event_subscribers_dropped_total": (
                lambda: rt.events.broadcaster.dropped_subscribers
            ),
            "pycri_containerd_reconnects_total": lambda: self.events.reconnects,
            "pycri_streams_open": lambda: rt.streams.stats().sessions_open,
            "pycri_streams_total": lambda: sum(rt.streams.stats().sessions_total.values()),
            "pycri_stream_received_bytes_total": lambda: rt.streams.stats().bytes_in,
            "pycri_stream_sent_bytes_total": lambda: rt.streams.stats().bytes_out,
            "pycri_stream_errors_total": lambda: rt.streams.stats().errors,
            "pycri_sandboxes": lambda: len(rt.sandboxes),
            "pycri_containers": lambda: len(rt.containers),
            "pycri_undo_pending": lambda: len(rt.undo),
        }
        for name, read in readers.items():
            metrics.bind(name, read)

    async def start(self) -> None:
        # Refuse a live CRI socket and a second daemon on the same dirs before touching
        # containerd: a refused daemon must not adopt, let alone stop, another's containerd.
        await asyncio.to_thread(prepare_socket, Path(self.config.socket))
        for path in (self.config.root, self.config.state):
            await asyncio.to_thread(Path(path).mkdir, parents=True, exist_ok=True)
        self._lock_fd = await asyncio.to_thread(_lock_state_dir, self.runtime.paths.lock_file)
        if self.managed is not None:
            await self.managed.start()
        await self.client.ensure_namespace(timeout=10)
        await self.runtime.handlers.probe()  # before any pod can ask for one
        for handler in self.runtime.handlers.all():
            if handler.error:
                log.warning(
                    "runtime handler unusable; pods asking for it are refused",
                    extra={"handler": handler.name, "error": handler.error},
                )
        await self.health.probe()
        self.health.start()
        await self.images.refresh_all()
        self.images.usage.start()  # ImageFsInfo's figure, walked in the background
        self.runtime.dispatcher.start()
        self.runtime.undo.start()
        # Subscribe before recovery, so nothing emitted during recovery is lost.
        self.events.start()
        async with asyncio.timeout(10):
            await self.events.subscribed.wait()
        await self.runtime.streams.start()  # before any RPC can hand out one of its URLs
        await self.server.start()  # answers "not initialized" until recovery is done
        await self.runtime.pod_cidr.load()
        await self.runtime.network.start()  # CNI config loaded before the first Status
        await recover(self.runtime)
        if self.metrics_server is not None:
            await self.metrics_server.start()
        self.initialized = True
        log.info(
            "pycri is ready",
            extra={
                "socket": self.config.socket,
                "containerd": self.config.containerd_socket,
                "managed": self.managed is not None,
                "security": self.runtime.security.summary(),
                "runtime_handlers": ",".join(h.name for h in self.runtime.handlers.usable()),
            },
        )

    async def stop(self) -> None:
        log.info("pycri is shutting down")
        self.initialized = False
        with contextlib.suppress(Exception):
            await self.server.stop()
        if self.metrics_server is not None:
            await self.metrics_server.stop()
        await self.events.stop()
        await self.runtime.streams.stop()  # ends sessions: their exec processes are deleted
        await self.runtime.pulls.close()
        await self.runtime.network.stop()
        await self.runtime.monitors.stop()
        await self.runtime.dispatcher.stop()
        await self.runtime.undo.stop()
        await self.images.usage.stop()
        for container in self.runtime.containers.all():
            if container.io is not None:  # keep the FIFOs: the containers live on
                await container.io.detach()
        await self.health.stop()
        await self.client.close()
        if self.managed is not None and self._lock_fd is not None:
            await self.managed.stop()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Checkpoint fsyncs, sandbox files and stats run in threads; the default pool (cores + 4)
    # would let a burst of exits queue their fsyncs behind each other.
    loop.set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="pycri-io"))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(config)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.stop()
