"""Network namespaces pinned by bind mounts under pycri's state dir, made without shelling out.

A pod's network namespace must outlive its pause process (CNI DEL after the pause task died,
recovery after a restart), so it is created up front and pinned by bind-mounting its nsfs
handle onto ``STATE/netns/<sandbox id>``; the pause container then joins that path.

Creating one needs ``unshare(CLONE_NEWNET)``, which changes the namespace of the calling
*thread*. So it runs on a short-lived dedicated thread (never a pooled executor thread, which
would be left in the new namespace), which also brings ``lo`` up inside it (runc does not
for a namespace it joins) and then ends. Removal unmounts (lazily: a process may still hold
it) and unlinks the pin; the namespace dies with its last user.

A pin lost while its pod still runs (an admin's umount, a bug) can be re-made from the pause
process's ``/proc/<pid>/ns/net`` (``NetNS.pin``): recovery does that, so DEL still runs in
the pod's namespace and the veth is removed with it.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
import threading
from pathlib import Path

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _create_in_thread(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            _loopback_up()
            source = f"/proc/self/task/{threading.get_native_id()}/ns/net".encode()
            _check(
                _libc.mount(source, str(path).encode(), None, MS_BIND, None),
                f"bind-mount netns onto {path}",
            )
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=work, name="netns-create")
    thread.start()
    thread.join()
    if failure:
        path.unlink(missing_ok=True)
        raise failure[0]


def _pin_sync(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o444)
    os.close(fd)
    source = f"/proc/{pid}/ns/net".encode()
    _check(
        _libc.mount(source, str(path).encode(), None, MS_BIND, None),
        f"bind-mount netns of pid {pid} onto {path}",
    )


def _remove_sync(path: Path) -> None:
    result = _libc.umount2(str(path).encode(), MNT_DETACH)
    if result != 0:
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOENT):  # not mounted / gone: already removed
            raise OSError(err, f"umount {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)


def is_pinned(path: Path) -> bool:
    """True when ``path`` is a mounted network namespace."""
    try:
        return os.stat(path).st_dev != os.stat(path.parent).st_dev or _is_nsfs(path)
    except OSError:
        return False


def _is_nsfs(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as mounts:
        return any(line.split()[4] == target for line in mounts)


class NetNS:
    """Creates and removes pinned network namespaces under ``base``."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def path_for(self, sandbox_id: str) -> Path:
        return self.base / sandbox_id

    async def create(self, sandbox_id: str) -> Path:
        path = self.path_for(sandbox_id)
        await asyncio.to_thread(_create_in_thread, path)
        return path

    async def pin(self, path: Path, *, pid: int) -> None:
        """Pin the network namespace of process ``pid`` at ``path`` (which is not pinned)."""
        await asyncio.to_thread(_pin_sync, path, pid)

    async def remove(self, path: Path) -> None:
        """Idempotent: a missing or already unmounted pin is fine."""
        await asyncio.to_thread(_remove_sync, path)
