"""What both spec builders share: the OCI version, annotation keys, masked paths, namespaces."""

from __future__ import annotations

from typing import Any

from cri_api.v1 import api_pb2

JsonDict = dict[str, Any]

OCI_VERSION = "1.0.2"

# Relative to the bundle directory, where containerd's shim mounts the snapshot.
ROOTFS_PATH = "rootfs"

# Kernel interfaces that leak host information or allow host changes; hidden unless privileged.
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

# Annotation keys as containerd's CRI plugin sets them; OCI hooks and runtimes (kata, gVisor, NRI
# plugins) read these to tell sandboxes from containers and to group containers by pod.
ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANNOTATION_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANNOTATION_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANNOTATION_SANDBOX_LOG_DIRECTORY = "io.kubernetes.cri.sandbox-log-directory"
CONTAINER_TYPE_SANDBOX = "sandbox"
CONTAINER_TYPE_CONTAINER = "container"


def namespace_options(config: api_pb2.PodSandboxConfig) -> api_pb2.NamespaceOption:
    return config.linux.security_context.namespace_options


def namespace(kind: str, path: str | None = None) -> JsonDict:
    return {"type": kind, "path": path} if path else {"type": kind}


def masked_and_readonly_paths(
    security: api_pb2.LinuxContainerSecurityContext,
) -> tuple[list[str], list[str]]:
    if security.privileged:
        return [], []
    # proto3 cannot tell an empty list from an absent one; kubelet sends the defaults explicitly
    # for the Default proc mount type, so empty means "runtime default" here.
    masked = list(security.masked_paths) or list(DEFAULT_MASKED_PATHS)
    readonly = list(security.readonly_paths) or list(DEFAULT_READONLY_PATHS)
    return masked, readonly
