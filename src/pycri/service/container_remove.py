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

The task: once Stop has returned, the exit handler is deleting the container's task (it
records the exit first, then deletes). Remove never races that delete — two concurrent
deletes of one task could leave its shim running with no task record — but takes the ID
over from the dispatcher (``EventDispatcher.take_over``): the handling under way ends first,
then, only if the task may still exist (the handler failed, is backing off, or the container
was found at recovery), Remove kills and deletes it itself; when the block succeeds the
ID's pending events are dropped, because their teardown is done. The containerd record and
the snapshot are deleted concurrently (neither depends on the other), and the files in one
worker-thread hop.
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
        async with rt.dispatcher.take_over(container.id):
            await _remove(rt, container)
    except BaseException:
        await container.end_remove()
        raise
    rt.containers.remove(container.id)
    rt.container_names.release(container.metadata.name, container.id)
    rt.faults.forget(container.id)
    rt.events.emit(container.id, DELETED, sandbox_id=container.metadata.sandbox_id)
    log.info("container removed", extra={"container_id": container.id})


async def _remove(rt: RuntimeContext, container: Container) -> None:
    if container.task.may_exist:
        await records.kill_and_delete_task(rt, container.id)
        container.task.deleted()
    await records.delete_record(rt, container.id)
    if container.io is not None:
        await container.io.close()
        container.io = None
    await container.retire(f"container {container.id}")
    sandbox = rt.sandboxes.find(container.metadata.sandbox_id)
    cgroup = sandbox.metadata.cgroups_path(container.id) if sandbox is not None else None
    await asyncio.to_thread(_remove_files, rt, container.id, cgroup)


def _remove_files(rt: RuntimeContext, container_id: str, cgroup: str | None) -> None:
    """Blocking: the cgroup if runc left it (its shim died), then the container's dirs."""
    if cgroup is not None:
        records.remove_cgroup_sync(cgroup)
    shutil.rmtree(rt.paths.container_run_dir(container_id), True)
    shutil.rmtree(rt.paths.container_dir(container_id), True)


async def remove_container_rpc(
    rt: RuntimeContext, request: api_pb2.RemoveContainerRequest
) -> api_pb2.RemoveContainerResponse:
    container = rt.containers.find(request.container_id)
    if container is not None:
        await remove_container(rt, container)
    return api_pb2.RemoveContainerResponse()
