"""GetContainerEvents: lifecycle events broadcast to every subscriber (kubelet's evented PLEG).

Each event carries the pod's sandbox status and all its container statuses, snapshotted when
the event is made, with a ``created_at`` that is strictly increasing across all events
(kubelet keeps the newest status per pod by it).

Every subscriber has its own bounded queue (broadcast, not a shared channel: containerd's
plugin shares one channel, so two subscribers steal each other's events). Publishing never
blocks and never waits for a subscriber: one that falls behind by a full queue is dropped
(its stream ends with an error, so kubelet reconnects and relists) and counted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

from cri_api.v1 import api_pb2

log = logging.getLogger(__name__)

SUBSCRIBER_BUFFER = 1000


class SubscriberTooSlow(Exception):
    """This subscriber's buffer overflowed; it must reconnect and relist."""


class _Subscriber:
    def __init__(self, buffer: int) -> None:
        self.queue: asyncio.Queue[api_pb2.ContainerEventResponse | None] = asyncio.Queue(buffer)
        self.dropped = False


class ContainerEventBroadcaster:
    def __init__(self, *, buffer: int = SUBSCRIBER_BUFFER) -> None:
        self._buffer = buffer
        self._subscribers: set[_Subscriber] = set()
        self._last_created_at = 0
        self.dropped_subscribers = 0
        self.published = 0

    def next_timestamp(self) -> int:
        now = time.time_ns()
        self._last_created_at = max(now, self._last_created_at + 1)
        return self._last_created_at

    def publish(self, event: api_pb2.ContainerEventResponse) -> None:
        self.published += 1
        for sub in list(self._subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._subscribers.discard(sub)
                sub.dropped = True
                self.dropped_subscribers += 1
                log.warning("container event subscriber too slow; dropped it")
                # wake the reader so it ends its stream
                _ = sub.queue.get_nowait()
                sub.queue.put_nowait(None)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    async def subscribe(self) -> AsyncIterator[api_pb2.ContainerEventResponse]:
        sub = _Subscriber(self._buffer)
        self._subscribers.add(sub)
        try:
            while True:
                event = await sub.queue.get()
                if event is None:
                    raise SubscriberTooSlow(
                        "container event stream fell behind; reconnect and relist"
                    )
                yield event
        finally:
            self._subscribers.discard(sub)
