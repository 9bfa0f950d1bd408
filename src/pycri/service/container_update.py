"""UpdateContainerResources: new Linux resources into the spec, the running task, the status.

The resources are validated first (``validate_linux_resources``: what runc would refuse is
an INVALID_ARGUMENT here, not an UNKNOWN from the task update). Only CREATED and RUNNING
containers are updated; an EXITED one (or one whose task turns out to have exited: the
10-40 ms between an exit and its recording) is a FAILED_PRECONDITION, as a container that is
being removed is.

The containerd call happens outside the container's status lock (the exit handler must
never wait behind a slow shim; reference §6.1 item 11); the status update afterwards is
its own short transaction.
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.containerd.errors import ContainerdError, NotFoundError
from pycri.containerd.types import TaskStatus
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.oci.resources import (
    linux_resources_to_oci,
    validate_linux_resources,
    with_linux_resources,
)
from pycri.service import records
from pycri.service.context import RuntimeContext
from pycri.store.container import Container

UPDATABLE = (api_pb2.CONTAINER_CREATED, api_pb2.CONTAINER_RUNNING)


def _check_updatable(container: Container) -> None:
    status = container.status
    if status.removing:
        raise FailedPrecondition(f"container {container.id} is being removed")
    if status.state not in UPDATABLE:
        raise FailedPrecondition(
            f"container {container.id} is {api_pb2.ContainerState.Name(status.state)}: only "
            "created or running containers can be updated"
        )


async def _task_exited(rt: RuntimeContext, container_id: str) -> bool:
    try:
        task = await rt.containerd.tasks.get(container_id, timeout=10)
    except NotFoundError:
        return True
    except ContainerdError:
        return False
    return task.status is not TaskStatus.RUNNING


async def update_container_resources(
    rt: RuntimeContext, request: api_pb2.UpdateContainerResourcesRequest
) -> api_pb2.UpdateContainerResourcesResponse:
    container = rt.containers.get(request.container_id)
    _check_updatable(container)
    if not request.HasField("linux"):
        return api_pb2.UpdateContainerResourcesResponse()
    try:
        validate_linux_resources(request.linux, host=rt.host_features)
        resources = linux_resources_to_oci(request.linux, host=rt.host_features)
        record = await rt.containerd.containers.get(container.id, timeout=30)
        spec = with_linux_resources(
            records.record_spec(record), request.linux, host=rt.host_features
        )
    except ValueError as err:
        raise InvalidArgument(f"resources: {err}") from None
    await rt.containerd.containers.update_spec(container.id, spec, timeout=30)
    if container.status.state == api_pb2.CONTAINER_RUNNING:
        try:
            await rt.containerd.tasks.update_resources(container.id, resources, timeout=30)
        except ContainerdError:
            if container.status.state == api_pb2.CONTAINER_EXITED or await _task_exited(
                rt, container.id
            ):
                raise FailedPrecondition(
                    f"container {container.id} exited while its resources were updated"
                ) from None
            raise
    _check_updatable(container)  # exited or being removed meanwhile
    await container.set_resources(resources)
    return api_pb2.UpdateContainerResourcesResponse()
