"""UpdateContainerResources: new Linux resources into the spec, the running task, the status.

The containerd call happens outside the container's status lock (the exit handler must
never wait behind a slow shim; reference §6.1 item 11); the status update afterwards is
its own short transaction.
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.containerd.errors import NotFoundError
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.oci.resources import linux_resources_to_oci, with_linux_resources
from pycri.service import records
from pycri.service.context import RuntimeContext


async def update_container_resources(
    rt: RuntimeContext, request: api_pb2.UpdateContainerResourcesRequest
) -> api_pb2.UpdateContainerResourcesResponse:
    container = rt.containers.get(request.container_id)
    if container.status.removing:
        raise FailedPrecondition(f"container {container.id} is being removed")
    if not request.HasField("linux"):
        return api_pb2.UpdateContainerResourcesResponse()
    try:
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
        except NotFoundError:
            pass  # exited meanwhile: the spec change is what counts
    await container.set_resources(resources)
    return api_pb2.UpdateContainerResourcesResponse()
