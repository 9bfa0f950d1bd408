"""The container checkpoint archive kubelet's checkpoint API asks for, as containerd and CRI-O
write it (the layout ``checkpointctl`` reads and CRI-O restores from):

    checkpoint/        CRIU's images of the processes (inventory.img, pages-*.img, ...)
    config.dump        who the container was: id, name, image name and reference, runtime,
                       created and checkpointed times (checkpointctl's ContainerConfig)
    spec.dump          the container's OCI runtime spec
    status.dump        its CRI ContainerStatus (JSON)
    rootfs-diff.tar    what the container changed in its root filesystem: its writable layer
                       as an OCI layer tarball (overlay whiteouts become ``.wh.`` entries)
    container.log      its CRI log so far, when it has one
    dump.log, stats-dump   CRIU's log and timing statistics, when CRIU left them

Everything is blocking file work: callers run it in a thread. The archive is written to a
temp file next to the requested location and renamed into place only when complete, so a
failure leaves no partial archive at the path kubelet gave.
"""

from __future__ import annotations

import io
import os
import secrets
import stat
import tarfile
from collections.abc import Mapping
from pathlib import Path

CHECKPOINT_DIR = "checkpoint"
CONFIG_DUMP = "config.dump"
SPEC_DUMP = "spec.dump"
STATUS_DUMP = "status.dump"
ROOTFS_DIFF = "rootfs-diff.tar"
CONTAINER_LOG = "container.log"
CRIU_FILES = ("dump.log", "stats-dump")  # left by CRIU in its work or image dir

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
_OPAQUE_XATTR = "trusted.overlay.opaque"


def _is_whiteout(st: os.stat_result) -> bool:
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == 0


def _is_opaque(path: str) -> bool:
    try:
        return os.getxattr(path, _OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


def _empty_member(name: str, *, mtime: float) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mtime = int(mtime)
    info.mode = 0o600
    return info


def write_rootfs_diff(upper_dir: Path, out: Path) -> None:
    """The overlay upper dir ``upper_dir`` as an OCI layer tarball at ``out``.

    A whiteout (a 0:0 character device) becomes an empty ``.wh.NAME`` entry, an opaque
    directory gets a ``.wh..wh..opq`` entry; hard links are kept as links; sockets are left
    out (a tar cannot hold them, and a restore recreates them from CRIU's images).
    """
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(upper_dir):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, upper_dir)
            for name in sorted(dirnames) + sorted(filenames):
                path = os.path.join(dirpath, name)
                arcname = os.path.normpath(os.path.join(rel_dir, name))
                st = os.lstat(path)
                if _is_whiteout(st):
                    head, tail = os.path.split(arcname)
                    whiteout = os.path.join(head, WHITEOUT_PREFIX + tail)
                    tar.addfile(_empty_member(whiteout, mtime=st.st_mtime))
                    continue
                if stat.S_ISSOCK(st.st_mode):
                    continue
                tar.add(path, arcname=arcname, recursive=False)
                if stat.S_ISDIR(st.st_mode) and _is_opaque(path):
                    marker = os.path.join(arcname, OPAQUE_MARKER)
                    tar.addfile(_empty_member(marker, mtime=st.st_mtime))


def write_archive(
    location: Path,
    *,
    images_dir: Path,
    documents: Mapping[str, bytes],
    rootfs_diff: Path,
    files: Mapping[str, Path],
) -> None:
    """Write the checkpoint archive at ``location`` (temp file, fsync, rename).

    ``documents`` are small members written from memory (config.dump, spec.dump, ...);
    ``files`` are copied from disk under their archive names, when they exist.
    """
    tmp = location.with_name(f".{location.name}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as raw:
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
                tar.add(images_dir, arcname=CHECKPOINT_DIR)
                for name, data in documents.items():
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    info.mode = 0o600
                    tar.addfile(info, io.BytesIO(data))
                tar.add(rootfs_diff, arcname=ROOTFS_DIFF)
                for name, path in files.items():
                    if path.is_file():
                        tar.add(path, arcname=name)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, location)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
