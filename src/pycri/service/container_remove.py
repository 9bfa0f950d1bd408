"""RemoveContainer: force-stop if needed, then delete the containerd container, snapshot,
files and checkpoint, and forget it. Idempotent: an unknown ID is a success.

The ``removing`` fence (``Container.begin_remove``) is set before anything else (after a
Start under way has ended), so a concurrent Start is refused from then on. The status
checkpoint goes last, so a crash midway leaves a container that recovery still knows and a
repeated Remove finishes. Its cgroup is removed after its task (runc does that at delete,
unless the shim died with containerd in the middle of the task's creation). Just before its
directories are deleted the container is retired (``Transactional.retire``): a late status
change (an exit-handler retry, an OOM event, an UpdateContainerResources that began before)
can then no longer write its checkpoint, so nothing re-creates ``ROOT/containers/<id>/``
after the removal.
"""

from __future__ import annotations

import asyncio
import logging
import shutil

from cri_api.v1 import api_pb2

from pycri.service import records
from pycri.service.container_events import DELETED
from pycri.service.container_stop import stop_container
from pycri.service.context import RuntimeContext
from pycri.store.container import Container

log = logging.getLogger(__name__)


async def remove_container(rt: RuntimeContext, container: Container) -> None:
    await container.start_settled.wait()
    if not await container.begin_remove():
        return  # another Remove is on it
    try:
        await stop_container(rt, container, timeout=0)
        await records.kill_and_delete_task(rt, container.id)
        sandbox = rt.sandboxes.find(container.metadata.sandbox_id)
        if sandbox is not None:
            await records.remove_cgroup_of(sandbox.metadata.cgroups_path(container.id))
        await records.delete_record(rt, container.id)
        if container.io is not None:
            await container.io.close()
            container.io = None
        await container.retire(f"container {container.id}")
        await asyncio.to_thread(shutil.rmtree, rt.paths.container_run_dir(container.id), True)
        await asyncio.to_thread(shutil.rmtree, rt.paths.container_dir(container.id), True)
    except BaseException:
        await container.end_remove()
        raise
    rt.containers.remove(container.id)
    rt.container_names.release(container.metadata.name, container.id)
    rt.dispatcher.remove(container.id)
    rt.faults.forget(container.id)
    rt.events.emit(container.id, DELETED, sandbox_id=container.metadata.sandbox_id)
    log.info("container removed", extra={"container_id": container.id})


async def remove_container_rpc(
    rt: RuntimeContext, request: api_pb2.RemoveContainerRequest
) -> api_pb2.RemoveContainerResponse:
    container = rt.containers.find(request.container_id)
    if container is not None:
        await remove_container(rt, container)
    return api_pb2.RemoveContainerResponse()
