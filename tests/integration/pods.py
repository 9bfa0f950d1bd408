"""Builders for CRI pod and container configs used by the integration tests, and the few
RPC sequences every module needs (create + start, status, wait for EXITED)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from cri_api.v1 import api_pb2

from tests.integration.helpers import CRI, eventually

BUSYBOX = "docker.io/library/busybox:latest"


def pod_config(
    name: str,
    *,
    log_dir: Path | None = None,
    host_network: bool = False,
    labels: dict[str, str] | None = None,
    namespace: str = "default",
) -> api_pb2.PodSandboxConfig:
    config = api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, namespace=namespace, uid=str(uuid.uuid4()), attempt=0
        ),
        hostname=name,
        log_directory=str(log_dir) if log_dir else "",
        labels=labels or {},
        annotations={"test": "yes"},
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(
                    network=api_pb2.NODE if host_network else api_pb2.POD,
                    pid=api_pb2.CONTAINER,
                    ipc=api_pb2.POD,
                )
            )
        ),
    )
    return config


def container_config(
    name: str,
    script: str,
    *,
    image: str = BUSYBOX,
    labels: dict[str, str] | None = None,
    log_path: str = "",
    memory_limit: int = 0,
) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
        image=api_pb2.ImageSpec(image=image),
        command=["sh", "-c", script],
        labels=labels or {},
        annotations={"note": "kept as is"},
        log_path=log_path or f"{name}.log",
    )
    # kubelet's default: the container has its own PID namespace (no shareProcessNamespace)
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    if memory_limit:
        config.linux.resources.memory_limit_in_bytes = memory_limit
    return config


async def start(
    cri: CRI, pod_id: str, pod_cfg: api_pb2.PodSandboxConfig, config: api_pb2.ContainerConfig
) -> str:
    """CreateContainer then StartContainer; the container's ID."""
    resp = await cri.runtime.CreateContainer(
        api_pb2.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod_cfg)
    )
    await cri.runtime.StartContainer(api_pb2.StartContainerRequest(container_id=resp.container_id))
    return resp.container_id


async def status(cri: CRI, container_id: str) -> api_pb2.ContainerStatus:
    resp = await cri.runtime.ContainerStatus(
        api_pb2.ContainerStatusRequest(container_id=container_id)
    )
    return resp.status


async def wait_exited(cri: CRI, container_id: str, timeout: float = 15) -> api_pb2.ContainerStatus:
    async def exited() -> api_pb2.ContainerStatus | None:
        st = await status(cri, container_id)
        return st if st.state == api_pb2.CONTAINER_EXITED else None

    result: api_pb2.ContainerStatus = await eventually(exited, timeout=timeout)
    return result


@contextlib.asynccontextmanager
async def running_pod(cri: CRI, config: api_pb2.PodSandboxConfig) -> AsyncIterator[str]:
    """RunPodSandbox for the block; stopped and removed after it, whatever happened."""
    pod_id = (
        await cri.runtime.RunPodSandbox(api_pb2.RunPodSandboxRequest(config=config))
    ).pod_sandbox_id
    try:
        yield pod_id
    finally:
        await cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=pod_id))
        await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=pod_id))


async def remove_all_pods(cri: CRI) -> None:
    """Stop and remove every pod the daemon lists (and so every container)."""
    pods = await cri.runtime.ListPodSandbox(api_pb2.ListPodSandboxRequest())
    for p in pods.items:
        await cri.runtime.StopPodSandbox(api_pb2.StopPodSandboxRequest(pod_sandbox_id=p.id))
        await cri.runtime.RemovePodSandbox(api_pb2.RemovePodSandboxRequest(pod_sandbox_id=p.id))


def log_output(log_path: str) -> list[str]:
    """The content of a CRI log file's records, one string per record, in order (what the
    container's own processes printed: where an exec may see another root, this does not)."""
    try:
        text = Path(log_path).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [line.split(" ", 3)[3] for line in text.splitlines() if line.count(" ") >= 3]
