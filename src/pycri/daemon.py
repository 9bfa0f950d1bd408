"""The pycri daemon: brings up containerd (managed or given), the runtime, then the CRI server.

Start order (reference §1.1): containerd reachable → namespace ``k8s.io`` → health prober →
CRI server listening but refusing RPCs → (recovery, event monitor) → initialized. Shutdown
runs it backwards: stop serving, stop the prober, close the client, stop the managed
containerd (running containers survive in their shims).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from pathlib import Path

from pycri.api.server import CRIServer
from pycri.config import Config
from pycri.containerd.client import ContainerdClient
from pycri.containerd.health import ContainerdHealth
from pycri.containerd.supervisor import ManagedContainerd
from pycri.service.context import RuntimeContext
from pycri.service.registry import IMAGE_RPCS, RUNTIME_RPCS, bind

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.managed: ManagedContainerd | None = None
        if config.managed_containerd:
            self.managed = ManagedContainerd(
                root=Path(config.root), state=Path(config.state), binary=config.containerd_binary
            )
        self.client = ContainerdClient(config.containerd_socket)
        self.health = ContainerdHealth(self.client)
        self.runtime = RuntimeContext(config=config, containerd=self.client, health=self.health)
        self.initialized = False
        self.server = CRIServer(
            socket_path=Path(config.socket),
            runtime_impls=bind(self.runtime, RUNTIME_RPCS),
            image_impls=bind(self.runtime, IMAGE_RPCS),
            is_ready=lambda: self.initialized,
        )

    async def start(self) -> None:
        for path in (self.config.root, self.config.state):
            await asyncio.to_thread(Path(path).mkdir, parents=True, exist_ok=True)
        if self.managed is not None:
            await self.managed.start()
        await self.client.ensure_namespace(timeout=10)
        await self.health.probe()
        self.health.start()
        await self.server.start()
        self.initialized = True
        log.info(
            "pycri is ready",
            extra={
                "socket": self.config.socket,
                "containerd": self.config.containerd_socket,
                "managed": self.managed is not None,
            },
        )

    async def stop(self) -> None:
        log.info("pycri is shutting down")
        self.initialized = False
        with contextlib.suppress(Exception):
            await self.server.stop()
        await self.health.stop()
        await self.client.close()
        if self.managed is not None:
            await self.managed.stop()


async def serve(config: Config) -> None:
    """Run until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(config)
    try:
        await daemon.start()
        await stop.wait()
    finally:
        await daemon.stop()
