"""Linux capabilities in containers: the names, the default set, and what a security context
gives a container.

A container gets Docker's and containerd's default set unless its security context adds or
drops some (``ALL`` included); privileged containers get everything the runtime holds.
Nothing outside the runtime's bounding set is ever asked for: runc would fail at start.
"""

from __future__ import annotations

from collections.abc import Iterable

from cri_api.v1 import api_pb2

from pycri.oci.common import JsonDict

# Every capability runc 1.1 knows, in kernel bit order (index == capability number).
ALL_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
)
_CAPABILITY_NUMBER = {name: number for number, name in enumerate(ALL_CAPABILITIES)}

# The set a container gets when its security context adds and drops nothing (Docker's and
# containerd's default; kubelet assumes it when it computes what "drop: [NET_RAW]" means).
DEFAULT_CAPABILITIES: tuple[str, ...] = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
)


def capabilities_from_mask(mask: int) -> frozenset[str]:
    """The capability names whose bits are set in ``mask`` (``CapBnd`` of /proc/PID/status)."""
    return frozenset(name for number, name in enumerate(ALL_CAPABILITIES) if mask >> number & 1)


def capability_name(name: str) -> str:
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    canonical = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if canonical not in _CAPABILITY_NUMBER:
        raise ValueError(f"unknown capability {name!r}")
    return canonical


def in_kernel_order(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=_CAPABILITY_NUMBER.__getitem__)


def sandbox_capabilities(available: frozenset[str]) -> list[str]:
    """The pause container's set: the default one, within the runtime's bounding set."""
    return in_kernel_order(set(DEFAULT_CAPABILITIES) & available)


def container_capabilities(
    security: api_pb2.LinuxContainerSecurityContext, *, available: frozenset[str]
) -> JsonDict:
    """The capability sets of a container; ``available`` is the runtime's bounding set."""
    if security.privileged:
        everything = in_kernel_order(available)
        return {"bounding": everything, "effective": everything, "permitted": everything}

    added = [capability_name(c) for c in security.capabilities.add_capabilities]
    dropped = [capability_name(c) for c in security.capabilities.drop_capabilities]
    ambient = [capability_name(c) for c in security.capabilities.add_ambient_capabilities]
    if "ALL" in ambient:
        raise ValueError("ALL is not allowed in add_ambient_capabilities")
    for name in (*added, *ambient):
        if name != "ALL" and name not in available:
            raise ValueError(f"capability {name} is not in the runtime's bounding set on this host")

    # ALL is applied before the named ones so that "add ALL, drop X" and "drop ALL, add X" both
    # mean what they say.
    caps = set(DEFAULT_CAPABILITIES) & available
    if "ALL" in added:
        caps = set(available)
    if "ALL" in dropped:
        caps = set()
    caps |= {name for name in added if name != "ALL"}
    caps -= {name for name in dropped if name != "ALL"}
    # An ambient capability only survives exec if it is also permitted and inheritable.
    caps |= set(ambient)

    ordered = in_kernel_order(caps)
    capabilities: JsonDict = {"bounding": ordered, "effective": ordered, "permitted": ordered}
    if ambient:
        capabilities["inheritable"] = in_kernel_order(ambient)
        capabilities["ambient"] = in_kernel_order(ambient)
    return capabilities
