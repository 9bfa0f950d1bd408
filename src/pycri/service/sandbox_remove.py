"""RemovePodSandbox: stop the pod (forced), remove its containers, then the sandbox itself.

Idempotent: an unknown ID is a success. The pod is closed first (inside ``stop_sandbox``:
no new container can be created or started in it, and creates under way are waited for),
so the containers removed here are all it has. Order matters for crash safety: containers first,
then the sandbox's files, its task and containerd record, and last the in-memory entry and
its name, so a crash midway leaves a sandbox that a repeated Remove (or recovery) finishes.
The pause task is deleted by the exit handler once StopPodSandbox killed it; Remove takes the
ID over from the dispatcher and deletes it itself only if that has not happened (see
``container_remove``), so the two deletes never race and no pending teardown is dropped.
A pod network whose CNI DEL keeps failing blocks removal only for a few calls
(``sandbox_stop.GIVE_UP_AFTER``); then what may leak is logged and the removal proceeds.
"""

from __future__ import annotations

import asyncio
import logging

from cri_api.v1 import api_pb2

from pycri.service import records
from pycri.service.container_events import DELETED
from pycri.service.container_remove import remove_container
from pycri.service.context import RuntimeContext
from pycri.service.sandbox_files import SandboxFiles, remove_sandbox_files_sync
from pycri.service.sandbox_stop import stop_sandbox
from pycri.store.sandbox import Sandbox

log = logging.getLogger(__name__)


def _remove_files(rt: RuntimeContext, sandbox: Sandbox) -> None:
    """Blocking: the pause task's cgroup if runc left it (its shim died), then the files."""
    records.remove_cgroup_sync(sandbox.metadata.cgroups_path(sandbox.id))
    remove_sandbox_files_sync(SandboxFiles(rt.paths.sandbox_dir(sandbox.id)))


async def remove_pod_sandbox(
    rt: RuntimeContext, request: api_pb2.RemovePodSandboxRequest
) -> api_pb2.RemovePodSandboxResponse:
    sandbox = rt.sandboxes.find(request.pod_sandbox_id)
    if sandbox is None:
        return api_pb2.RemovePodSandboxResponse()
    await stop_sandbox(rt, sandbox)
    await asyncio.gather(*(remove_container(rt, c) for c in rt.containers.in_sandbox(sandbox.id)))
    async with rt.dispatcher.take_over(sandbox.id):  # as RemoveContainer: never race its delete
        if sandbox.task.may_exist:
            await records.kill_and_delete_task(rt, sandbox.id, stray_shim=True)
            sandbox.task.deleted()
        await records.delete_record(rt, sandbox.id)
        await sandbox.retire(f"sandbox {sandbox.id}")  # no late write re-creates its directory
        await asyncio.to_thread(_remove_files, rt, sandbox)  # one worker-thread hop
    rt.events.emit(sandbox.id, DELETED)  # while its status can still be read
    rt.sandboxes.remove(sandbox.id)
    rt.sandbox_names.release(sandbox.metadata.name, sandbox.id)
    rt.faults.forget(sandbox.id)
    log.info("sandbox removed", extra={"sandbox_id": sandbox.id})
    return api_pb2.RemovePodSandboxResponse()
