"""ReopenContainerLog: after kubelet rotated the log file, write to a new one.

Only for RUNNING containers; otherwise an error, and no file is created (behaviour 61).
A new file that cannot be opened (the log directory was deleted, a link was put in its
place) is a FAILED_PRECONDITION naming the log path; the old file stays in use.
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.cio.container_io import ContainerIOClosedError
from pycri.errors import FailedPrecondition
from pycri.service.context import RuntimeContext


async def reopen_container_log(
    rt: RuntimeContext, request: api_pb2.ReopenContainerLogRequest
) -> api_pb2.ReopenContainerLogResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING or container.io is None:
        raise FailedPrecondition(f"container {container.id} is not running")
    try:
        await container.io.reopen_log()
    except ContainerIOClosedError:
        raise FailedPrecondition(f"container {container.id} is not running") from None
    except OSError as err:
        raise FailedPrecondition(
            f"container {container.id}: cannot reopen its log {container.metadata.log_path}: "
            f"{err.strerror or err}"
        ) from None
    return api_pb2.ReopenContainerLogResponse()
