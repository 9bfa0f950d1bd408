"""CheckpointContainer: a running container, CRIU-dumped into the archive kubelet names.

kubelet's checkpoint API (``POST /checkpoint/{ns}/{pod}/{container}``, forensic container
checkpointing) sends the container and an archive path under its checkpoints dir. The
container keeps running: the dump leaves it as it was, as containerd and CRI-O do.

Steps, checked first and cleaned up always (nothing is left but the archive, or nothing):

    the container is RUNNING under a runc-shim handler → the location is an absolute path
    whose directory exists and which does not → CRIU is installed, recent enough, and
    ``criu check`` passes (``pycri.oci.criu``; FAILED_PRECONDITION quoting criu otherwise)
    → containerd's task checkpoint through the runc shim, images into
    ``STATE/checkpoints/<id>/checkpoint`` → the writable layer as rootfs-diff.tar → the
    archive (``pycri.oci.checkpoint_archive``), written beside the location and renamed in
    → the work dir removed

A failed dump (the kernel refuses something CRIU needs mid-way, a process holds a resource
CRIU cannot save) is FAILED_PRECONDITION with containerd's message, which carries runc's and
CRIU's. Restoring an archive as a new container (CRI-O's CreateContainer from a checkpoint
image) is not built.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from cri_api.v1 import api_pb2
from google.protobuf import json_format

from pycri.config import RUNC_SHIM_TYPES
from pycri.containerd.errors import ContainerdError, NotFoundError
from pycri.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from pycri.oci import checkpoint_archive as archive
from pycri.oci.criu import criu_status
from pycri.service import records
from pycri.service.container_status import container_status_message
from pycri.service.context import RuntimeContext
from pycri.store.container import Container

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def _location(request: api_pb2.CheckpointContainerRequest) -> Path:
    location = request.location
    if not location or not os.path.isabs(location):
        raise InvalidArgument(f"checkpoint location {location!r} must be an absolute file path")
    if ".." in location.split("/"):
        raise InvalidArgument(f"checkpoint location {location!r} must not contain '..'")
    path = Path(location)
    if not path.parent.is_dir():
        raise InvalidArgument(f"checkpoint location {location!r}: {path.parent} does not exist")
    if path.exists() or path.is_symlink():
        raise AlreadyExists(f"checkpoint location {location!r} exists; it is not overwritten")
    return path


def _config_dump(rt: RuntimeContext, container: Container) -> bytes:
    status = container_status_message(rt.images, container)
    meta = container.metadata
    return json.dumps(
        {
            "id": meta.id,
            "name": meta.name,
            "rootfsImage": status.image.image,
            "rootfsImageRef": status.image_ref,
            "rootfsImageName": status.image.image,
            "runtime": meta.runtime_type,
            "createdTime": _rfc3339(meta.created_at),
            "checkpointedTime": _rfc3339(time.time_ns()),
        }
    ).encode()


async def checkpoint_container(
    rt: RuntimeContext, request: api_pb2.CheckpointContainerRequest
) -> api_pb2.CheckpointContainerResponse:
    container = rt.containers.get(request.container_id)
    if container.status.state != api_pb2.CONTAINER_RUNNING:
        raise FailedPrecondition(
            f"container {container.id} is not running: only running containers can be checkpointed"
        )
    if (container.metadata.runtime_type or RUNC_SHIM_TYPES[0]) not in RUNC_SHIM_TYPES:
        raise FailedPrecondition(
            f"container {container.id} runs under {container.metadata.runtime_type}, which "
            "pycri cannot checkpoint (runc shim only)"
        )
    location = await asyncio.to_thread(_location, request)
    criu = await criu_status()
    if not criu.usable:
        raise FailedPrecondition(f"cannot checkpoint container {container.id}: {criu.problem}")
    work = rt.paths.checkpoint_work_dir(container.id)
    try:
        await _checkpoint(rt, container, location=location, work=work, timeout=request.timeout)
    finally:
        await asyncio.to_thread(shutil.rmtree, work, True)
    log.info(
        "container checkpointed",
        extra={"container_id": container.id, "location": str(location), "criu": criu.version},
    )
    return api_pb2.CheckpointContainerResponse()


async def _checkpoint(
    rt: RuntimeContext, container: Container, *, location: Path, work: Path, timeout: int
) -> None:
    images, criu_work = work / archive.CHECKPOINT_DIR, work / "work"
    for d in (images, criu_work):
        await asyncio.to_thread(d.mkdir, parents=True, exist_ok=True)
    try:
        await rt.containerd.tasks.checkpoint(
            container.id,
            image_path=str(images),
            work_path=str(criu_work),
            timeout=timeout or DEFAULT_TIMEOUT_S,
        )
    except NotFoundError:
        raise FailedPrecondition(f"container {container.id} exited meanwhile") from None
    except ContainerdError as err:
        raise FailedPrecondition(
            f"checkpoint of container {container.id} failed: {err.message}"
        ) from None
    record = await rt.containerd.containers.get(container.id, timeout=30)
    mounts = await rt.containerd.snapshots.mounts(rt.config.snapshotter, container.id)
    layers = records.layer_dirs(mounts)
    status = container_status_message(rt.images, container)
    documents = {
        archive.CONFIG_DUMP: _config_dump(rt, container),
        archive.SPEC_DUMP: json.dumps(records.record_spec(record)).encode(),
        archive.STATUS_DUMP: json_format.MessageToJson(status).encode(),
    }
    files = {name: criu_work / name for name in archive.CRIU_FILES}
    if container.metadata.log_path:
        files[archive.CONTAINER_LOG] = Path(container.metadata.log_path)
    if not layers:
        raise FailedPrecondition(f"container {container.id}: its snapshot has no writable layer")

    def write() -> None:
        diff = work / archive.ROOTFS_DIFF
        archive.write_rootfs_diff(Path(layers[0]), diff)
        archive.write_archive(
            location, images_dir=images, documents=documents, rootfs_diff=diff, files=files
        )

    await asyncio.to_thread(write)
