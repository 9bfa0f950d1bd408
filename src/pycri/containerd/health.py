"""Continuous containerd health probing, so readiness is known without a call per request.

``Status`` is called by kubelet every few seconds and must answer from memory even while
containerd hangs (reference §7 behaviour 63). A background task probes containerd's
``Version`` once per ``interval`` with a short deadline and keeps the answer; watchers can
await the next transition (the event monitor uses it to reconnect and reconcile).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import ContainerdError

log = logging.getLogger(__name__)


class ContainerdHealth:
    def __init__(
        self, client: ContainerdClient, *, interval: float = 0.5, timeout: float = 1.0
    ) -> None:
        self._client = client
        self.interval = interval
        self.timeout = timeout
        self.healthy = False
        self.reason = "containerd not probed yet"
        self.version = ""
        self.changed_at = time.monotonic()
        self._changed = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    async def probe(self) -> bool:
        try:
            resp = await self._client.version(timeout=self.timeout)
        except ContainerdError as err:
            await self._set(False, f"containerd at {self._client.address} is not answering: {err}")
        except TimeoutError:
            await self._set(False, f"containerd at {self._client.address} timed out")
        else:
            self.version = resp.version
            await self._set(True, "")
        return self.healthy

    async def _set(self, healthy: bool, reason: str) -> None:
        self.reason = reason
        if healthy == self.healthy:
            return
        self.healthy = healthy
        self.changed_at = time.monotonic()
        if healthy:
            log.info("containerd is reachable", extra={"version": self.version})
        else:
            log.warning("containerd is unreachable", extra={"reason": reason})
        async with self._changed:
            self._changed.notify_all()

    async def wait_healthy(self, healthy: bool = True) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.healthy == healthy)

    async def _run(self) -> None:
        while True:
            await self.probe()
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="containerd-health")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
