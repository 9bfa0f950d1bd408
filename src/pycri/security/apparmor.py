"""The AppArmor profile of a container: ``process.apparmorProfile`` of its spec.

Three concerns, kept apart so that each can be tested without a kernel that has AppArmor:

* **The host.** :func:`probe_apparmor` reads whether the kernel enforces AppArmor (as runc decides
  it: ``/sys/kernel/security/apparmor`` exists and ``/sys/module/apparmor/parameters/enabled`` is
  ``Y``) and where ``apparmor_parser`` is. Paths and the lookup are keyword parameters.
* **pycri's default profile.** :func:`default_profile_text` renders it (name
  :data:`DEFAULT_PROFILE_NAME`). :class:`AppArmor` loads it with ``apparmor_parser -Kr`` (text on
  stdin, replacing any older version) the first time a container needs it, once per daemon: the
  load is behind a lock, and a failed load is retried by the next container. The loading is a
  :class:`ProfileLoader` (a typed seam: tests pass a fake, the daemon :class:`ParserLoader`).
* **The CRI fields.** :func:`resolve_apparmor` reads the structured ``apparmor`` field or the
  deprecated ``apparmor_profile`` string (``runtime/default``, ``localhost/NAME``,
  ``unconfined``, empty; parsed by :mod:`pycri.security.profiles`), and
  :meth:`AppArmor.container_profile` turns the answer into a loaded profile's name.

The rules follow containerd's CRI plugin, except where AppArmor is off:

* AppArmor enabled: nothing asked means RuntimeDefault (kubernetes#51746, as containerd).
  RuntimeDefault is pycri's default profile, except for privileged containers, which run
  unconfined. Localhost names a profile that must already be loaded (it is looked up in
  ``/sys/kernel/security/apparmor/profiles``), and applies to privileged containers too.
  Unconfined means no profile.
* AppArmor not enabled (this machine, many distributions): RuntimeDefault is skipped with a debug
  log, Localhost is refused. containerd refuses both, but kubelet may ask RuntimeDefault of every
  pod, so refusing would make such nodes unusable while confining nothing.
* The pause container gets no AppArmor profile, as with containerd: it runs one tiny program,
  and its seccomp filter already confines it.

Errors: :class:`pycri.errors.InvalidArgument` for requests that cannot be honoured,
:class:`pycri.errors.FailedPrecondition` when the default profile cannot be loaded for want of
``apparmor_parser``, :class:`pycri.errors.Internal` when the parser fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from cri_api.v1 import api_pb2

from pycri.errors import FailedPrecondition, Internal, InvalidArgument
from pycri.security.profiles import (
    RUNTIME_DEFAULT,
    ProfileKind,
    RequestedProfile,
    requested_profile,
)

__all__ = [
    "DEFAULT_PROFILE_NAME",
    "AppArmor",
    "AppArmorHost",
    "ParserLoader",
    "ProfileLoader",
    "default_profile_text",
    "probe_apparmor",
    "profile_is_listed",
    "resolve_apparmor",
]

log = logging.getLogger(__name__)

DEFAULT_PROFILE_NAME = "pycri-default"
ENABLED_PATH = "/sys/module/apparmor/parameters/enabled"
SECURITYFS_DIR = "/sys/kernel/security/apparmor"
PROFILES_PATH = f"{SECURITYFS_DIR}/profiles"
PARSER = "apparmor_parser"
PARSER_TIMEOUT_S = 30.0

_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


# --------------------------------------------------------------------------------------------
# The host
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AppArmorHost:
    """Whether AppArmor can confine containers here, and the tool to load profiles with."""

    # The kernel enforces AppArmor, by the test runc itself makes before applying a profile.
    kernel_enabled: bool = False
    # apparmor_parser's path, or None if it is not installed.
    parser: str | None = None


def probe_apparmor(
    *,
    enabled_path: str = ENABLED_PATH,
    securityfs_dir: str = SECURITYFS_DIR,
    parser: str = PARSER,
    which: Callable[[str], str | None] = shutil.which,
) -> AppArmorHost:
    """Read :class:`AppArmorHost` from sysfs and ``PATH`` (cheap; call once at start-up)."""
    enabled = False
    if os.path.isdir(securityfs_dir):
        try:
            with open(enabled_path, encoding="ascii") as flag:
                enabled = flag.read(1) == "Y"
        except (OSError, UnicodeDecodeError):
            enabled = False
    return AppArmorHost(kernel_enabled=enabled, parser=which(parser))


def profile_is_listed(profiles: str, name: str) -> bool:
    """Whether ``name`` is among the loaded profiles, given the text of
    ``/sys/kernel/security/apparmor/profiles`` (lines of the form ``NAME (MODE)``)."""
    for line in profiles.splitlines():
        listed, sep, _mode = line.rpartition(" (")
        if sep and listed == name:
            return True
    return False


# --------------------------------------------------------------------------------------------
# pycri's default profile
# --------------------------------------------------------------------------------------------

# The policy in one sentence: what the namespaces, the capability set and the seccomp filter
# already allow stays allowed, and the kernel interfaces that reach past the container get a
# second wall in front of them. Every rule carries its reason.
_TEMPLATE = """\
# pycri's default AppArmor profile for containers ({name}).
# Generated by pycri and replaced (apparmor_parser -r) the first time a container needs it after
# each daemon start: edit the template in pycri.security.apparmor, not this text.

profile {name} flags=(attach_disconnected,mediate_deleted) {{
  # Files, sockets and capabilities in general: the container's mount and network namespaces
  # and its capability set are the real limits; this profile only adds the denials below.
  file,
  network,
  capability,

  # Signals and ptrace stay among the processes of this profile; the runtime and kubelet
  # (unconfined) may still signal them to stop a container.
  signal (send, receive) peer={name},
  signal (receive) peer=unconfined,
  ptrace (trace, read, tracedby, readby) peer={name},

  # No new mounts and no root switching, whatever the capabilities: a mount is the usual first
  # step out of a container. Unmounting only ever removes the container's own mounts.
  deny mount,
  deny pivot_root,
  umount,

  # /proc/sys holds the kernel's tunables; only the network namespace's own (net/) are the
  # container's to change.
  deny /proc/sys/{{abi,crypto,debug,dev,fs,kernel,sunrpc,user,vm}}/** w,
  # Host-wide switches and raw kernel memory.
  deny /proc/sysrq-trigger rwklx,
  deny /proc/kcore rwklx,
  deny /proc/kmem rwklx,
  deny /proc/mem rwklx,

  # /sys describes the host's hardware and kernel: readable where the kernel allows it,
  # never writable (cgroup files under /sys/fs/cgroup are not covered here).
  deny /sys/{{block,bus,class,dev,devices,firmware,hypervisor,kernel,module,power}}/** wklx,
  deny /sys/fs/{{bpf,btrfs,ext4,fuse,pstore,selinux,xfs}}/** wklx,
  # Firmware tables and the security and debug file systems are not even readable.
  deny /sys/firmware/** rwklx,
  deny /sys/kernel/security/** rwklx,
  deny /sys/kernel/debug/** rwklx,
}}
"""


def default_profile_text(*, name: str = DEFAULT_PROFILE_NAME) -> str:
    """The text of pycri's default profile, named ``name``, for ``apparmor_parser``."""
    if not _PROFILE_NAME.fullmatch(name):
        raise ValueError(f"unsuitable AppArmor profile name {name!r}")
    return _TEMPLATE.format(name=name)


class ProfileLoader(Protocol):
    """Loads (or replaces) AppArmor profiles in the kernel."""

    async def load(self, text: str) -> None:
        """Load the profiles in ``text``; raise :class:`pycri.errors.CRIError` on failure."""
        ...


class ParserLoader:
    """:class:`ProfileLoader` running ``apparmor_parser -Kr`` with the text on stdin.

    ``-r`` replaces a loaded profile of the same name, so loading is idempotent; ``-K`` keeps the
    parser from writing its binary cache (pycri regenerates the text anyway).
    """

    def __init__(self, *, parser: str, timeout: float = PARSER_TIMEOUT_S) -> None:
        self._parser = parser
        self._timeout = timeout

    async def load(self, text: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            self._parser,
            "-Kr",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(text.encode()), self._timeout)
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            detail = stderr.decode(errors="replace").strip() or "no message"
            raise Internal(
                f"loading an AppArmor profile: {self._parser} exited with {proc.returncode}: "
                f"{detail}"
            )


# --------------------------------------------------------------------------------------------
# The CRI fields
# --------------------------------------------------------------------------------------------


def resolve_apparmor(
    security: api_pb2.LinuxContainerSecurityContext, *, enabled: bool
) -> RequestedProfile | None:
    """Which AppArmor profile confines this container: ``None`` for none.

    The answer is RuntimeDefault (pycri's default profile) or Localhost (a loaded profile's
    name); :meth:`AppArmor.container_profile` makes it a name. ``enabled``: the kernel enforces
    AppArmor.
    """
    structured = security.apparmor if security.HasField("apparmor") else None
    requested = requested_profile(structured, security.apparmor_profile, what="AppArmor")
    if not enabled:
        if requested is not None and requested.kind is ProfileKind.LOCALHOST:
            raise InvalidArgument(
                f"AppArmor profile {requested.ref!r} requested, but AppArmor is not enabled on "
                "this node"
            )
        if requested is not None and requested.kind is ProfileKind.RUNTIME_DEFAULT:
            log.debug("AppArmor is not enabled on this node: RuntimeDefault skipped")
        return None
    if requested is None:
        requested = RUNTIME_DEFAULT
    if requested.kind is ProfileKind.UNCONFINED:
        return None
    if requested.kind is ProfileKind.RUNTIME_DEFAULT and security.privileged:
        return None
    return requested


class AppArmor:
    """AppArmor for the daemon: resolves containers' profiles and loads the default one."""

    def __init__(
        self,
        *,
        host: AppArmorHost,
        loader: ProfileLoader | None = None,
        profiles_path: str = PROFILES_PATH,
        default_name: str = DEFAULT_PROFILE_NAME,
    ) -> None:
        """``loader`` defaults to :class:`ParserLoader` when ``host`` has a parser."""
        self.host = host
        if loader is None and host.parser is not None:
            loader = ParserLoader(parser=host.parser)
        self._loader = loader
        self._profiles_path = profiles_path
        default_profile_text(name=default_name)  # refuses an unsuitable name now, not later
        self._default_name = default_name
        self._default_loaded = False
        self._load_lock = asyncio.Lock()

    @property
    def enabled(self) -> bool:
        return self.host.kernel_enabled

    async def ensure_default_profile(self) -> str:
        """Load pycri's default profile unless this daemon already did; return its name."""
        if self._default_loaded:
            return self._default_name
        async with self._load_lock:
            if not self._default_loaded:
                if self._loader is None:
                    raise FailedPrecondition(
                        f"AppArmor is enabled but {PARSER} is not installed, so the default "
                        f"profile {self._default_name} cannot be loaded (apt-get install apparmor)"
                    )
                await self._loader.load(default_profile_text(name=self._default_name))
                self._default_loaded = True
                log.info("AppArmor profile %s loaded", self._default_name)
        return self._default_name

    async def is_loaded(self, name: str) -> bool:
        """Whether the kernel has a profile called ``name`` (reads securityfs off the loop)."""

        def read() -> str:
            with open(self._profiles_path, encoding="utf-8", errors="replace") as profiles:
                return profiles.read()

        try:
            text = await asyncio.to_thread(read)
        except OSError as err:
            raise Internal(f"cannot read {self._profiles_path}: {err.strerror}") from None
        return profile_is_listed(text, name)

    async def container_profile(
        self, security: api_pb2.LinuxContainerSecurityContext
    ) -> str | None:
        """The ``process.apparmorProfile`` of a container, or ``None`` for none."""
        choice = resolve_apparmor(security, enabled=self.enabled)
        if choice is None:
            return None
        if choice.kind is ProfileKind.RUNTIME_DEFAULT:
            return await self.ensure_default_profile()
        if not await self.is_loaded(choice.ref):
            raise InvalidArgument(f"AppArmor profile {choice.ref!r} is not loaded on this node")
        return choice.ref
