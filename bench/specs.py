"""Pod and container configs as kubelet would send them, for host-network pods.

Host network (``namespace_options.network = NODE``) keeps CNI out of the measurement: both
runtimes then do the same work per pod (pause task, cgroups, mounts, shim). Containers get
their own PID namespace (``pid = CONTAINER``), kubelet's default without
``shareProcessNamespace``: with a shared PID namespace containerd's shim reports exits late.
No hostname is set: a host-network pod shares the node's UTS namespace, and runc refuses to
set a hostname there (containerd's plugin passes it through, pycri ignores it).

Container commands are plain busybox shell, so both runtimes run the same processes:
- ``SLEEPER``: runs until SIGTERM, then exits 0 at once (as PID 1 a shell ignores SIGTERM
  unless it traps it, which would turn every StopContainer into a full grace period).
  ``SLEEPER_WITH_READY`` also creates ``/shared/ready`` once the trap is set, so a runner
  that stops it right after the start can wait for that first (a host-side stat, no RPC).
- ``wait_for_release(code)``: blocks opening ``/shared/go`` (a FIFO on a hostPath mount)
  until the runner opens it for writing; on the runner's close it reads EOF and exits with
  ``code``. So any number of containers exit at one instant the runner chooses.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from pathlib import Path

from cri_api.v1 import api_pb2

BUSYBOX_REF = "docker.io/library/busybox:latest"
PAUSE_REF = "registry.k8s.io/pause:3.9"
BENCH_LABEL = "pycri.bench/run"
SHARED_DIR_IN_CONTAINER = "/shared"
RELEASE_FIFO_NAME = "go"

SLEEPER = "trap 'exit 0' TERM; sleep 3600 & wait"
# The same, and it says when its trap is set by creating /shared/ready: a SIGTERM that comes
# before the trap is ignored by a PID 1 shell, and Stop would wait the whole grace period.
SLEEPER_WITH_READY = f"trap 'exit 0' TERM; touch {SHARED_DIR_IN_CONTAINER}/ready; sleep 3600 & wait"


def wait_for_release(*, exit_code: int) -> str:
    return f"read x < {SHARED_DIR_IN_CONTAINER}/{RELEASE_FIFO_NAME}; exit {exit_code}"


def pod_config(
    *, name: str, run_label: str, log_directory: Path, labels: Mapping[str, str] | None = None
) -> api_pb2.PodSandboxConfig:
    return api_pb2.PodSandboxConfig(
        metadata=api_pb2.PodSandboxMetadata(
            name=name, namespace="bench", uid=str(uuid.uuid4()), attempt=0
        ),
        log_directory=str(log_directory),
        labels={BENCH_LABEL: run_label, **(labels or {})},
        linux=api_pb2.LinuxPodSandboxConfig(
            security_context=api_pb2.LinuxSandboxSecurityContext(
                namespace_options=api_pb2.NamespaceOption(
                    network=api_pb2.NODE, pid=api_pb2.CONTAINER, ipc=api_pb2.POD
                )
            )
        ),
    )


def container_config(
    *,
    name: str,
    script: str,
    run_label: str,
    labels: Mapping[str, str] | None = None,
    shared_host_dir: Path | None = None,
) -> api_pb2.ContainerConfig:
    config = api_pb2.ContainerConfig(
        metadata=api_pb2.ContainerMetadata(name=name, attempt=0),
        image=api_pb2.ImageSpec(image=BUSYBOX_REF),
        command=["sh", "-c", script],
        labels={BENCH_LABEL: run_label, **(labels or {})},
        log_path=f"{name}.log",
    )
    config.linux.security_context.namespace_options.pid = api_pb2.CONTAINER
    if shared_host_dir is not None:
        config.mounts.add(container_path=SHARED_DIR_IN_CONTAINER, host_path=str(shared_host_dir))
    return config
