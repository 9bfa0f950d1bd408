"""StartContainer: create the task with the container's IO, issue Wait, start it, record
RUNNING, and hand the task to its exit monitor.

Guards: the container must be CREATED and not already starting or being removed (the
``starting`` flag fences a concurrent Start/Remove), and its sandbox READY and not being
stopped or removed. A Stop that arrives meanwhile waits for the Start to end
(``Container.start_settled``) and then stops what it started. On any failure
the container becomes EXITED with exit code 128 and reason ``StartError`` (not CREATED
again), and its task is deleted, as kubelet expects (reference §2.2).

Order: StartedAt is persisted before the monitor starts, so an instant exit (``true``)
still ends EXITED with StartedAt ≤ FinishedAt (behaviour 30).
"""

from __future__ import annotations

import logging

from cri_api.v1 import api_pb2

from pycri.cio.container_io import ContainerIO
from pycri.errors import FailedPrecondition
from pycri.events.types import Kind
from pycri.service import records
from pycri.service.container_events import STARTED
from pycri.service.context import RuntimeContext
from pycri.service.ids import now_ns
from pycri.store.container import Container

log = logging.getLogger(__name__)


async def start_container(
    rt: RuntimeContext, request: api_pb2.StartContainerRequest
) -> api_pb2.StartContainerResponse:
    container = rt.containers.get(request.container_id)
    await container.begin_start()
    try:
        await _start(rt, container)
    except BaseException as err:
        await _record_start_error(rt, container, err)
        raise
    finally:
        await container.end_start()
    rt.events.emit(container.id, STARTED)
    return api_pb2.StartContainerResponse()


async def _start(rt: RuntimeContext, container: Container) -> None:
    sandbox = rt.sandboxes.find(container.metadata.sandbox_id)
    if sandbox is None:
        raise FailedPrecondition(
            f"sandbox {container.metadata.sandbox_id} of container {container.id} is gone"
        )
    sandbox.check_open()
    config = container.metadata.config
    client = rt.containerd
    try:
        io = await ContainerIO.create(
            container_id=container.id,
            fifo_dir=str(rt.paths.container_io_dir(container.id)),
            stdin=config.stdin,
            tty=config.tty,
            log_path=container.metadata.log_path,
            log_dir=sandbox.metadata.config.log_directory,
            max_line_size=rt.config.max_container_log_line_size,
        )
    except OSError as err:  # the log file's place became a link, a file, or went away
        raise FailedPrecondition(
            f"container {container.id}: cannot open its log {container.metadata.log_path}: "
            f"{err.strerror or err}"
        ) from None
    container.io = io
    mounts = container.rootfs or await client.snapshots.mounts(rt.config.snapshotter, container.id)
    container.task.creating()
    await client.tasks.create(
        container_id=container.id,
        rootfs=mounts,
        stdin=io.paths.stdin,
        stdout=io.paths.stdout,
        stderr=io.paths.stderr,
        terminal=io.paths.terminal,
        timeout=60,
    )
    wait = await rt.monitors.issue_wait(container.id)
    try:
        # Taken before Start: the process cannot exit before it, so StartedAt ≤ FinishedAt.
        started_at = now_ns()
        pid = await client.tasks.start(container.id, timeout=60)
        await container.record_started(pid=pid, started_at=started_at)
    except BaseException:
        wait.cancel()
        raise
    rt.monitors.watch(kind=Kind.CONTAINER, object_id=container.id, pid=pid, wait=wait)
    log.info("container started", extra={"container_id": container.id, "pid": pid})


async def _record_start_error(rt: RuntimeContext, container: Container, err: BaseException) -> None:
    message = getattr(err, "message", None) or str(err) or type(err).__name__
    log.warning("container start failed", extra={"container_id": container.id, "error": message})
    try:
        await records.kill_and_delete_task(rt, container.id)
        container.task.deleted()
    except Exception as cleanup_err:
        log.error(
            "deleting the task of a failed start failed",
            extra={"container_id": container.id, "error": repr(cleanup_err)},
        )
    if container.io is not None:
        await container.io.close()
        container.io = None
    await container.record_start_error(message=message, finished_at=now_ns())
