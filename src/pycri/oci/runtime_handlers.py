"""Runtime handlers (Kubernetes RuntimeClass): which OCI runtime a pod's containers run under.

A handler is one ``[runtimes.NAME]`` table of the config: a containerd runtime (shim) type and,
for containerd's runc shim, the OCI binary it runs and its options. RunPodSandbox names the
handler (``runtime_handler``; empty means ``default_runtime_handler``); pycri records the
name as asked (PodSandboxStatus echoes it, "" included, as critest checks) and the one it
resolved to in the pod's metadata, so every container of the pod, and the pod after any
restart of pycri or change of the default, runs under the same one. The shim reads the
handler's options from each containerd container record (``RuncOptions``), so the choice lives
where the task is made.

Each runc-shim handler gets its own state root (``STATE/runtimes/NAME`` unless the config sets
``Root``): nothing is kept under containerd's default ``/run/containerd/runc``, and two OCI
runtimes never share a state directory.

What a handler can do is probed once at start (:meth:`RuntimeHandlers.probe`), never assumed:

- the binary must be found (an absolute path, or a name on PATH); a handler whose binary is
  missing stays configured but unusable: RunPodSandbox refuses it naming the reason, and
  Status does not list it;
- ``recursive_read_only_mounts``: the binary's ``features`` output (the OCI runtime-spec
  features document) lists the ``rro`` mount option, *and* the kernel has ``mount_setattr(2)``
  (Linux 5.12+), which is how a runtime makes a bind mount read-only recursively. A binary
  without a ``features`` command (crun 1.8) says nothing, so the answer is no;
- a crun that cannot run here is unusable: in cgroup hybrid mode (v1 hierarchies with the v2
  one at ``/sys/fs/cgroup/unified``) crun refuses every container while a controller is bound
  to v2 ("cgroups in hybrid mode not supported"), which the probe reads from
  ``unified/cgroup.controllers``;
- ``user_namespaces``: always false: pycri does not implement pod user namespaces
  (``NamespaceOption.userns_options``), whatever the handler and kernel could do.

Handlers of other shim types (``io.containerd.kata.v2``, ...) are usable when their shim binary
(``containerd-shim-kata-v2``) is on PATH; pycri knows nothing of their features, so both are
false.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import errno
import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pycri.cgroups import hybrid_v2_controllers
from pycri.config import RUNC_SHIM_TYPES, Config, RuntimeHandlerConfig
from pycri.containerd.types import RuncOptions
from pycri.oci.commands import ask
from pycri.paths import Paths

log = logging.getLogger(__name__)

FEATURES_TIMEOUT_S = 10.0
# mount_setattr(2): 442 in the unified syscall table of every 64-bit arch pycri runs on.
_SYS_MOUNT_SETATTR = 442
_USERNS_NOTE = "pycri does not implement pod user namespaces"


@dataclass(frozen=True, kw_only=True)
class HandlerFeatures:
    """What a handler really supports, with the reason for each answer (verbose Status)."""

    recursive_read_only_mounts: bool = False
    user_namespaces: bool = False
    notes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class RuntimeHandler:
    name: str
    runtime_type: str
    # for the runc shim: its options (binary resolved to an absolute path); None for others
    options: RuncOptions | None
    features: HandlerFeatures = field(default_factory=HandlerFeatures)
    # why the handler cannot be used ("" when it can), found by the probe
    error: str = ""

    @property
    def binary(self) -> str:
        return self.options.binary_name if self.options is not None else ""

    def describe(self) -> dict[str, Any]:
        """The verbose Status view of one handler."""
        return {
            "runtimeType": self.runtime_type,
            "runtimeOptions": self.options.to_json() if self.options is not None else {},
            "usable": not self.error,
            "error": self.error,
            "recursiveReadOnlyMounts": self.features.recursive_read_only_mounts,
            "userNamespaces": self.features.user_namespaces,
            "notes": dict(self.features.notes),
        }


class UnknownHandlerError(LookupError):
    """No ``[runtimes.NAME]`` table has this name."""


class UnusableHandlerError(RuntimeError):
    """The handler is configured, but the probe found it cannot run containers."""


def kernel_has_mount_setattr() -> bool:
    """True when the kernel has mount_setattr(2): called with a bad fd it fails with EBADF or
    EINVAL when it exists, ENOSYS when it does not. Nothing is changed."""
    libc = ctypes.CDLL(None, use_errno=True)
    result = libc.syscall(_SYS_MOUNT_SETATTR, -1, b"", 0, None, 0)
    return result == 0 or ctypes.get_errno() != errno.ENOSYS


def _runc_options(name: str, handler: RuntimeHandlerConfig, *, paths: Paths) -> RuncOptions:
    opts = handler.options
    return RuncOptions(
        binary_name=handler.binary,
        root=str(opts.get("Root") or paths.runtime_root(name)),
        no_pivot_root=bool(opts.get("NoPivotRoot", False)),
        no_new_keyring=bool(opts.get("NoNewKeyring", False)),
        shim_cgroup=str(opts.get("ShimCgroup", "")),
        io_uid=int(opts.get("IoUid", 0)),
        io_gid=int(opts.get("IoGid", 0)),
        systemd_cgroup=bool(opts.get("SystemdCgroup", False)),
    )


def _shim_binary(runtime_type: str) -> str:
    """containerd's shim binary of a type: io.containerd.kata.v2 → containerd-shim-kata-v2."""
    parts = runtime_type.split(".")
    return "containerd-shim-" + "-".join(parts[2:])


def _which(name: str) -> str | None:
    found = shutil.which(name)
    return os.path.abspath(found) if found else None


async def runtime_features(binary: str) -> dict[str, Any] | None:
    """The binary's OCI features document (``BINARY features``), None when it has none."""
    code, out = await ask(binary, "features", timeout=FEATURES_TIMEOUT_S)
    if code != 0:
        return None
    try:
        doc = json.loads(out)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _rro_answer(features: dict[str, Any] | None, *, kernel: bool) -> tuple[bool, str]:
    if features is None:
        return False, "the binary has no 'features' command, so it does not say it supports rro"
    if "rro" not in (features.get("mountOptions") or []):
        return False, "the binary's features do not list the rro mount option"
    if not kernel:
        return False, "the kernel lacks mount_setattr(2) (Linux 5.12+)"
    return True, "the binary lists the rro mount option and the kernel has mount_setattr(2)"


async def _cannot_run_here(binary: str) -> str:
    """Why this binary cannot create containers on this host ("" if nothing is known)."""
    controllers = await asyncio.to_thread(hybrid_v2_controllers)
    if not controllers:
        return ""
    code, out = await ask(binary, "--version", timeout=FEATURES_TIMEOUT_S)
    version = out.partition("\n")[0]
    if code != 0 or not version.startswith("crun"):
        return ""
    return (
        f"{version} refuses containers in this host's cgroup hybrid mode while cgroup v2 "
        f"(/sys/fs/cgroup/unified) has controllers ({', '.join(controllers)}); it needs a "
        "pure cgroup v1 or v2 host"
    )


class RuntimeHandlers:
    """The configured handlers, probed at start; looked up by RunPodSandbox and CreateContainer."""

    def __init__(self, config: Config, *, paths: Paths) -> None:
        self.default = config.default_runtime_handler
        self._handlers: dict[str, RuntimeHandler] = {}
        for name, handler in config.runtimes.items():
            runc = handler.runtime_type in RUNC_SHIM_TYPES
            self._handlers[name] = RuntimeHandler(
                name=name,
                runtime_type=handler.runtime_type,
                options=_runc_options(name, handler, paths=paths) if runc else None,
                error="not probed yet",
            )

    async def probe(self) -> None:
        """Find each handler's binary and ask it and the kernel what they support."""
        kernel_rro = await asyncio.to_thread(kernel_has_mount_setattr)
        for name, handler in list(self._handlers.items()):
            self._handlers[name] = probed = await self._probe(handler, kernel_rro=kernel_rro)
            log.debug(
                "runtime handler probed",
                extra={
                    "handler": name,
                    "runtime_type": probed.runtime_type,
                    "binary": probed.binary,
                    "usable": not probed.error,
                    "error": probed.error,
                    "recursive_read_only_mounts": probed.features.recursive_read_only_mounts,
                },
            )

    async def _probe(self, handler: RuntimeHandler, *, kernel_rro: bool) -> RuntimeHandler:
        notes = {"userNamespaces": _USERNS_NOTE}
        if handler.options is None:
            shim = _shim_binary(handler.runtime_type)
            found = await asyncio.to_thread(shutil.which, shim)
            notes["recursiveReadOnlyMounts"] = "pycri cannot ask a non-runc shim"
            return RuntimeHandler(
                name=handler.name,
                runtime_type=handler.runtime_type,
                options=None,
                features=HandlerFeatures(notes=notes),
                error="" if found else f"shim binary {shim} not found on PATH",
            )
        wanted = handler.options.binary_name or "runc"
        binary = await asyncio.to_thread(_which, wanted)
        if binary is None:
            return RuntimeHandler(
                name=handler.name,
                runtime_type=handler.runtime_type,
                options=handler.options,
                features=HandlerFeatures(notes=notes),
                error=f"OCI runtime binary {wanted!r} not found"
                + ("" if os.path.isabs(wanted) else " on PATH"),
            )
        unusable = await _cannot_run_here(binary)
        if unusable:
            return RuntimeHandler(
                name=handler.name,
                runtime_type=handler.runtime_type,
                options=dataclasses.replace(handler.options, binary_name=binary),
                features=HandlerFeatures(notes=notes),
                error=unusable,
            )
        rro, notes["recursiveReadOnlyMounts"] = _rro_answer(
            await runtime_features(binary), kernel=kernel_rro
        )
        options = dataclasses.replace(handler.options, binary_name=binary)
        return RuntimeHandler(
            name=handler.name,
            runtime_type=handler.runtime_type,
            options=options,
            features=HandlerFeatures(recursive_read_only_mounts=rro, notes=notes),
        )

    def resolve(self, name: str) -> RuntimeHandler:
        """The handler a pod asked for ("" → the default). Raises ``UnknownHandlerError`` or
        ``UnusableHandlerError`` with a message for the CRI client."""
        handler = self._handlers.get(name or self.default)
        if handler is None:
            raise UnknownHandlerError(
                f"runtime handler {name!r} is not configured (configured: "
                f"{', '.join(sorted(self._handlers))}; add a [runtimes.{name}] table)"
            )
        if handler.error:
            raise UnusableHandlerError(f"runtime handler {handler.name!r}: {handler.error}")
        return handler

    def all(self) -> list[RuntimeHandler]:
        return [self._handlers[name] for name in sorted(self._handlers)]

    def usable(self) -> list[RuntimeHandler]:
        return [h for h in self.all() if not h.error]
