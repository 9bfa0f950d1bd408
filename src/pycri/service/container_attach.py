"""Attach: answer with a URL on the streaming server for the running container's own stdio.

Checked here, before any URL exists: the container exists (NOT_FOUND), runs
(FAILED_PRECONDITION), and the request is one kubelet would send (at least one stream; no
stderr with a TTY: ``register_attach``). The request is registered under the container's
full ID; the attach itself happens when the client connects (``service/streaming.py``).
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.errors import FailedPrecondition
from pycri.service.context import RuntimeContext


async def attach(rt: RuntimeContext, request: api_pb2.AttachRequest) -> api_pb2.AttachResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING:
        raise FailedPrecondition(f"container {container.id} is not running")
    resolved = api_pb2.AttachRequest()
    resolved.CopyFrom(request)
    resolved.container_id = container.id
    return api_pb2.AttachResponse(url=rt.streams.register_attach(resolved))
