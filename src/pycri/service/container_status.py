"""ContainerStatus and ListContainers: answered from memory only.

Timestamps follow the state (CREATED → created; RUNNING → +started; EXITED/UNKNOWN →
+finished); the reason is the stored one, else Completed/Error for EXITED (reference §2.2).
"""

from __future__ import annotations

import json

from cri_api.v1 import api_pb2

from pycri.images.store import ImageStore
from pycri.service.context import RuntimeContext
from pycri.service.filters import labels_match
from pycri.store.container import Container


def _image_spec(images: ImageStore, container: Container) -> tuple[api_pb2.ImageSpec, str]:
    """(image as the user named it, image_ref): kubelet wants a repo digest when known."""
    meta = container.metadata
    image_ref = meta.image_id
    image = images.find(meta.image_id)
    if image is not None and image.repo_digests:
        image_ref = image.repo_digests[0]
    name = meta.image_name
    if image is not None and image.repo_tags:
        name = image.repo_tags[0]
    return api_pb2.ImageSpec(image=name, annotations=meta.config.image.annotations), image_ref


def container_status_message(images: ImageStore, container: Container) -> api_pb2.ContainerStatus:
    meta = container.metadata
    status = container.status
    state = status.state
    image, image_ref = _image_spec(images, container)
    message = api_pb2.ContainerStatus(
        id=meta.id,
        metadata=meta.config.metadata,
        state=state,
        created_at=status.created_at or meta.created_at,
        exit_code=status.exit_code if state == api_pb2.CONTAINER_EXITED else 0,
        image=image,
        image_ref=image_ref,
        image_id=meta.image_id,
        reason=status.reported_reason(),
        message=status.message,
        labels=meta.config.labels,
        annotations=meta.config.annotations,
        mounts=meta.config.mounts,
        log_path=meta.log_path,
    )
    if state != api_pb2.CONTAINER_CREATED:
        message.started_at = status.started_at
    if state in (api_pb2.CONTAINER_EXITED, api_pb2.CONTAINER_UNKNOWN):
        message.finished_at = status.finished_at
    resources = status.resources
    if resources:
        cpu = resources.get("cpu", {})
        memory = resources.get("memory", {})
        message.resources.linux.CopyFrom(
            api_pb2.LinuxContainerResources(
                cpu_period=int(cpu.get("period", 0)),
                cpu_quota=int(cpu.get("quota", 0)),
                cpu_shares=int(cpu.get("shares", 0)),
                cpuset_cpus=str(cpu.get("cpus", "")),
                cpuset_mems=str(cpu.get("mems", "")),
                memory_limit_in_bytes=int(memory.get("limit", 0)),
                memory_swap_limit_in_bytes=int(memory.get("swap", 0)),
            )
        )
    return message


async def container_status(
    rt: RuntimeContext, request: api_pb2.ContainerStatusRequest
) -> api_pb2.ContainerStatusResponse:
    container = rt.containers.get(request.container_id)
    response = api_pb2.ContainerStatusResponse(
        status=container_status_message(rt.images, container)
    )
    if request.verbose:
        status = container.status
        response.info["info"] = json.dumps(
            {
                "sandboxID": container.metadata.sandbox_id,
                "pid": status.pid,
                "removing": status.removing,
                "snapshotKey": container.id,
                "snapshotter": rt.config.snapshotter,
                "runtimeHandler": container.metadata.runtime_handler,
                "runtimeType": container.metadata.runtime_type,
                "runtimeOptions": container.metadata.runtime_options,
                "config": json.loads(container.metadata.encode())["config"],
            }
        )
    return response


def _matches(container: Container, flt: api_pb2.ContainerFilter) -> bool:
    if flt.id and not container.id.startswith(flt.id):
        return False
    if flt.pod_sandbox_id and not container.metadata.sandbox_id.startswith(flt.pod_sandbox_id):
        return False
    if flt.HasField("state") and container.status.state != flt.state.state:
        return False
    return labels_match(container.metadata.config.labels, flt.label_selector)


async def list_containers(
    rt: RuntimeContext, request: api_pb2.ListContainersRequest
) -> api_pb2.ListContainersResponse:
    flt = request.filter
    items = []
    for c in rt.containers.all():
        if not _matches(c, flt):
            continue
        image, image_ref = _image_spec(rt.images, c)
        items.append(
            api_pb2.Container(
                id=c.id,
                pod_sandbox_id=c.metadata.sandbox_id,
                metadata=c.metadata.config.metadata,
                image=image,
                image_ref=image_ref,
                image_id=c.metadata.image_id,
                state=c.status.state,
                created_at=c.status.created_at or c.metadata.created_at,
                labels=c.metadata.config.labels,
                annotations=c.metadata.config.annotations,
            )
        )
    return api_pb2.ListContainersResponse(containers=items)
