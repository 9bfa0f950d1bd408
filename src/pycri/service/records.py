"""containerd container records for pycri's sandboxes and containers.

pycri keeps an object's immutable metadata in its containerd container record (an
extension), so it survives a restart of pycri with nothing else on disk. Labels mark which
records are pycri's and of which kind; recovery lists by them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from pycri.cgroups import remove_cgroup
from pycri.containerd import client as containerd_client
from pycri.containerd.client import record_extension
from pycri.containerd.errors import ContainerdError, NotFoundError
from pycri.containerd.shims import kill_shims
from pycri.containerd.types import Extension
from pycri.events.types import Kind
from pycri.service.concurrently import all_settled

if TYPE_CHECKING:
    from pycri.images.model import Image
    from pycri.oci.runtime_handlers import RuntimeHandler
    from pycri.service.context import RuntimeContext
    from pycri.service.rollback import Rollback

log = logging.getLogger(__name__)
LEASE_EXPIRY_S = 3600
LEASE_PREFIX = "pycri-create-"

KIND_LABEL = "io.pycri.kind"  # its value: a ``Kind`` ("sandbox" or "container")
SANDBOX_ID_LABEL = "io.pycri.sandbox-id"
METADATA_EXTENSION = "io.pycri.metadata"
METADATA_TYPE_URL = "pycri.io/metadata/v1"

Record = containerd_client.ContainerRecord
Mount = containerd_client.Mount


def metadata_extension(metadata: bytes) -> dict[str, Extension]:
    return {METADATA_EXTENSION: Extension(type_url=METADATA_TYPE_URL, value=metadata)}


def record_metadata(record: Record) -> dict[str, Any]:
    """pycri's metadata document from a record; KeyError/ValueError if absent or corrupt."""
    doc = json.loads(record_extension(record, METADATA_EXTENSION))
    if not isinstance(doc, dict):
        raise ValueError("metadata extension is not an object")
    return doc


record_spec = containerd_client.record_spec


def layer_dirs(mounts: list[Mount]) -> list[str]:
    """A snapshot's dirs, top-most first: an overlay mount's upperdir (the writable layer of
    an active snapshot), then its lowerdirs; a bind mount is a single (writable) dir."""
    dirs: list[str] = []
    for mount in mounts:
        if mount.type == "bind":
            dirs.append(mount.source)
            continue
        for option in mount.options:
            key, _, value = option.partition("=")
            if key == "upperdir":
                dirs.insert(0, value)
            elif key == "lowerdir":
                dirs.extend(value.split(":"))
    return dirs


async def create_record(
    rt: RuntimeContext,
    *,
    object_id: str,
    kind: Kind,
    image: Image,
    spec: dict[str, Any] | Callable[[list[Mount]], Awaitable[dict[str, Any]]],
    metadata: bytes,
    labels: dict[str, str],
    handler: RuntimeHandler,
    undo: Rollback,
) -> list[Mount]:
    """Prepare the object's snapshot and create its containerd container record, whose
    runtime (shim type and runc options) is the pod's runtime handler's.

    Both happen under a short-lived lease, so containerd's GC cannot take the new snapshot
    before the record references it, and a crash in between leaves nothing that the lease's
    expiry would not collect. Returns the rootfs mounts for the task.
    """
    client = rt.containerd
    snapshotter = rt.config.snapshotter
    undo.push("remove snapshot", lambda: remove_snapshot(rt, object_id))
    lease = await client.leases.create(
        lease_id(object_id),
        labels={
            "containerd.io/gc.expire": time.strftime(
                "%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + LEASE_EXPIRY_S)
            )
        },
    )
    try:
        mounts = await client.snapshots.prepare(snapshotter, object_id, image.chain_id, lease=lease)
        if callable(spec):  # the spec may depend on the rootfs (user lookup)
            spec = await spec(mounts)
        undo.push("delete containerd container", lambda: delete_record(rt, object_id))
        await client.containers.create(
            container_id=object_id,
            image=image.repo_tags[0] if image.repo_tags else image.id,
            labels={**labels, KIND_LABEL: kind.value},
            runtime=handler.runtime_type,
            runtime_options=handler.options,
            spec=spec,
            snapshotter=snapshotter,
            snapshot_key=object_id,
            extensions=metadata_extension(metadata),
            lease=lease,
            timeout=30,
        )
    except BaseException:
        # Keep the original error: a lease that cannot be deleted now (containerd gone) is
        # deleted by the undo journal, or expires.
        try:
            await client.leases.delete(lease)
        except ContainerdError as err:
            log.warning(
                "could not delete a create lease", extra={"lease": lease, "error": str(err)}
            )
        raise
    await client.leases.delete(lease)
    return mounts


def lease_id(object_id: str) -> str:
    """The lease a create of ``object_id`` holds while it makes the snapshot and record."""
    return f"{LEASE_PREFIX}{object_id}"


async def update_metadata(rt: RuntimeContext, object_id: str, metadata: bytes) -> None:
    """Rewrite the metadata extension of an existing record (e.g. a sandbox's IPs)."""
    await rt.containerd.containers.update_extensions(
        object_id, metadata_extension(metadata), timeout=30
    )


async def remove_snapshot(rt: RuntimeContext, object_id: str) -> None:
    try:
        await rt.containerd.snapshots.remove(rt.config.snapshotter, object_id)
    except NotFoundError:
        pass


async def delete_record(rt: RuntimeContext, object_id: str) -> None:
    """Delete the containerd container and its snapshot, concurrently (the record only
    names the snapshot; a crash between the two leaves what a repeated call finishes);
    idempotent."""
    await all_settled(_delete_container(rt, object_id), remove_snapshot(rt, object_id))


async def _delete_container(rt: RuntimeContext, object_id: str) -> None:
    try:
        await rt.containerd.containers.delete(object_id, timeout=30)
    except NotFoundError:
        pass


def remove_cgroup_sync(path: str) -> None:
    """Remove a deleted task's cgroup if runc could not (its shim died); blocking, for the
    worker thread that removes the object's files. Failures are logged: the object is gone
    either way, and ``pycri check --orphans`` lists what is left."""
    try:
        remove_cgroup(path)
    except OSError as err:
        log.error("could not remove a cgroup", extra={"cgroup": path, "error": str(err)})


async def kill_and_delete_task(
    rt: RuntimeContext, object_id: str, *, stray_shim: bool = False
) -> None:
    """Kill a task and delete it (rollback and forced cleanup paths); idempotent.

    ``stray_shim`` (a sandbox's task: its shim is named by its ID): then kill a shim still
    running under that ID, one containerd died before it recorded (``containerd/shims.py``).
    """
    await force_delete_task(rt.containerd, object_id)
    if stray_shim:
        await kill_stray_shim(rt.containerd, object_id)


async def kill_stray_shim(client: containerd_client.ContainerdClient, object_id: str) -> None:
    killed = await asyncio.to_thread(kill_shims, client.address, object_id)
    if killed:
        log.warning(
            "killed a shim containerd did not know",
            extra={"id": object_id, "pids": ",".join(map(str, killed))},
        )


async def force_delete_task(client: containerd_client.ContainerdClient, object_id: str) -> None:
    """``kill_and_delete_task`` with a client alone (the undo journal, gc)."""
    tasks = client.tasks
    try:
        await tasks.kill(object_id, 9, all=True, timeout=10)
    except NotFoundError:
        return
    except Exception as err:  # a stopped task refuses kill; delete decides
        log.debug("kill failed", extra={"id": object_id, "error": str(err)})
    try:
        await tasks.wait(object_id, timeout=10)
    except Exception as err:
        log.debug("wait after kill failed", extra={"id": object_id, "error": str(err)})
    try:
        await tasks.delete(object_id, timeout=30)
    except NotFoundError:
        pass
    except ContainerdError:
        # The exit handler may have deleted the task concurrently (Stop returns once the
        # exit is recorded, before its teardown): gone is what we wanted.
        try:
            await tasks.get(object_id, timeout=10)
        except NotFoundError:
            return
        raise
