"""Builders for CRI pod and container configs used by the integration tests."""

from __future__ import annotations

import uuid
from pathlib import Path

from cri_api.v1 import api_pb2

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
