"""The seccomp filter of a container or a pod's pause container: ``linux.seccomp`` of its spec.

Two steps, so that everything but the file read is a pure function:

1. :func:`resolve_seccomp` decides *which* profile applies, from the Linux security context
   (``LinuxContainerSecurityContext`` or ``LinuxSandboxSecurityContext``: both carry the same
   three fields) and the daemon's :class:`SeccompSettings`. The answer is ``None`` (no filter),
   RuntimeDefault, or Localhost with an absolute file path.
2. :func:`seccomp_spec` builds the OCI object: pycri's default filter for the container's
   capabilities (:mod:`pycri.security.seccomp_default`), or the Localhost file's profile,
   checked and reduced to the OCI fields.

:func:`linux_seccomp` does both and reads a Localhost file in a worker thread
(``asyncio.to_thread``); it is what the create paths await. Tests call the two steps directly.

The rules, containerd's unless said otherwise (see ``docs/security.md`` for the reasons):

* Field parsing as in :mod:`pycri.security.profiles`: the structured ``seccomp`` field wins over
  ``seccomp_profile_path``; unknown strings, bare paths and stray ``localhost_ref`` are refused.
* Neither field set: :attr:`SeccompSettings.unset_profile` applies (containerd's
  ``unset_seccomp_profile``), empty by default, which means no filter, as the CRI says. kubelet
  sends RuntimeDefault itself when ``seccompDefault`` is on.
* Unconfined: no filter.
* Privileged: no filter for RuntimeDefault (a privileged container is meant to do anything, and
  kubelet's ``seccompDefault`` asks RuntimeDefault for it too), but a Localhost profile *is*
  applied: a file someone wrote and named is an explicit request. containerd drops even that;
  Docker applies it. pycri follows Docker here.
* Localhost: the path must be absolute, the file must exist, be at most 1 MiB of JSON and be an
  OCI ``LinuxSeccomp`` object. Docker's profile format (``archMap``, per-rule ``includes`` /
  ``excludes``) is refused instead of being half-understood: containerd silently ignores those
  fields, which applies conditional rules unconditionally and drops the compatibility
  architectures.
* A kernel without seccomp filters (``SeccompSettings.kernel_supported`` false): RuntimeDefault
  runs without a filter (logged at debug; ``pycri check`` and Status say so), a Localhost profile
  is refused. containerd refuses both, which would make every pod fail on such a node once
  kubelet's ``seccompDefault`` is on; CRI-O and Docker skip the default profile as pycri does.

Errors are :class:`pycri.errors.InvalidArgument`, naming the file when there is one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias, TypeGuard

from cri_api.v1 import api_pb2

from pycri.errors import InvalidArgument
from pycri.security.profiles import (
    ProfileKind,
    RequestedProfile,
    parse_profile_string,
    requested_profile,
)
from pycri.security.seccomp_default import default_profile

__all__ = [
    "MAX_PROFILE_BYTES",
    "SeccompSettings",
    "SecurityContext",
    "linux_seccomp",
    "load_localhost_profile",
    "parse_localhost_profile",
    "read_localhost_profile",
    "resolve_seccomp",
    "seccomp_spec",
    "validate_unset_profile",
]

log = logging.getLogger(__name__)

JsonDict = dict[str, Any]
SecurityContext: TypeAlias = (
    api_pb2.LinuxContainerSecurityContext | api_pb2.LinuxSandboxSecurityContext
)

MAX_PROFILE_BYTES = 1 << 20

# What runc 1.1 accepts (libcontainer/seccomp/config.go).
_ACTIONS = frozenset(
    {
        "SCMP_ACT_KILL",
        "SCMP_ACT_KILL_PROCESS",
        "SCMP_ACT_KILL_THREAD",
        "SCMP_ACT_TRAP",
        "SCMP_ACT_ERRNO",
        "SCMP_ACT_TRACE",
        "SCMP_ACT_ALLOW",
        "SCMP_ACT_LOG",
        "SCMP_ACT_NOTIFY",
    }
)
_OPERATORS = frozenset(
    {
        "SCMP_CMP_NE",
        "SCMP_CMP_LT",
        "SCMP_CMP_LE",
        "SCMP_CMP_EQ",
        "SCMP_CMP_GE",
        "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ",
    }
)
_ARCHITECTURES = frozenset(
    {
        "SCMP_ARCH_X86",
        "SCMP_ARCH_X86_64",
        "SCMP_ARCH_X32",
        "SCMP_ARCH_ARM",
        "SCMP_ARCH_AARCH64",
        "SCMP_ARCH_MIPS",
        "SCMP_ARCH_MIPS64",
        "SCMP_ARCH_MIPS64N32",
        "SCMP_ARCH_MIPSEL",
        "SCMP_ARCH_MIPSEL64",
        "SCMP_ARCH_MIPSEL64N32",
        "SCMP_ARCH_PPC",
        "SCMP_ARCH_PPC64",
        "SCMP_ARCH_PPC64LE",
        "SCMP_ARCH_S390",
        "SCMP_ARCH_S390X",
        "SCMP_ARCH_RISCV64",
    }
)
_MAX_SYSCALL_ARGS = 6
# Fields of Docker's profile format that have no OCI meaning.
_DOCKER_TOP_FIELDS = ("archMap",)
_DOCKER_RULE_FIELDS = ("includes", "excludes")


@dataclass(frozen=True, kw_only=True)
class SeccompSettings:
    """The daemon-wide facts and choices the resolution depends on."""

    # The kernel has seccomp filters (:func:`pycri.security.node.probe_node_security`).
    kernel_supported: bool = True
    # The profile, in the deprecated string form, for a container or pod that sets neither field
    # (containerd's ``unset_seccomp_profile``). Empty: no filter. Check it with
    # :func:`validate_unset_profile` when reading the configuration.
    unset_profile: str = ""


DEFAULT_SETTINGS = SeccompSettings()


def validate_unset_profile(value: str) -> None:
    """Raise ``ValueError`` if ``value`` is not a valid ``unset_profile`` setting."""
    try:
        requested = parse_profile_string(value, what="seccomp")
    except InvalidArgument as err:
        raise ValueError(err.message) from None
    if (
        requested is not None
        and requested.kind is ProfileKind.LOCALHOST
        and not posixpath.isabs(requested.ref)
    ):
        raise ValueError(f"seccomp profile {value!r}: the path must be absolute")


def resolve_seccomp(
    security: SecurityContext, *, settings: SeccompSettings = DEFAULT_SETTINGS
) -> RequestedProfile | None:
    """Which profile filters this container (or pause container): ``None`` for no filter."""
    structured = security.seccomp if security.HasField("seccomp") else None
    requested = requested_profile(structured, security.seccomp_profile_path, what="seccomp")
    if requested is None:
        requested = parse_profile_string(settings.unset_profile, what="seccomp")
    if requested is None or requested.kind is ProfileKind.UNCONFINED:
        return None
    if requested.kind is ProfileKind.LOCALHOST and not posixpath.isabs(requested.ref):
        raise InvalidArgument(
            f"seccomp profile {requested.ref!r} is not an absolute path "
            "(kubelet passes the full path below its seccomp directory)"
        )
    if security.privileged and requested.kind is ProfileKind.RUNTIME_DEFAULT:
        log.debug("seccomp: privileged, so RuntimeDefault means no filter")
        return None
    if not settings.kernel_supported:
        if requested.kind is ProfileKind.LOCALHOST:
            raise InvalidArgument(
                f"seccomp profile {requested.ref} cannot be applied: this node's kernel has no "
                "seccomp filter support"
            )
        log.debug("seccomp: the kernel has no seccomp filters; RuntimeDefault runs unfiltered")
        return None
    return requested


def read_localhost_profile(path: str) -> bytes:
    """The bytes of a Localhost profile file; blocking I/O (see :func:`load_localhost_profile`)."""
    try:
        with open(path, "rb") as profile:
            data = profile.read(MAX_PROFILE_BYTES + 1)
    except FileNotFoundError:
        raise InvalidArgument(f"seccomp profile {path} not found") from None
    except IsADirectoryError:
        raise InvalidArgument(f"seccomp profile {path} is a directory, not a file") from None
    except OSError as err:
        raise InvalidArgument(f"seccomp profile {path} cannot be read: {err.strerror}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise InvalidArgument(
            f"seccomp profile {path} is larger than {MAX_PROFILE_BYTES // 1024} KiB"
        )
    return data


async def load_localhost_profile(path: str) -> bytes:
    """:func:`read_localhost_profile` in a worker thread, off the event loop."""
    return await asyncio.to_thread(read_localhost_profile, path)


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v for v in value)


class _Invalid(Exception):
    pass


def _check_arg(arg: object, where: str) -> JsonDict:
    if not isinstance(arg, Mapping):
        raise _Invalid(f"{where} is not an object")
    index, value, value_two, op = (
        arg.get("index"),
        arg.get("value"),
        arg.get("valueTwo", 0),
        arg.get("op"),
    )
    if not (_is_int(index) and 0 <= index < _MAX_SYSCALL_ARGS):
        raise _Invalid(f"{where}: index must be 0 to {_MAX_SYSCALL_ARGS - 1}")
    if not (_is_int(value) and value >= 0 and _is_int(value_two) and value_two >= 0):
        raise _Invalid(f"{where}: value and valueTwo must be non-negative integers")
    if op not in _OPERATORS:
        raise _Invalid(f"{where}: unknown op {op!r}")
    return {"index": index, "value": value, "valueTwo": value_two, "op": op}


def _check_rule(rule: object, where: str) -> JsonDict:
    if not isinstance(rule, Mapping):
        raise _Invalid(f"{where} is not an object")
    for field in _DOCKER_RULE_FIELDS:
        if rule.get(field):
            raise _Invalid(
                f"{where} uses {field!r}, a field of Docker's profile format that pycri does not "
                "evaluate; write the rules for this node's capabilities in OCI format"
            )
    names = rule.get("names")
    if not (_is_str_list(names) and names):
        raise _Invalid(f"{where}: names must be a non-empty list of system call names")
    action = rule.get("action")
    if action not in _ACTIONS:
        raise _Invalid(f"{where}: unknown action {action!r}")
    checked: JsonDict = {"names": list(names), "action": action}
    if "errnoRet" in rule:
        if not (_is_int(rule["errnoRet"]) and rule["errnoRet"] >= 0):
            raise _Invalid(f"{where}: errnoRet must be a non-negative integer")
        checked["errnoRet"] = rule["errnoRet"]
    args = rule.get("args")
    if args is not None:
        if not isinstance(args, list):
            raise _Invalid(f"{where}: args must be a list")
        checked["args"] = [_check_arg(a, f"{where} args[{i}]") for i, a in enumerate(args)]
    return checked


def _check_profile(document: object) -> JsonDict:
    if not isinstance(document, Mapping):
        raise _Invalid("it is not a JSON object")
    for field in _DOCKER_TOP_FIELDS:
        if document.get(field):
            raise _Invalid(
                f"it uses {field!r}, a field of Docker's profile format; pycri reads OCI-format "
                "profiles (list the architectures in 'architectures')"
            )
    action = document.get("defaultAction")
    if not action:
        raise _Invalid("it has no defaultAction (runc would then apply no filter at all)")
    if action not in _ACTIONS:
        raise _Invalid(f"unknown defaultAction {action!r}")
    checked: JsonDict = {"defaultAction": action}
    if "defaultErrnoRet" in document:
        if not (_is_int(document["defaultErrnoRet"]) and document["defaultErrnoRet"] >= 0):
            raise _Invalid("defaultErrnoRet must be a non-negative integer")
        checked["defaultErrnoRet"] = document["defaultErrnoRet"]
    architectures = document.get("architectures")
    if architectures is not None:
        if not _is_str_list(architectures):
            raise _Invalid("architectures must be a list of names")
        unknown = sorted(set(architectures) - _ARCHITECTURES)
        if unknown:
            raise _Invalid(f"unknown architectures {', '.join(unknown)}")
        checked["architectures"] = list(architectures)
    flags = document.get("flags")
    if flags is not None:
        if not _is_str_list(flags):
            raise _Invalid("flags must be a list of names")
        checked["flags"] = list(flags)
    for field in ("listenerPath", "listenerMetadata"):
        if field in document:
            if not isinstance(document[field], str):
                raise _Invalid(f"{field} must be a string")
            checked[field] = document[field]
    syscalls = document.get("syscalls", [])
    if not isinstance(syscalls, list):
        raise _Invalid("syscalls must be a list")
    checked["syscalls"] = [_check_rule(r, f"syscalls[{i}]") for i, r in enumerate(syscalls)]
    return checked


def parse_localhost_profile(data: bytes, *, path: str) -> JsonDict:
    """The OCI ``linux.seccomp`` object of a Localhost profile file's bytes.

    Only the OCI fields are kept (comments and other extra keys are dropped, as containerd's
    decoding drops them); anything runc would refuse or misread is refused here, naming ``path``.
    """
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, ValueError) as err:
        raise InvalidArgument(f"seccomp profile {path} is not valid JSON: {err}") from None
    try:
        return _check_profile(document)
    except _Invalid as err:
        raise InvalidArgument(f"seccomp profile {path} is not usable: {err}") from None


def seccomp_spec(
    choice: RequestedProfile | None,
    *,
    capabilities: Iterable[str],
    localhost_profile: bytes | None = None,
    machine: str | None = None,
) -> JsonDict | None:
    """The ``linux.seccomp`` object for a :func:`resolve_seccomp` answer; ``None``: no filter.

    ``capabilities``: the container's capability set (the spec's ``process.capabilities``
    bounding set), which opens the capability-conditional rules of the default filter.
    ``localhost_profile``: the file's bytes, required for a Localhost choice. ``machine``: the
    host architecture (``uname -m``); this host's when ``None``.
    """
    if choice is None:
        return None
    if choice.kind is ProfileKind.RUNTIME_DEFAULT:
        return default_profile(capabilities, machine=machine)
    if choice.kind is not ProfileKind.LOCALHOST:
        raise ValueError(f"not a seccomp filter choice: {choice}")
    if localhost_profile is None:
        raise ValueError(f"the content of seccomp profile {choice.ref} was not passed")
    return parse_localhost_profile(localhost_profile, path=choice.ref)


async def linux_seccomp(
    security: SecurityContext,
    *,
    capabilities: Iterable[str],
    settings: SeccompSettings = DEFAULT_SETTINGS,
    machine: str | None = None,
) -> JsonDict | None:
    """Resolve, read a Localhost file off the loop if needed, and build ``linux.seccomp``."""
    choice = resolve_seccomp(security, settings=settings)
    data = None
    if choice is not None and choice.kind is ProfileKind.LOCALHOST:
        data = await load_localhost_profile(choice.ref)
    return seccomp_spec(choice, capabilities=capabilities, localhost_profile=data, machine=machine)
