"""Checks of CRI input before anything is made: paths that could escape (mounts, log paths,
cgroup parents) and the sizes a single object may have (names, labels, annotations).

Invalid input raises ``ValueError`` with a message meant for the CRI client; the service
layer maps it to ``INVALID_ARGUMENT``. Messages quote request values through
``pycri.errors.quote``, which cuts them short: a client sending a 15 MiB value must not get
it echoed back.

Size limits (docs/operations.md "Limits" explains the worst case they give a List):

- all annotations of one object (its own and its image spec's), keys and values:
  ``MAX_ANNOTATIONS_BYTES`` (256 KiB, the API server's limit for an object's annotations);
- one label, key and value: ``MAX_LABEL_BYTES`` (4 KiB, what containerd's metadata store
  accepts; beyond it containerd would refuse the record half-way through a create); all
  labels of one object: ``MAX_LABELS_BYTES`` (256 KiB, pycri's own bound: the API server
  bounds a label only to 317 + 63 bytes, so this is ≥ 690 of its largest labels);
- metadata names, namespaces and UIDs: ``MAX_NAME_BYTES`` (253, a DNS subdomain, the
  longest name the API server gives any object); an image reference: ``MAX_IMAGE_REF_BYTES``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping

from cri_api.v1 import api_pb2

from pycri.errors import quote
from pycri.oci.mounts import PROPAGATION_OPTION

MAX_ANNOTATIONS_BYTES = 256 * 1024
MAX_LABEL_BYTES = 4096
MAX_LABELS_BYTES = 256 * 1024
MAX_NAME_BYTES = 253
MAX_IMAGE_REF_BYTES = 4096

# runc refuses mounts below /proc except over these files (which lxcfs emulates).
PROC_MOUNTS_RUNC_ALLOWS = frozenset(
    {
        "/proc/cpuinfo",
        "/proc/diskstats",
        "/proc/meminfo",
        "/proc/stat",
        "/proc/swaps",
        "/proc/uptime",
        "/proc/loadavg",
        "/proc/slabinfo",
        "/proc/net/dev",
        "/proc/sys/kernel/ns_last_pid",
    }
)


def has_dot_dot(path: str) -> bool:
    return ".." in path.split("/")


def validate_cgroup_parent(parent: str) -> None:
    """A pod's cgroup parent (cgroupfs driver): ``/a/b`` or ``a/b``, never out of the tree.

    Every hierarchy's cgroup is ``<root>/<parent>/<id>``: a ``..`` (or ``.``) component
    would put it, and the directories runc makes for it, anywhere under the cgroup mount.
    """
    if not parent:
        return
    if any(ord(c) < 0x20 or c == "\x7f" for c in parent):
        raise ValueError(f"cgroup_parent {quote(parent)} contains control characters")
    if len(parent) > 4096:
        raise ValueError(f"cgroup_parent {quote(parent)} is longer than 4096 bytes")
    inner = parent.strip("/")
    if inner and any(p in ("", ".", "..") for p in inner.split("/")):
        raise ValueError(
            f"cgroup_parent {quote(parent)} must be a plain path: no '..', '.' or empty components"
        )


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
            raise ValueError(f"mount {what} {quote(path)} is not an absolute path")
        if "\0" in path:
            raise ValueError(f"mount {what} {quote(path)} contains a NUL byte")
        if has_dot_dot(path):
            raise ValueError(f"mount {what} {quote(path)} must not contain '..'")
    # POSIX keeps a leading "//": "//proc/sys" is still /proc/sys to the kernel
    destination = "/" + posixpath.normpath(mount.container_path).lstrip("/")
    if destination == "/":
        raise ValueError("mount container_path '/' would hide the container's root filesystem")
    if (
        destination == "/proc" or destination.startswith("/proc/")
    ) and destination not in PROC_MOUNTS_RUNC_ALLOWS:
        raise ValueError(
            f"mount container_path {quote(destination)}: runc refuses mounts over /proc "
            "(except a few files lxcfs emulates)"
        )
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
    empty means no log. It must name a file: no ``.``, ``..`` or empty component (kubelet
    sends ``<container>/<restart count>.log``). Whether its directory exists, without
    links, is checked at create against the real log directory.
    """
    if posixpath.isabs(log_path):
        raise ValueError(
            f"log_path {quote(log_path)} must be relative to the sandbox log directory, "
            "not absolute"
        )
    if has_dot_dot(log_path):
        raise ValueError(f"log_path {quote(log_path)} must not contain '..'")
    if "\0" in log_path:
        raise ValueError(f"log_path {quote(log_path)} contains a NUL byte")
    if log_path and any(part in ("", ".") for part in log_path.split("/")):
        raise ValueError(f"log_path {quote(log_path)} must name a file (no '.' or empty parts)")


def _size(items: Mapping[str, str]) -> int:
    return sum(len(k.encode()) + len(v.encode()) for k, v in items.items())


def validate_labels(labels: Mapping[str, str], *, what: str) -> None:
    """Non-empty keys, each label within containerd's limit, all of them within ours."""
    for key, value in labels.items():
        if not key:
            raise ValueError(f"{what} labels: a label key must not be empty")
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_BYTES:
            raise ValueError(
                f"{what} label {quote(key)}: key and value are longer than {MAX_LABEL_BYTES} bytes"
            )
    total = _size(labels)
    if total > MAX_LABELS_BYTES:
        raise ValueError(f"{what} labels are {total} bytes in total, more than {MAX_LABELS_BYTES}")


def validate_annotations(*annotations: Mapping[str, str], what: str) -> None:
    """All annotations of one object (keys and values) within the API server's limit."""
    total = sum(_size(a) for a in annotations)
    if total > MAX_ANNOTATIONS_BYTES:
        raise ValueError(
            f"{what} annotations are {total} bytes in total, more than {MAX_ANNOTATIONS_BYTES}"
        )
    for items in annotations:
        if any(not key for key in items):
            raise ValueError(f"{what} annotations: a key must not be empty")


def validate_name(value: str, *, what: str) -> None:
    if len(value.encode()) > MAX_NAME_BYTES:
        raise ValueError(f"{what} {quote(value)} is longer than {MAX_NAME_BYTES} bytes")


def validate_image_ref(image: str) -> None:
    if len(image.encode()) > MAX_IMAGE_REF_BYTES:
        raise ValueError(f"image {quote(image)} is longer than {MAX_IMAGE_REF_BYTES} bytes")
