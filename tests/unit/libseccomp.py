"""A small ctypes binding to the host's libseccomp, to check profiles the way runc reads them.

runc hands each rule of an OCI seccomp profile to libseccomp (``seccomp_rule_add_array``) and
skips, with only a debug log, any name libseccomp cannot resolve. These helpers resolve names per
architecture and compile a whole profile into BPF (without loading it), so the unit tests can
prove that every name is known and that libseccomp accepts every rule, for every architecture,
without root and without runc. Tests skip when ``libseccomp.so.2`` is missing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any

# enum scmp_compare
_OPS = {
    "SCMP_CMP_NE": 1,
    "SCMP_CMP_LT": 2,
    "SCMP_CMP_LE": 3,
    "SCMP_CMP_EQ": 4,
    "SCMP_CMP_GE": 5,
    "SCMP_CMP_GT": 6,
    "SCMP_CMP_MASKED_EQ": 7,
}
_ACT_ALLOW = 0x7FFF0000
_ACT_ERRNO = 0x00050000
_NR_SCMP_ERROR = -1


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def load() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    lib.seccomp_arch_resolve_name.restype = ctypes.c_uint32
    lib.seccomp_arch_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name_arch.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name_arch.argtypes = [ctypes.c_uint32, ctypes.c_char_p]
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_remove.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_arch_native.restype = ctypes.c_uint32
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p,
        ctypes.c_uint32,
        ctypes.c_int,
        ctypes.c_uint,
        ctypes.POINTER(_ArgCmp),
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def arch_token(lib: ctypes.CDLL, oci_arch: str) -> int:
    """libseccomp's token for an OCI name such as ``SCMP_ARCH_X86_64``."""
    token = int(lib.seccomp_arch_resolve_name(oci_arch.removeprefix("SCMP_ARCH_").lower().encode()))
    if token == 0:
        raise ValueError(f"libseccomp does not know architecture {oci_arch}")
    return token


def resolve(lib: ctypes.CDLL, oci_arch: str, name: str) -> int:
    """The syscall number of ``name`` on ``oci_arch``: >= 0 a real call; -1 unknown to libseccomp;
    other negative values are libseccomp's placeholders for calls the architecture lacks (or, from
    -100 to -299, reaches only through the socketcall/ipc multiplexers)."""
    return int(lib.seccomp_syscall_resolve_name_arch(arch_token(lib, oci_arch), name.encode()))


def is_unknown(number: int) -> bool:
    return number == _NR_SCMP_ERROR


def is_real(number: int) -> bool:
    return number >= 0 or -300 < number <= -100


def _action(rule: dict[str, Any], default: int) -> int:
    if rule["action"] == "SCMP_ACT_ALLOW":
        return _ACT_ALLOW
    if rule["action"] == "SCMP_ACT_ERRNO":
        return _ACT_ERRNO | (rule.get("errnoRet", default) & 0xFFFF)
    raise ValueError(f"unsupported action in test helper: {rule['action']}")


def compile_profile(lib: ctypes.CDLL, profile: dict[str, Any]) -> None:
    """Build the BPF program for ``profile`` as runc does; raise OSError on the first refusal."""
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    default_errno = profile.get("defaultErrnoRet", 1)
    default_action = _ACT_ERRNO | default_errno
    ctx = lib.seccomp_init(default_action)
    if not ctx:
        raise OSError("seccomp_init failed")
    try:
        tokens = [arch_token(lib, arch) for arch in profile.get("architectures", [])]
        native = int(lib.seccomp_arch_native())
        if tokens and native not in tokens:
            # Another machine's profile: a filter holds one byte order only, so start empty.
            lib.seccomp_arch_remove(ctx, native)
        for token in tokens:
            rc = lib.seccomp_arch_add(ctx, token)
            if rc not in (0, -17):  # -EEXIST: the native architecture is always there
                raise OSError(-rc, f"seccomp_arch_add {token:#x}")
        for rule in profile["syscalls"]:
            action = _action(rule, default_errno)
            if action == default_action:
                continue  # runc skips rules that repeat the default action
            args = rule.get("args", [])
            array = (_ArgCmp * max(len(args), 1))(
                *(
                    _ArgCmp(a["index"], _OPS[a["op"]], a["value"], a.get("valueTwo", 0))
                    for a in args
                )
            )
            for name in rule["names"]:
                number = int(lib.seccomp_syscall_resolve_name_arch(0, name.encode()))
                if is_unknown(number):
                    continue  # as runc does; the name tests decide whether that is acceptable
                rc = lib.seccomp_rule_add_array(ctx, action, number, len(args), array)
                if rc != 0:
                    raise OSError(-rc, f"seccomp_rule_add {name} {args}: {os.strerror(-rc)}")
        with open(os.devnull, "wb") as sink:
            rc = lib.seccomp_export_bpf(ctx, sink.fileno())
            if rc != 0:
                raise OSError(-rc, "seccomp_export_bpf")
    finally:
        lib.seccomp_release(ctx)
