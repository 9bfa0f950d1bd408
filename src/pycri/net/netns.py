"""Network namespaces pinned by bind mounts under pycri's state dir, made without shelling out.

A pod's network namespace must outlive its pause process (CNI DEL after the pause task died,
recovery after a restart), so it is created up front and pinned by bind-mounting its nsfs
handle onto ``STATE/netns/<sandbox id>``; the pause container then joins that path.

Port-forward needs a connection *inside* a pod's namespace: ``connect_in_netns`` makes the
socket there (on a short-lived thread that joins the namespace) and connects it from the
event loop.

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


def _socket_in_thread(path: Path, family: int) -> socket.socket:
    """A non-blocking TCP socket of the network namespace pinned at ``path``.

    A socket belongs to the namespace of the thread that created it, for life; so only its
    creation needs the namespace. It happens on a short-lived thread that joins the namespace
    (``setns`` changes the calling thread's) and then ends, never on a pooled one that would
    stay in the pod's namespace.
    """
    made: list[socket.socket] = []
    failure: list[BaseException] = []

    def work() -> None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _check(_libc.setns(fd, CLONE_NEWNET), f"setns into {path}")
            finally:
                os.close(fd)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            made.append(sock)
        except BaseException as err:
            failure.append(err)

    thread = threading.Thread(target=work, name="netns-socket")
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return made[0]


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


async def connect_in_netns(
    path: Path | None, port: int, *, timeout: float
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to ``localhost:port`` inside the namespace pinned at ``path`` (the
    host's with ``None``): 127.0.0.1 first, then ::1, as a server may listen on either.

    The connect itself runs on the event loop (the socket already lives in the namespace);
    ``ConnectionRefusedError`` (or another ``OSError``) when nothing listens there.
    """
    loop = asyncio.get_running_loop()
    first: OSError | None = None
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            if path is None:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setblocking(False)
            else:
                sock = await asyncio.to_thread(_socket_in_thread, path, family)
        except OSError as err:  # e.g. no IPv6 in that namespace
            first = first or err
            continue
        try:
            async with asyncio.timeout(timeout):
                await loop.sock_connect(sock, (host, port))
            return await asyncio.open_connection(sock=sock)
        except OSError as err:
            sock.close()
            first = first or err  # the IPv4 answer says most: report it
        except BaseException:
            sock.close()
            raise
    assert first is not None
    raise first
