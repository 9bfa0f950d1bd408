"""RemoveContainer: force-stop if needed, then delete the containerd container, snapshot,
files and checkpoint, and forget it. Idempotent: an unknown ID is a success.

The ``removing`` fence (``Container.begin_remove``) is set before anything else, so a
concurrent Start is refused from then on; a container being started is refused.
The status checkpoint goes last, so a crash midway leaves a container that recovery still
knows and a repeated Remove finishes.
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
    if not await container.begin_remove():
        return  # another Remove is on it
    try:
        await stop_container(rt, container, timeout=0)
        await records.kill_and_delete_task(rt, container.id)
        await records.delete_record(rt, container.id)
        if container.io is not None:
            await container.io.close()
            container.io = None
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
