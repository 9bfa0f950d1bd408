"""Checks of CRI paths before anything is made: mounts and log paths that could escape.

Invalid input raises ``ValueError`` with a message meant for the CRI client; the service
layer maps it to ``INVALID_ARGUMENT``.
"""

from __future__ import annotations

import posixpath

from cri_api.v1 import api_pb2

from pycri.oci.mounts import PROPAGATION_OPTION


def has_dot_dot(path: str) -> bool:
    return ".." in path.split("/")


def validate_mount(mount: api_pb2.Mount, *, recursive_read_only_supported: bool = False) -> None:
    """Refuse a CRI mount runc would misplace or that could escape its intended location.

    ``recursive_read_only_supported``: the pod's runtime handler and the kernel can make a bind
    mount read-only with everything below it (``rro``); kubelet asks for it only where Status
    said so, and a mount that asks for it elsewhere is refused rather than left writable below.
    """
    for what, path in (("container_path", mount.container_path), ("host_path", mount.host_path)):
        if not path:
            raise ValueError(f"mount {what} is empty")
        if not posixpath.isabs(path):
            raise ValueError(f"mount {what} {path!r} is not an absolute path")
        if has_dot_dot(path):
            raise ValueError(f"mount {what} {path!r} must not contain '..'")
    # Silently leaving submounts writable, or a mount unmapped, would be worse than refusing.
    if mount.recursive_read_only:
        if not recursive_read_only_supported:
            raise ValueError(
                f"mount {mount.container_path!r}: recursive read-only mounts are not supported "
                "by this pod's runtime handler"
            )
        if not mount.readonly:
            raise ValueError(
                f"mount {mount.container_path!r}: a recursive read-only mount must be readonly"
            )
        if mount.propagation != api_pb2.PROPAGATION_PRIVATE:
            raise ValueError(
                f"mount {mount.container_path!r}: a recursive read-only mount must have private "
                "propagation"
            )
    if mount.uidMappings or mount.gidMappings:
        raise ValueError(f"mount {mount.container_path!r}: idmapped mounts are not supported")
    if mount.HasField("image") and mount.image.image:
        raise ValueError(f"mount {mount.container_path!r}: image volumes are not supported")
    if mount.propagation not in PROPAGATION_OPTION:
        raise ValueError(f"mount {mount.container_path!r}: unknown propagation {mount.propagation}")


def validate_log_path(log_path: str) -> None:
    """Refuse a container log path that would leave the sandbox's log directory.

    The CRI defines ``ContainerConfig.log_path`` as relative to ``PodSandboxConfig.log_directory``;
    empty means no log.
    """
    if posixpath.isabs(log_path):
        raise ValueError(
            f"log_path {log_path!r} must be relative to the sandbox log directory, not absolute"
        )
    if has_dot_dot(log_path):
        raise ValueError(f"log_path {log_path!r} must not contain '..'")
