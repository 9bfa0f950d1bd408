"""GetContainerEvents and the building of its events from the stores."""

from __future__ import annotations

from collections.abc import AsyncIterator

from cri_api.v1 import api_pb2

from pycri.errors import Unavailable
from pycri.events.container_events import SubscriberTooSlow
from pycri.service.container_status import container_status_message
from pycri.service.context import RuntimeContext
from pycri.service.sandbox_status import sandbox_status_message

EVENT_TYPES = {
    "CREATED": api_pb2.CONTAINER_CREATED_EVENT,
    "STARTED": api_pb2.CONTAINER_STARTED_EVENT,
    "STOPPED": api_pb2.CONTAINER_STOPPED_EVENT,
    "DELETED": api_pb2.CONTAINER_DELETED_EVENT,
}


def build_event(
    rt: RuntimeContext, object_id: str, kind: str, *, sandbox_id: str | None = None
) -> api_pb2.ContainerEventResponse:
    """Snapshot the pod of ``object_id`` (a container or a sandbox) into an event.

    ``sandbox_id`` must be given for a container already gone from its store (DELETED).
    """
    if sandbox_id is None:
        container = rt.containers.find(object_id) if object_id not in rt.sandboxes else None
        sandbox_id = container.metadata.sandbox_id if container is not None else object_id
    event = api_pb2.ContainerEventResponse(
        container_id=object_id,
        container_event_type=EVENT_TYPES[kind],
        created_at=rt.container_events.next_timestamp(),
    )
    sandbox = rt.sandboxes.find(sandbox_id)
    if sandbox is not None:
        event.pod_sandbox_status.CopyFrom(sandbox_status_message(sandbox))
        event.containers_statuses.extend(
            container_status_message(rt, c) for c in rt.containers.in_sandbox(sandbox.id)
        )
    return event


async def get_container_events(
    rt: RuntimeContext, request: api_pb2.GetEventsRequest
) -> AsyncIterator[api_pb2.ContainerEventResponse]:
    try:
        async for event in rt.container_events.subscribe():
            yield event
    except SubscriberTooSlow as err:
        raise Unavailable(str(err)) from None
