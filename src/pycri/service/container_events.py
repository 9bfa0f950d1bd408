"""Container lifecycle events: the publisher every RPC and the exit handler call, and the
GetContainerEvents RPC that streams them (kubelet's evented PLEG).

An event carries a snapshot of the pod it concerns: the sandbox's status and the statuses
of all its containers, as PodSandboxStatus would answer at that moment (kubelet keeps the
newest per pod by ``created_at``, which the broadcaster keeps strictly increasing). The
snapshot is built only when someone subscribes: with no subscriber, ``emit`` costs a check.
A DELETED container is gone from its store already, so its sandbox ID is passed in.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TypeAlias

from cri_api.v1 import api_pb2

from pycri.errors import Unavailable
from pycri.events.container_events import ContainerEventBroadcaster, SubscriberTooSlow
from pycri.images.store import ImageStore
from pycri.service.container_status import container_status_message
from pycri.service.context import RuntimeContext
from pycri.service.sandbox_status import sandbox_status_message
from pycri.store.container import ContainerStore
from pycri.store.sandbox import SandboxStore

EventType: TypeAlias = api_pb2.ContainerEventType.ValueType
CREATED = api_pb2.CONTAINER_CREATED_EVENT
STARTED = api_pb2.CONTAINER_STARTED_EVENT
STOPPED = api_pb2.CONTAINER_STOPPED_EVENT
DELETED = api_pb2.CONTAINER_DELETED_EVENT


class ContainerEventPublisher:
    def __init__(
        self,
        *,
        sandboxes: SandboxStore,
        containers: ContainerStore,
        images: ImageStore,
        broadcaster: ContainerEventBroadcaster,
    ) -> None:
        self._sandboxes = sandboxes
        self._containers = containers
        self._images = images
        self.broadcaster = broadcaster

    def emit(self, object_id: str, event_type: EventType, *, sandbox_id: str = "") -> None:
        """Publish an event about a container or a sandbox (never blocks)."""
        if not self.broadcaster.subscribers:
            return  # nobody listens: skip building the snapshot
        self.broadcaster.publish(self.build(object_id, event_type, sandbox_id=sandbox_id))

    def build(
        self, object_id: str, event_type: EventType, *, sandbox_id: str = ""
    ) -> api_pb2.ContainerEventResponse:
        if not sandbox_id:
            container = None if object_id in self._sandboxes else self._containers.find(object_id)
            sandbox_id = container.metadata.sandbox_id if container is not None else object_id
        event = api_pb2.ContainerEventResponse(
            container_id=object_id,
            container_event_type=event_type,
            created_at=self.broadcaster.next_timestamp(),
        )
        sandbox = self._sandboxes.find(sandbox_id)
        if sandbox is not None:
            event.pod_sandbox_status.CopyFrom(sandbox_status_message(sandbox))
            event.containers_statuses.extend(
                container_status_message(self._images, c)
                for c in self._containers.in_sandbox(sandbox.id)
            )
        return event


async def get_container_events(
    rt: RuntimeContext, request: api_pb2.GetEventsRequest
) -> AsyncIterator[api_pb2.ContainerEventResponse]:
    try:
        async for event in rt.events.broadcaster.subscribe():
            yield event
    except SubscriberTooSlow as err:
        raise Unavailable(str(err)) from None
