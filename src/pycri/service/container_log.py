"""ReopenContainerLog: after kubelet rotated the log file, write to a new one.

Only for RUNNING containers; otherwise an error, and no file is created (behaviour 61).
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.errors import FailedPrecondition
from pycri.service.context import RuntimeContext


async def reopen_container_log(
    rt: RuntimeContext, request: api_pb2.ReopenContainerLogRequest
) -> api_pb2.ReopenContainerLogResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING or container.io is None:
        raise FailedPrecondition(f"container {container.id} is not running")
    await container.io.reopen_log()
    return api_pb2.ReopenContainerLogResponse()
