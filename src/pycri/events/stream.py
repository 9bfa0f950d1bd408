"""containerd's event stream: what the exit monitors don't carry (OOMs, image changes), and
the reconnect + reconcile loop around it.

- Subscribes (namespace ``k8s.io`` checked by hand: containerd's filters cannot say
  "namespace AND topic") to ``/tasks/oom`` and ``/images/...``. OOMs go to the dispatcher
  under the container's ID, so an OOM and the exit of one container are serialized and
  kept in order; image events refresh the image store.
- When the stream breaks (containerd restarted or the connection dropped) the subscriber
  waits for containerd to answer again, subscribes again, and runs ``reconcile``: every
  known object is checked against its task, so an exit missed while disconnected is
  handled (the monitors re-issue their Waits on their own as well).
- A slow safety net runs ``reconcile`` every few minutes regardless: containerd has been
  known to lose exit deliveries (reference §6.1 item 3); this bounds such a loss.
- Undecodable or unknown events are logged and dropped; they never stop the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import ContainerdError
from pycri.containerd.types import Envelope, ImageEvent, TaskOOMEvent
from pycri.events.types import TaskOOM

log = logging.getLogger(__name__)

FILTERS = ('topic=="/tasks/oom"', 'topic~="/images/"')
RESUBSCRIBE_DELAY_MAX = 5.0
SAFETY_NET_INTERVAL = 180.0


class EventStream:
    def __init__(
        self,
        *,
        client: ContainerdClient,
        submit_oom: Callable[[str, TaskOOM], Awaitable[object]],
        image_changed: Callable[[str], Awaitable[object]],
        reconcile: Callable[[], Awaitable[object]],
        safety_net_interval: float = SAFETY_NET_INTERVAL,
    ) -> None:
        self._client = client
        self._submit_oom = submit_oom
        self._image_changed = image_changed
        self._reconcile = reconcile
        self._safety_net_interval = safety_net_interval
        self._tasks: list[asyncio.Task[None]] = []
        self.subscribed = asyncio.Event()
        self.reconnects = 0

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._run(), name="containerd-events"),
            asyncio.create_task(self._safety_net(), name="reconcile-safety-net"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        delay = 0.2
        first = True
        while True:
            try:
                stream = self._client.events.subscribe(FILTERS)
                # The subscription is live once the first message could arrive; mark it
                # now and reconcile after a re-subscribe (exits missed while away).
                self.subscribed.set()
                if not first:
                    self.reconnects += 1
                    log.info("re-subscribed to containerd events; reconciling")
                    await self._reconcile_safely()
                first = False
                delay = 0.2
                async for envelope in stream:
                    if isinstance(envelope, ValueError):
                        log.warning(
                            "dropped undecodable containerd event", extra={"error": str(envelope)}
                        )
                        continue
                    await self._dispatch(envelope)
                log.warning("containerd event stream ended; subscribing again")
            except ContainerdError as err:
                self.subscribed.clear()
                log.warning(
                    "containerd event stream broke; subscribing again",
                    extra={"error": str(err), "delay_s": delay},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESUBSCRIBE_DELAY_MAX)

    async def _dispatch(self, envelope: Envelope) -> None:
        if envelope.namespace != self._client.namespace:
            return
        event = envelope.event
        try:
            if isinstance(event, TaskOOMEvent):
                log.info("container OOM event", extra={"container_id": event.container_id})
                await self._submit_oom(event.container_id, TaskOOM(container_id=event.container_id))
            elif isinstance(event, ImageEvent) and event.name:
                await self._image_changed(event.name)
        except Exception as err:  # a failing handler must never stop the loop
            log.warning(
                "containerd event handling failed",
                extra={"topic": envelope.topic, "error": repr(err)},
            )

    async def _reconcile_safely(self) -> None:
        try:
            await self._reconcile()
        except Exception:
            log.exception("reconcile failed")

    async def _safety_net(self) -> None:
        while True:
            await asyncio.sleep(self._safety_net_interval)
            await self._reconcile_safely()
