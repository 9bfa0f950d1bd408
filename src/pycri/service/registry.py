"""The table from CRI method names to pycri's implementations, bound to one RuntimeContext.

Methods missing here answer UNIMPLEMENTED at the gRPC seam with a message naming them.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from google.protobuf.message import Message

from pycri.service import (
    container_attach,
    container_checkpoint,
    container_create,
    container_events,
    container_exec,
    container_log,
    container_remove,
    container_start,
    container_status,
    container_stop,
    container_update,
    image_fs_info,
    image_list,
    image_pull,
    image_remove,
    image_status,
    pod_metrics,
    runtime_config,
    sandbox_portforward,
    sandbox_remove,
    sandbox_run,
    sandbox_status,
    sandbox_stop,
    sandbox_update,
    stats,
    status,
    version,
)
from pycri.service.context import RuntimeContext

# unary RPCs return an awaitable response, streaming ones an async iterator of them
Impl = Callable[[RuntimeContext, Any], Awaitable[Message] | AsyncIterator[Message]]

RUNTIME_RPCS: dict[str, Impl] = {
    "Version": version.version,
    "Status": status.status,
    "RunPodSandbox": sandbox_run.run_pod_sandbox,
    "StopPodSandbox": sandbox_stop.stop_pod_sandbox,
    "RemovePodSandbox": sandbox_remove.remove_pod_sandbox,
    "PodSandboxStatus": sandbox_status.pod_sandbox_status,
    "ListPodSandbox": sandbox_status.list_pod_sandbox,
    "CreateContainer": container_create.create_container,
    "StartContainer": container_start.start_container,
    "StopContainer": container_stop.stop_container_rpc,
    "RemoveContainer": container_remove.remove_container_rpc,
    "ContainerStatus": container_status.container_status,
    "ListContainers": container_status.list_containers,
    "UpdateContainerResources": container_update.update_container_resources,
    "ReopenContainerLog": container_log.reopen_container_log,
    "ExecSync": container_exec.exec_sync,
    "Exec": container_exec.exec_rpc,
    "Attach": container_attach.attach,
    "PortForward": sandbox_portforward.port_forward,
    "GetContainerEvents": container_events.get_container_events,
    "ContainerStats": stats.container_stats,
    "ListContainerStats": stats.list_container_stats,
    "PodSandboxStats": stats.pod_sandbox_stats,
    "ListPodSandboxStats": stats.list_pod_sandbox_stats,
    "RuntimeConfig": runtime_config.runtime_config,
    "UpdateRuntimeConfig": runtime_config.update_runtime_config,
    "UpdatePodSandboxResources": sandbox_update.update_pod_sandbox_resources,
    "ListMetricDescriptors": pod_metrics.list_metric_descriptors,
    "ListPodSandboxMetrics": pod_metrics.list_pod_sandbox_metrics,
    "CheckpointContainer": container_checkpoint.checkpoint_container,
}

IMAGE_RPCS: dict[str, Impl] = {
    "ListImages": image_list.list_images,
    "ImageStatus": image_status.image_status,
    "RemoveImage": image_remove.remove_image,
    "ImageFsInfo": image_fs_info.image_fs_info,
    "PullImage": image_pull.pull_image,
}


def bind(rt: RuntimeContext, table: dict[str, Impl]) -> dict[str, Callable[[Any], Any]]:
    return {name: functools.partial(impl, rt) for name, impl in table.items()}
