"""The mounts of a spec: the standard kernel filesystems, bind mounts, and their order."""

from __future__ import annotations

from collections.abc import Sequence

from cri_api.v1 import api_pb2

from pycri.oci.common import JsonDict

ETC_HOSTNAME = "/etc/hostname"
ETC_HOSTS = "/etc/hosts"
ETC_RESOLV_CONF = "/etc/resolv.conf"
DEV_SHM = "/dev/shm"

PROPAGATION_OPTION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def standard_mounts(*, writable_sysfs: bool, with_cgroupfs: bool) -> list[JsonDict]:
    sysfs_mode = "rw" if writable_sysfs else "ro"
    mounts: list[JsonDict] = [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": DEV_SHM,
            "type": "tmpfs",
            "source": "shm",
            "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", sysfs_mode],
        },
    ]
    if with_cgroupfs:
        # Read-only cgroupfs lets programs read their own limits (JVMs, Go runtimes) without
        # being able to change them; cgroup v1 has no cgroup namespace to hide the host's tree.
        mounts.append(
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", sysfs_mode],
            }
        )
    return mounts


def bind_mount(*, source: str, destination: str, options: Sequence[str]) -> JsonDict:
    return {"destination": destination, "type": "bind", "source": source, "options": list(options)}


def _path_depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


def _is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def merge_mounts(standard: list[JsonDict], extra: list[JsonDict]) -> list[JsonDict]:
    """Standard mounts not overridden by ``extra``, then ``extra`` with parents before children.

    runc mounts in list order, so a mount over /data/x must come after the one over /data; the
    sort is stable, keeping the caller's order among mounts of equal depth.
    """
    destinations = {m["destination"] for m in extra}
    replaces_dev = "/dev" in destinations
    kept = [
        m
        for m in standard
        if m["destination"] not in destinations
        and not (replaces_dev and _is_under(m["destination"], "/dev"))
    ]
    return kept + sorted(extra, key=lambda m: _path_depth(m["destination"]))
