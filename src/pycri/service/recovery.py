"""Recovery at start: rebuild the stores from containerd and the status checkpoints, then
reconcile every object with its task (reference §4, with the REQ fixes).

Order (design.md "Recovery at start"): the event stream is subscribed before this runs;
sandboxes first, then containers; each object is added to its store (and its name
re-reserved) *before* its monitor starts or its exit is handed over, so an exit that
happens during recovery is never lost (containerd issue #10390). RPCs are served only after.

Container mapping (checkpoint state, task):

    no task      CREATED → CREATED; RUNNING → EXITED 255 Unknown; EXITED → kept;
                 lost checkpoint → EXITED 255 Unknown
    created      CREATED → task deleted, CREATED; otherwise → UNKNOWN
    running      RUNNING → monitored, IO re-attached; CREATED/lost → RUNNING (StartedAt
                 now), monitored; EXITED → UNKNOWN (a stop makes it EXITED)
    stopped      exit handed to the dispatcher (exit code and time from containerd;
                 the first recorded exit wins), which persists it, then deletes the task
    other/error  UNKNOWN

Sandboxes: pause task running → READY and monitored; gone → NOTREADY; stopped/other →
NOTREADY, task deleted; lookup error → UNKNOWN. Network: a READY pod whose netns pin is
gone is re-pinned from its pause process, and its CNI attachment CHECKed in the background
(logged only); a stopped pod whose pin is gone (reboot) reports no IP, and its
StopPodSandbox still runs CNI DEL (with an empty CNI_NETNS) when CNI set it up. A missing
or corrupt checkpoint or metadata never stops the start: it is logged, and the object
rebuilt or skipped.

Half-made objects (an intent in the undo journal, ``service/undo.py``: a create that never
completed, or whose rollback failed) are never loaded: their records are skipped, their
names stay free, and their cleanup is handed to the journal once everything else is in
place. An object's directory is (re)made before its checkpoint is rewritten, since the
checkpoint writer never creates one.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from pathlib import Path

from cri_api.v1 import api_pb2

from pycri.cio.container_io import ContainerIO
from pycri.cio.fifo import StdioPaths
from pycri.containerd.errors import ContainerdError, NotFoundError
from pycri.containerd.types import TaskInfo, TaskStatus
from pycri.events.types import Kind, TaskExit
from pycri.net.netns import is_pinned
from pycri.service import records
from pycri.service.context import RuntimeContext
from pycri.service.records import Record
from pycri.store import checkpoint
from pycri.store.container import (
    REASON_UNKNOWN,
    UNKNOWN_EXIT_CODE,
    Container,
    ContainerMetadata,
    ContainerStatus,
)
from pycri.store.sandbox import Sandbox, SandboxMetadata, SandboxState, SandboxStatus

log = logging.getLogger(__name__)

LOAD_TIMEOUT = 10.0


async def _task(rt: RuntimeContext, object_id: str) -> TaskInfo | None:
    """The task's record, None when there is no task; raises on other errors."""
    try:
        return await rt.containerd.tasks.get(object_id, timeout=LOAD_TIMEOUT)
    except NotFoundError:
        return None


async def _load_sandbox(rt: RuntimeContext, record: Record) -> Sandbox | None:
    try:
        metadata = SandboxMetadata.from_json(records.record_metadata(record))
    except (KeyError, ValueError) as err:
        log.error(
            "skipping sandbox with unreadable metadata", extra={"id": record.id, "error": repr(err)}
        )
        return None
    status_path = rt.paths.sandbox_status(metadata.id)
    await asyncio.to_thread(status_path.parent.mkdir, parents=True, exist_ok=True)
    try:
        persisted = await checkpoint.read(status_path)
    except checkpoint.CheckpointError:
        persisted = {}  # never written (the pod has not stopped yet) or lost: start afresh
    state, pid = SandboxState.UNKNOWN, 0
    try:
        task = await _task(rt, metadata.id)
        if task is None:
            state = SandboxState.NOTREADY
        elif task.status is TaskStatus.RUNNING:
            state, pid = SandboxState.READY, task.pid
        else:
            state = SandboxState.NOTREADY
            if task.status is TaskStatus.STOPPED and not persisted.get("exited_at"):
                # exited while pycri was down: keep what containerd knows of it
                persisted |= {"exit_code": task.exit_status, "exited_at": task.exited_at_ns}
            await records.kill_and_delete_task(rt, metadata.id)
    except ContainerdError as err:
        log.error("sandbox task state unknown", extra={"id": metadata.id, "error": str(err)})
    sandbox = Sandbox(
        metadata=metadata,
        status=SandboxStatus.from_persisted(persisted, state=state, pid=pid),
        status_path=status_path,
    )
    await _recover_netns(rt, sandbox)
    return sandbox


async def _recover_netns(rt: RuntimeContext, sandbox: Sandbox) -> None:
    """Re-pin a running pod's lost netns; note a stopped pod's as gone (DEL runs anyway)."""
    metadata = sandbox.metadata
    if not metadata.netns_path:
        return
    if await asyncio.to_thread(is_pinned, Path(metadata.netns_path)):
        return
    if sandbox.status.state is SandboxState.READY:
        try:
            if await rt.network.ensure_netns(metadata, pid=sandbox.status.pid):
                return
        except OSError as err:
            log.error(
                "could not re-pin network namespace",
                extra={"sandbox_id": metadata.id, "error": str(err)},
            )
    # without CNI there is nothing left to release
    await sandbox.record_netns_missing(nothing_to_release=metadata.cni_network is None)


async def _load_status(rt: RuntimeContext, metadata: ContainerMetadata) -> ContainerStatus | None:
    try:
        doc = await checkpoint.read(rt.paths.container_status(metadata.id))
        return ContainerStatus.from_persisted(doc)
    except checkpoint.CheckpointError as err:
        log.error(
            "container status checkpoint lost; rebuilding from containerd",
            extra={"container_id": metadata.id, "error": str(err)},
        )
        return None


def process_start_ns(pid: int) -> int:
    """When a process started (ns since the epoch), from /proc; 0 when unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start_ticks = int(stat.rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0
    age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    return time.time_ns() - int(age * 1e9)


def _unknown_exit(status: ContainerStatus) -> ContainerStatus:
    return status.replace(
        pid=0,
        finished_at=time.time_ns(),
        exit_code=UNKNOWN_EXIT_CODE,
        reason=REASON_UNKNOWN,
        unknown=False,
    )


async def _load_container(
    rt: RuntimeContext, record: Record
) -> tuple[Container, TaskInfo | None] | None:
    """The container with its reconciled status, and its running/stopped task if any."""
    try:
        metadata = ContainerMetadata.from_json(records.record_metadata(record))
    except (KeyError, ValueError) as err:
        log.error(
            "skipping container with unreadable metadata",
            extra={"id": record.id, "error": repr(err)},
        )
        return None
    loaded = await _load_status(rt, metadata)
    lost = loaded is None
    status = loaded or ContainerStatus(created_at=metadata.created_at)
    if not status.created_at:
        status = status.replace(created_at=metadata.created_at)  # never "49 years ago"
    state = status.state
    process = None
    try:
        process = await _task(rt, metadata.id)
    except ContainerdError as err:
        log.error("container task state unknown", extra={"id": metadata.id, "error": str(err)})
        status = status.replace(unknown=True)
    else:
        if process is None:
            if lost or state == api_pb2.CONTAINER_RUNNING:
                status = _unknown_exit(status)
        elif process.status is TaskStatus.CREATED:
            if state == api_pb2.CONTAINER_CREATED and not lost:
                await records.kill_and_delete_task(rt, metadata.id)  # interrupted start
                process = None
            else:
                status = status.replace(unknown=True)
        elif process.status is TaskStatus.RUNNING:
            if state == api_pb2.CONTAINER_EXITED:
                status = status.replace(unknown=True)
            elif state != api_pb2.CONTAINER_RUNNING:
                pid = process.pid
                started = await asyncio.to_thread(process_start_ns, pid)
                status = status.replace(started_at=started or time.time_ns(), pid=pid)
        elif process.status is TaskStatus.STOPPED:
            if not status.started_at:
                status = status.replace(started_at=status.created_at)
        else:
            status = status.replace(unknown=True)
    status_path = rt.paths.container_status(metadata.id)
    await asyncio.to_thread(status_path.parent.mkdir, parents=True, exist_ok=True)
    container = Container(metadata=metadata, status=ContainerStatus(), status_path=status_path)
    await container.restore(status)  # re-written checkpoint, exited event set
    return container, process


async def _attach_io(rt: RuntimeContext, container: Container, process: TaskInfo) -> None:
    paths = StdioPaths(
        stdin=process.stdin,
        stdout=process.stdout,
        stderr=process.stderr,
        terminal=process.terminal,
    )
    sandbox = rt.sandboxes.find(container.metadata.sandbox_id)
    try:
        container.io = await ContainerIO.reattach(
            container_id=container.id,
            paths=paths,
            log_path=container.metadata.log_path,
            log_dir=sandbox.metadata.config.log_directory if sandbox is not None else "",
            max_line_size=rt.config.max_container_log_line_size,
        )
    except OSError as err:
        log.error(
            "could not re-attach container output",
            extra={"container_id": container.id, "error": str(err)},
        )


async def recover(rt: RuntimeContext) -> None:
    started = time.monotonic()
    client = rt.containerd
    half_made = await rt.undo.pending()
    skip = {intent.object_id for intent in half_made}
    sandbox_records = [
        r
        for r in await client.containers.list(
            [f'labels."{records.KIND_LABEL}"=={Kind.SANDBOX.value}'], timeout=60
        )
        if r.id not in skip
    ]
    sandboxes = await asyncio.gather(*(_load_sandbox(rt, r) for r in sandbox_records))
    for sandbox in sandboxes:
        if sandbox is None:
            continue
        rt.sandboxes.add(sandbox)
        rt.sandbox_names.reserve(sandbox.metadata.name, sandbox.id)
    container_records = [
        r
        for r in await client.containers.list(
            [f'labels."{records.KIND_LABEL}"=={Kind.CONTAINER.value}'], timeout=60
        )
        if r.id not in skip
    ]
    loaded = await asyncio.gather(*(_load_container(rt, r) for r in container_records))
    pending_exits: list[TaskExit] = []
    for item in loaded:
        if item is None:
            continue
        container, process = item
        rt.containers.add(container)
        rt.container_names.reserve(container.metadata.name, container.id)
        if process is None:
            continue
        if process.status is TaskStatus.RUNNING:
            await _attach_io(rt, container, process)
            rt.monitors.watch(kind=Kind.CONTAINER, object_id=container.id, pid=process.pid)
        elif process.status is TaskStatus.STOPPED:
            pending_exits.append(
                TaskExit(
                    kind=Kind.CONTAINER,
                    object_id=container.id,
                    pid=process.pid,
                    exit_status=process.exit_status,
                    exited_at=process.exited_at_ns,
                )
            )
    # Monitors start only now that every object is in its store.
    for sandbox in rt.sandboxes.all():
        if sandbox.status.state is SandboxState.READY:
            rt.monitors.watch(kind=Kind.SANDBOX, object_id=sandbox.id, pid=sandbox.status.pid)
            if not sandbox.status.netns_missing:
                rt.network.check_later(sandbox.metadata)  # CNI CHECK, logged only
    await asyncio.gather(*(rt.dispatcher.submit(e.object_id, e) for e in pending_exits))
    await asyncio.to_thread(_remove_orphan_dirs, rt)
    rt.undo.resume(half_made)
    log.info(
        "recovered state from containerd",
        extra={
            "sandboxes": len(rt.sandboxes),
            "containers": len(rt.containers),
            "exits_handled": len(pending_exits),
            "half_made": len(half_made),
            "duration_ms": round((time.monotonic() - started) * 1e3),
        },
    )


def _remove_orphan_dirs(rt: RuntimeContext) -> None:
    sandbox_ids = {s.id for s in rt.sandboxes.all()}
    container_ids = {c.id for c in rt.containers.all()}
    roots = [
        (rt.paths.sandboxes_dir, sandbox_ids),
        (rt.paths.containers_dir, container_ids),
        (rt.paths.container_state_dir, container_ids),
    ]
    for base, known in roots:
        if not base.is_dir():
            continue
        for entry in base.iterdir():
            if entry.is_dir() and entry.name not in known:
                log.info("removing orphan directory", extra={"path": str(entry)})
                shutil.rmtree(entry, ignore_errors=True)
