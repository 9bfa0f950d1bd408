"""Host devices in containers: validation, the device cgroup rules, and the host lookup.

``device_from_host`` is the only function of the spec builders that touches the filesystem
(it stats device nodes); ``container_spec`` takes it as ``resolve_device`` so tests can pass a
fake.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass

from cri_api.v1 import api_pb2

from pycri.oci.common import JsonDict
from pycri.oci.validation import has_dot_dot


def validate_device(device: api_pb2.Device) -> None:
    for what, path in (("container_path", device.container_path), ("host_path", device.host_path)):
        if not posixpath.isabs(path):
            raise ValueError(f"device {what} {path!r} is not an absolute path")
        if has_dot_dot(path):
            raise ValueError(f"device {what} {path!r} must not contain '..'")
    device_access(device.permissions)


def device_access(permissions: str) -> str:
    # Empty permissions mean full access, as in Docker's --device.
    access = permissions or "rwm"
    if set(access) - set("rwm"):
        raise ValueError(f"device permissions {permissions!r} may only contain 'r', 'w' and 'm'")
    return access


@dataclass(frozen=True, kw_only=True)
class OciDevice:
    """A host device node to create in the container and allow in its device cgroup."""

    path: str  # inside the container
    type: str  # "c" or "b"
    major: int
    minor: int
    file_mode: int
    uid: int
    gid: int
    access: str  # a subset of "rwm"


DeviceResolver = Callable[[str, str, str], list[OciDevice]]


def device_from_host(host_path: str, container_path: str, permissions: str) -> list[OciDevice]:
    """Stat a host device (following symlinks) and describe it for the spec.

    A directory yields every device node below it, each at the same relative path under
    ``container_path`` (so ``/dev/snd`` brings all sound devices).
    """
    access = device_access(permissions)
    info = os.stat(host_path)
    if stat.S_ISDIR(info.st_mode):
        found = []
        for directory, _subdirs, names in os.walk(host_path):
            for name in sorted(names):
                full = os.path.join(directory, name)
                try:
                    entry = os.stat(full)
                except FileNotFoundError:
                    continue  # a device that vanished or a dangling link
                if stat.S_ISCHR(entry.st_mode) or stat.S_ISBLK(entry.st_mode):
                    relative = os.path.relpath(full, host_path)
                    found.append(
                        _oci_device(posixpath.join(container_path, relative), entry, access)
                    )
        return found
    if not (stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)):
        raise ValueError(f"{host_path!r} is not a device node")
    return [_oci_device(container_path, info, access)]


def _oci_device(container_path: str, info: os.stat_result, access: str) -> OciDevice:
    return OciDevice(
        path=container_path,
        type="c" if stat.S_ISCHR(info.st_mode) else "b",
        major=os.major(info.st_rdev),
        minor=os.minor(info.st_rdev),
        file_mode=stat.S_IMODE(info.st_mode),
        uid=info.st_uid,
        gid=info.st_gid,
        access=access,
    )


def default_device_rules(*, allow_all: bool) -> list[JsonDict]:
    # Deny everything, then allow what the container was given; runc itself appends the rules for
    # the devices every container needs (null, zero, full, random, urandom, tty, ptmx, pts).
    return [{"allow": allow_all, "access": "rwm"}]
