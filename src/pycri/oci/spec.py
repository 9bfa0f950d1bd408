"""Build the OCI runtime specs that runc runs: one for a pod's pause container, one per container.

The CRI hands us a ``PodSandboxConfig`` or a ``ContainerConfig`` plus the image's config; runc
wants an OCI runtime-spec 1.0.2 document (``config.json``). This module is the translation, and
nothing else:

* Every builder is a pure function of its keyword arguments and returns a fresh ``dict`` ready for
  ``json.dumps``. It reads no files, asks containerd nothing and never consults the clock, so each
  CRI rule can be tested in isolation and the same inputs always give the same spec.
* What must come from the machine is passed in explicitly: the sandbox's pid (to join its
  namespaces), the daemon's current ``oom_score_adj``, the user resolved from the image's
  ``/etc/passwd`` (:func:`resolve_user` does the resolving, the caller reads the files), host device
  nodes (:func:`device_from_host` stats them; :func:`container_spec` takes it as
  ``resolve_device`` so tests can pass a fake) and the facts about the host that decide what runc
  can do (:class:`HostFeatures`, read once at start-up by :func:`probe_host_features`). Those two
  are the only functions here that touch the host.
* Invalid input raises ``ValueError`` with a message meant for the CRI client; the service layer
  maps it to ``INVALID_ARGUMENT``.

The shape of the result follows what containerd's CRI plugin (1.6) produces, so pods behave as they
do on a containerd node: the same default capabilities, masked paths and mounts, the same rules for
command/args, env and user, the same annotations. Where this machine differs from a stock node the
builders are conservative: no ``oomScoreAdj`` below the daemon's own and no ``RLIMIT_NOFILE`` above
the runtime's hard limit (both need ``CAP_SYS_RESOURCE``, which this VM drops), no capability
outside the runtime's bounding set, and no hugetlb limits without the hugetlb controller.
"""

from __future__ import annotations

import os
import posixpath
import re
import resource
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cri_api.v1 import api_pb2

from pycri.images.model import ImageConfig

__all__ = [
    "ALL_CAPABILITIES",
    "ANNOTATION_CONTAINER_NAME",
    "ANNOTATION_CONTAINER_TYPE",
    "ANNOTATION_IMAGE_NAME",
    "ANNOTATION_SANDBOX_ID",
    "ANNOTATION_SANDBOX_LOG_DIRECTORY",
    "ANNOTATION_SANDBOX_NAME",
    "ANNOTATION_SANDBOX_NAMESPACE",
    "ANNOTATION_SANDBOX_UID",
    "DEFAULT_CAPABILITIES",
    "DEFAULT_MASKED_PATHS",
    "DEFAULT_NOFILE_LIMIT",
    "DEFAULT_READONLY_PATHS",
    "SANDBOX_OOM_SCORE_ADJ",
    "DeviceResolver",
    "HostFeatures",
    "OciDevice",
    "ProcessUser",
    "capabilities_from_mask",
    "container_spec",
    "device_from_host",
    "linux_resources_to_oci",
    "merge_env",
    "probe_host_features",
    "process_args",
    "resolve_user",
    "sandbox_spec",
    "validate_log_path",
    "validate_mount",
    "with_linux_resources",
]

JsonDict = dict[str, Any]

OCI_VERSION = "1.0.2"

# Relative to the bundle directory, where containerd's shim mounts the snapshot.
ROOTFS_PATH = "rootfs"

DEFAULT_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

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

# Kernel interfaces that leak host information or allow host changes; hidden unless privileged.
DEFAULT_MASKED_PATHS: tuple[str, ...] = (
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/proc/scsi",
)
DEFAULT_READONLY_PATHS: tuple[str, ...] = (
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
)

DEFAULT_NOFILE_LIMIT = 1048576

# The pause process should be the last thing the OOM killer picks; clamped like any other value.
SANDBOX_OOM_SCORE_ADJ = -998
# The pause process needs next to no CPU; the smallest weight cgroup v1 accepts.
SANDBOX_CPU_SHARES = 2

# Annotation keys as containerd's CRI plugin sets them; OCI hooks and runtimes (kata, gVisor, NRI
# plugins) read these to tell sandboxes from containers and to group containers by pod.
ANNOTATION_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
ANNOTATION_CONTAINER_NAME = "io.kubernetes.cri.container-name"
ANNOTATION_IMAGE_NAME = "io.kubernetes.cri.image-name"
ANNOTATION_SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
ANNOTATION_SANDBOX_NAME = "io.kubernetes.cri.sandbox-name"
ANNOTATION_SANDBOX_NAMESPACE = "io.kubernetes.cri.sandbox-namespace"
ANNOTATION_SANDBOX_UID = "io.kubernetes.cri.sandbox-uid"
ANNOTATION_SANDBOX_LOG_DIRECTORY = "io.kubernetes.cri.sandbox-log-directory"
CONTAINER_TYPE_SANDBOX = "sandbox"
CONTAINER_TYPE_CONTAINER = "container"

_ETC_HOSTNAME = "/etc/hostname"
_ETC_HOSTS = "/etc/hosts"
_ETC_RESOLV_CONF = "/etc/resolv.conf"
_DEV_SHM = "/dev/shm"

_MAX_ID = 2**32 - 2  # (uid_t)-1 means "no change" to the kernel, so it is never a real id
_DIGITS = re.compile(r"[0-9]+")

_PROPAGATION_OPTION = {
    api_pb2.PROPAGATION_PRIVATE: "rprivate",
    api_pb2.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    api_pb2.PROPAGATION_BIDIRECTIONAL: "rshared",
}


# --------------------------------------------------------------------------------------------
# Facts about the host
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class HostFeatures:
    """What the host lets runc do, so a spec never asks for something that makes runc fail.

    The defaults describe an unrestricted host; :func:`probe_host_features` reads the real values.
    """

    # The runtime's capability bounding set: runc cannot grant a capability it does not hold.
    available_capabilities: frozenset[str] = frozenset(ALL_CAPABILITIES)
    # The runtime's hard RLIMIT_NOFILE; raising it needs CAP_SYS_RESOURCE. None: do not clamp.
    nofile_hard_limit: int | None = None
    # cgroup v1 has memory.memsw.* only with swap accounting on; without it a swap limit fails.
    swap_limit_supported: bool = True
    # kubelet sends limits for every huge page size; without the hugetlb controller they must go.
    hugetlb_supported: bool = True


def probe_host_features(*, cgroup_root: str = "/sys/fs/cgroup") -> HostFeatures:
    """Read :class:`HostFeatures` from this process and the cgroup v1 hierarchy.

    Call it once at start-up: pycri and containerd run as root under the same bounding set and
    limits, so this process's values stand for the runtime's.
    """
    bounding_mask = 0
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("CapBnd:"):
                bounding_mask = int(line.split(":", 1)[1].strip(), 16)
                break
    _, nofile_hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return HostFeatures(
        available_capabilities=capabilities_from_mask(bounding_mask),
        nofile_hard_limit=None if nofile_hard == resource.RLIM_INFINITY else nofile_hard,
        swap_limit_supported=os.path.exists(
            os.path.join(cgroup_root, "memory", "memory.memsw.limit_in_bytes")
        ),
        hugetlb_supported=os.path.isdir(os.path.join(cgroup_root, "hugetlb")),
    )


def capabilities_from_mask(mask: int) -> frozenset[str]:
    """The capability names whose bits are set in ``mask`` (``CapBnd`` of /proc/PID/status)."""
    return frozenset(name for number, name in enumerate(ALL_CAPABILITIES) if mask >> number & 1)


# --------------------------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ProcessUser:
    """The identity a container's process runs as, already resolved against the image's files."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...] = ()
    # The passwd name of ``uid`` when the image has one; empty for an anonymous numeric uid.
    username: str = ""


@dataclass(frozen=True)
class _PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class _GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _parse_passwd(text: str) -> list[_PasswdEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        # Skip what libc skips too: comments, NIS "+" lines, short or non-numeric lines.
        if len(fields) < 4 or not fields[0] or fields[0][0] in "#+-":
            continue
        if not (_DIGITS.fullmatch(fields[2]) and _DIGITS.fullmatch(fields[3])):
            continue
        entries.append(_PasswdEntry(fields[0], int(fields[2]), int(fields[3])))
    return entries


def _parse_group(text: str) -> list[_GroupEntry]:
    entries = []
    for line in text.splitlines():
        fields = line.strip().split(":")
        if len(fields) < 3 or not fields[0] or fields[0][0] in "#+-":
            continue
        if not _DIGITS.fullmatch(fields[2]):
            continue
        members = (
            tuple(m.strip() for m in fields[3].split(",") if m.strip()) if len(fields) > 3 else ()
        )
        entries.append(_GroupEntry(fields[0], int(fields[2]), members))
    return entries


def _checked_id(value: int, *, what: str) -> int:
    if not 0 <= value <= _MAX_ID:
        raise ValueError(f"{what} {value} is out of range (0..{_MAX_ID})")
    return value


def resolve_user(
    *,
    image_user: str,
    run_as_user: int | None,
    run_as_username: str,
    run_as_group: int | None,
    supplemental_groups: Sequence[int],
    passwd: str,
    group: str,
    strict_supplemental_groups: bool = False,
) -> ProcessUser:
    """Resolve who a container runs as, by the Docker/containerd rules.

    The CRI security context wins over the image's ``USER``: ``run_as_username`` or ``run_as_user``
    picks the user, ``run_as_group`` the primary group. Otherwise the image user applies, in one of
    the forms ``uid``, ``uid:gid``, ``name``, ``name:group`` (either side numeric or a name).
    A name must exist in ``passwd`` (the image's ``/etc/passwd`` text); a numeric uid need not, and
    then runs with gid 0 unless a group is given. With no group given the primary group is the
    passwd entry's. The additional groups are the primary group first (so dropping to them never
    loses it), then every group in ``group`` (the image's ``/etc/group`` text) that lists the user
    (unless ``strict_supplemental_groups``: the CRI "Strict" policy ignores the image's files), then
    ``supplemental_groups``; duplicates removed.

    Raises ``ValueError`` for an unknown user or group name, a group without a user (the CRI says
    the runtime must refuse it), both a uid and a username, and ids out of range.
    """
    if run_as_user is not None and run_as_username:
        raise ValueError(
            f"run_as_user ({run_as_user}) and run_as_username ({run_as_username!r}) are mutually "
            "exclusive"
        )
    if run_as_username:
        user_part, group_part = run_as_username, ""
    elif run_as_user is not None:
        user_part, group_part = str(_checked_id(run_as_user, what="run_as_user")), ""
    else:
        if run_as_group is not None:
            raise ValueError("run_as_group is set without run_as_user or run_as_username")
        user_part, _, group_part = image_user.partition(":")
    if run_as_group is not None:
        group_part = str(_checked_id(run_as_group, what="run_as_group"))

    passwd_entries = _parse_passwd(passwd)
    group_entries = _parse_group(group)

    # An empty user (no USER in the image, or USER ":gid") is root, as in Docker.
    user_part = user_part or "0"
    if _DIGITS.fullmatch(user_part):
        uid = _checked_id(int(user_part), what="uid")
        entry = next((e for e in passwd_entries if e.uid == uid), None)
        username = entry.name if entry else ""
        gid = entry.gid if entry else 0
    else:
        entry = next((e for e in passwd_entries if e.name == user_part), None)
        if entry is None:
            raise ValueError(f"user {user_part!r} not found in the image's /etc/passwd")
        uid, gid, username = entry.uid, entry.gid, entry.name

    if group_part:
        if _DIGITS.fullmatch(group_part):
            gid = _checked_id(int(group_part), what="gid")
        else:
            group_entry = next((g for g in group_entries if g.name == group_part), None)
            if group_entry is None:
                raise ValueError(f"group {group_part!r} not found in the image's /etc/group")
            gid = group_entry.gid

    additional = [gid]
    if username and not strict_supplemental_groups:
        additional.extend(g.gid for g in group_entries if username in g.members)
    additional.extend(_checked_id(g, what="supplemental group") for g in supplemental_groups)
    return ProcessUser(
        uid=uid, gid=gid, additional_gids=tuple(dict.fromkeys(additional)), username=username
    )


def _user_json(user: ProcessUser) -> JsonDict:
    user_json: JsonDict = {"uid": user.uid, "gid": user.gid}
    if user.additional_gids:
        user_json["additionalGids"] = list(user.additional_gids)
    return user_json


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _has_dot_dot(path: str) -> bool:
    return ".." in path.split("/")


def validate_mount(mount: api_pb2.Mount) -> None:
    """Refuse a CRI mount runc would misplace or that could escape its intended location."""
    for what, path in (("container_path", mount.container_path), ("host_path", mount.host_path)):
        if not path:
            raise ValueError(f"mount {what} is empty")
        if not posixpath.isabs(path):
            raise ValueError(f"mount {what} {path!r} is not an absolute path")
        if _has_dot_dot(path):
            raise ValueError(f"mount {what} {path!r} must not contain '..'")
    # runc 1.1 knows neither recursive read-only nor idmapped bind mounts; silently making the
    # mount writable or unmapped would be worse than refusing.
    if mount.recursive_read_only:
        raise ValueError(
            f"mount {mount.container_path!r}: recursive read-only mounts are not supported"
        )
    if mount.uidMappings or mount.gidMappings:
        raise ValueError(f"mount {mount.container_path!r}: idmapped mounts are not supported")
    if mount.HasField("image") and mount.image.image:
        raise ValueError(f"mount {mount.container_path!r}: image volumes are not supported")
    if mount.propagation not in _PROPAGATION_OPTION:
        raise ValueError(f"mount {mount.container_path!r}: unknown propagation {mount.propagation}")


def validate_log_path(log_path: str) -> None:
    """Refuse a container log path that would leave the sandbox's log directory.

    The CRI defines ``ContainerConfig.log_path`` as relative to ``PodSandboxConfig.log_directory``;
    empty means no log.
    """
    if posixpath.isabs(log_path):
        raise ValueError(
            f"log_path {log_path!r} must be relative to the sandbox log directory, not absolute"
        )
    if _has_dot_dot(log_path):
        raise ValueError(f"log_path {log_path!r} must not contain '..'")


def _validate_device(device: api_pb2.Device) -> None:
    for what, path in (("container_path", device.container_path), ("host_path", device.host_path)):
        if not posixpath.isabs(path):
            raise ValueError(f"device {what} {path!r} is not an absolute path")
        if _has_dot_dot(path):
            raise ValueError(f"device {what} {path!r} must not contain '..'")
    _device_access(device.permissions)


def _device_access(permissions: str) -> str:
    # Empty permissions mean full access, as in Docker's --device.
    access = permissions or "rwm"
    if set(access) - set("rwm"):
        raise ValueError(f"device permissions {permissions!r} may only contain 'r', 'w' and 'm'")
    return access


# --------------------------------------------------------------------------------------------
# Devices (the only filesystem access in this module)
# --------------------------------------------------------------------------------------------


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
    access = _device_access(permissions)
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


# --------------------------------------------------------------------------------------------
# Process: args, env, capabilities, limits
# --------------------------------------------------------------------------------------------


def process_args(*, command: Sequence[str], args: Sequence[str], image: ImageConfig) -> list[str]:
    """The argv of a container, by the Docker rules kubelet relies on.

    A CRI ``command`` replaces the image's ENTRYPOINT and drops its CMD; CRI ``args`` replace the
    image's CMD. So: command given → command + args; only args → ENTRYPOINT + args; neither →
    ENTRYPOINT + CMD. An ENTRYPOINT of one empty string is Docker's way of clearing it.
    """
    if command:
        argv = [*command, *args]
    else:
        entrypoint = [] if list(image.entrypoint) == [""] else list(image.entrypoint)
        argv = [*entrypoint, *(args or image.cmd)]
    if not argv:
        raise ValueError("no command specified: neither the container config nor the image has one")
    return argv


def merge_env(*layers: Iterable[str]) -> list[str]:
    """Merge ``KEY=value`` lists; a later layer's key replaces the earlier value in place."""
    merged: dict[str, str] = {}
    for layer in layers:
        for entry in layer:
            key, _, _ = entry.partition("=")
            merged[key] = entry
    return list(merged.values())


def _container_env(
    config: api_pb2.ContainerConfig, *, hostname: str, image: ImageConfig
) -> list[str]:
    for env in config.envs:
        if not env.key or "=" in env.key:
            raise ValueError(f"invalid environment variable name {env.key!r}")
    # HOSTNAME first so that the image or the pod spec can still override it.
    hostname_env = [f"HOSTNAME={hostname}"] if hostname else []
    return merge_env(
        [DEFAULT_PATH_ENV],
        hostname_env,
        image.env,
        (f"{env.key}={env.value}" for env in config.envs),
    )


def _working_dir(config_dir: str, image_dir: str) -> str:
    if config_dir:
        if not posixpath.isabs(config_dir):
            raise ValueError(f"working_dir {config_dir!r} is not an absolute path")
        return config_dir
    if image_dir:
        # Images built by old tools may carry a relative WORKDIR; Docker anchors it at /.
        return image_dir if posixpath.isabs(image_dir) else "/" + image_dir
    return "/"


def _capability_name(name: str) -> str:
    upper = name.strip().upper()
    if upper == "ALL":
        return upper
    canonical = upper if upper.startswith("CAP_") else f"CAP_{upper}"
    if canonical not in _CAPABILITY_NUMBER:
        raise ValueError(f"unknown capability {name!r}")
    return canonical


def _in_kernel_order(names: Iterable[str]) -> list[str]:
    return sorted(set(names), key=_CAPABILITY_NUMBER.__getitem__)


def _container_capabilities(
    security: api_pb2.LinuxContainerSecurityContext, *, host: HostFeatures
) -> JsonDict:
    available = host.available_capabilities
    if security.privileged:
        everything = _in_kernel_order(available)
        return {"bounding": everything, "effective": everything, "permitted": everything}

    added = [_capability_name(c) for c in security.capabilities.add_capabilities]
    dropped = [_capability_name(c) for c in security.capabilities.drop_capabilities]
    ambient = [_capability_name(c) for c in security.capabilities.add_ambient_capabilities]
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

    ordered = _in_kernel_order(caps)
    capabilities: JsonDict = {"bounding": ordered, "effective": ordered, "permitted": ordered}
    if ambient:
        capabilities["inheritable"] = _in_kernel_order(ambient)
        capabilities["ambient"] = _in_kernel_order(ambient)
    return capabilities


def _rlimits(host: HostFeatures) -> list[JsonDict]:
    nofile = DEFAULT_NOFILE_LIMIT
    if host.nofile_hard_limit is not None:
        # Raising a hard limit needs CAP_SYS_RESOURCE; asking for more than the runtime has makes
        # runc fail at start.
        nofile = min(nofile, host.nofile_hard_limit)
    return [{"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}]


def _oom_score_adj(requested: int, *, current: int) -> int:
    # Lowering oom_score_adj below the parent's needs CAP_SYS_RESOURCE, which this machine drops;
    # runc then fails with a misleading error, so ask for no less than what we have.
    return max(requested, current)


# --------------------------------------------------------------------------------------------
# Resources
# --------------------------------------------------------------------------------------------


def linux_resources_to_oci(
    resources: api_pb2.LinuxContainerResources, *, host: HostFeatures | None = None
) -> JsonDict:
    """The ``linux.resources`` fields for CPU, memory, huge pages and unified cgroup settings.

    Zero or empty CRI fields mean "not set" and are left out. Device rules are not included (they
    depend on the container's devices, not on the resources). ``oom_score_adj`` belongs to the
    process, not to ``linux.resources``, and is not included either.
    """
    host = host or HostFeatures()
    result: JsonDict = {}

    cpu: JsonDict = {}
    if resources.cpu_shares:
        cpu["shares"] = resources.cpu_shares
    if resources.cpu_quota:
        cpu["quota"] = resources.cpu_quota
    if resources.cpu_period:
        cpu["period"] = resources.cpu_period
    if resources.cpuset_cpus:
        cpu["cpus"] = resources.cpuset_cpus
    if resources.cpuset_mems:
        cpu["mems"] = resources.cpuset_mems
    if cpu:
        result["cpu"] = cpu

    memory: JsonDict = {}
    if resources.memory_limit_in_bytes:
        memory["limit"] = resources.memory_limit_in_bytes
        if host.swap_limit_supported and not resources.memory_swap_limit_in_bytes:
            # memory+swap equal to memory: no swap unless asked for, as kubelet expects.
            memory["swap"] = resources.memory_limit_in_bytes
    if resources.memory_swap_limit_in_bytes and host.swap_limit_supported:
        memory["swap"] = resources.memory_swap_limit_in_bytes
    if memory:
        result["memory"] = memory

    if resources.hugepage_limits and host.hugetlb_supported:
        result["hugepageLimits"] = [
            {"pageSize": limit.page_size, "limit": limit.limit}
            for limit in resources.hugepage_limits
        ]

    if resources.unified:
        result["unified"] = dict(sorted(resources.unified.items()))
    return result


def with_linux_resources(
    spec: Mapping[str, Any],
    resources: api_pb2.LinuxContainerResources,
    *,
    host: HostFeatures | None = None,
) -> JsonDict:
    """A copy of ``spec`` with ``resources`` applied, for UpdateContainerResources.

    Fields the update sets replace the old ones; fields it leaves at zero keep their old value
    (kubelet sends the whole set, crictl may send a few). Device rules are kept.
    """
    update = linux_resources_to_oci(resources, host=host)
    new_spec: JsonDict = _deep_copy(spec)
    linux = new_spec.setdefault("linux", {})
    old = linux.setdefault("resources", {})
    for section in ("cpu", "memory"):
        if section in update:
            old[section] = {**old.get(section, {}), **update[section]}
    for section in ("hugepageLimits", "unified"):
        if section in update:
            old[section] = update[section]
    return new_spec


def _deep_copy(value: Any) -> Any:
    # Specs are plain JSON data; copying by structure is exact and much cheaper than copy.deepcopy.
    if isinstance(value, Mapping):
        return {key: _deep_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_deep_copy(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------
# Mounts
# --------------------------------------------------------------------------------------------


def _standard_mounts(*, writable_sysfs: bool, with_cgroupfs: bool) -> list[JsonDict]:
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
            "destination": _DEV_SHM,
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


def _bind_mount(*, source: str, destination: str, options: Sequence[str]) -> JsonDict:
    return {"destination": destination, "type": "bind", "source": source, "options": list(options)}


def _path_depth(path: str) -> int:
    return len([part for part in path.split("/") if part])


def _is_under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _merge_mounts(standard: list[JsonDict], extra: list[JsonDict]) -> list[JsonDict]:
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


# --------------------------------------------------------------------------------------------
# Namespaces and security helpers
# --------------------------------------------------------------------------------------------


def _namespace_options(config: api_pb2.PodSandboxConfig) -> api_pb2.NamespaceOption:
    return config.linux.security_context.namespace_options


def _namespace(kind: str, path: str | None = None) -> JsonDict:
    return {"type": kind, "path": path} if path else {"type": kind}


def _masked_and_readonly_paths(
    security: api_pb2.LinuxContainerSecurityContext,
) -> tuple[list[str], list[str]]:
    if security.privileged:
        return [], []
    # proto3 cannot tell an empty list from an absent one; kubelet sends the defaults explicitly
    # for the Default proc mount type, so empty means "runtime default" here.
    masked = list(security.masked_paths) or list(DEFAULT_MASKED_PATHS)
    readonly = list(security.readonly_paths) or list(DEFAULT_READONLY_PATHS)
    return masked, readonly


def _default_device_rules(*, allow_all: bool) -> list[JsonDict]:
    # Deny everything, then allow what the container was given; runc itself appends the rules for
    # the devices every container needs (null, zero, full, random, urandom, tty, ptmx, pts).
    return [{"allow": allow_all, "access": "rwm"}]


# --------------------------------------------------------------------------------------------
# Sandbox
# --------------------------------------------------------------------------------------------


def sandbox_spec(
    *,
    sandbox_id: str,
    config: api_pb2.PodSandboxConfig,
    image: ImageConfig,
    netns_path: str | None,
    hostname_path: str | None,
    resolv_conf_path: str | None,
    hosts_path: str | None,
    cgroups_path: str,
    current_oom_score_adj: int,
    shm_path: str | None = None,
    user: ProcessUser | None = None,
    host: HostFeatures | None = None,
) -> JsonDict:
    """The spec of a pod's pause container, which holds the pod's namespaces.

    It gets its own mount, IPC, UTS and PID namespaces, and joins the network namespace bind-mounted
    at ``netns_path`` (a fresh one when ``None``), except where the pod asks for the host's: host
    network means neither a network nor a UTS namespace (and no hostname: the pod has the node's),
    host PID or IPC means no PID or IPC namespace. ``shm_path``, if given, is the pod's shared
    ``/dev/shm`` (a tmpfs the caller mounted) that every container of the pod will also mount;
    with host IPC the host's ``/dev/shm`` is used instead.

    The pause process runs as ``user`` if given, else as the sandbox security context's
    ``run_as_user``/``run_as_group``, else as the image's numeric USER (pause images use
    ``65535:65535``), else root. ``hostname_path`` and ``hosts_path`` are accepted for symmetry
    with :func:`container_spec`; pause needs neither. ``resolv_conf_path`` is mounted read-only
    because some runtimes (VM-based ones) read the pod's DNS from the sandbox.
    """
    del hostname_path, hosts_path  # see the docstring: only application containers mount them
    host = host or HostFeatures()
    security = config.linux.security_context
    namespaces = _namespace_options(config)
    host_network = namespaces.network == api_pb2.NODE
    host_pid = namespaces.pid == api_pb2.NODE
    host_ipc = namespaces.ipc == api_pb2.NODE

    argv = [*image.entrypoint, *image.cmd]
    if not argv:
        raise ValueError("the sandbox image has neither an entrypoint nor a command")

    if user is None:
        user = resolve_user(
            image_user=image.user,
            run_as_user=security.run_as_user.value if security.HasField("run_as_user") else None,
            run_as_username="",
            run_as_group=security.run_as_group.value if security.HasField("run_as_group") else None,
            supplemental_groups=security.supplemental_groups,
            passwd="",
            group="",
        )

    linux_namespaces = [_namespace("mount")]
    if not host_pid:
        linux_namespaces.append(_namespace("pid"))
    if not host_ipc:
        linux_namespaces.append(_namespace("ipc"))
    if not host_network:
        linux_namespaces.append(_namespace("uts"))
        linux_namespaces.append(_namespace("network", netns_path))

    extra_mounts = []
    shm_source = "/dev/shm" if host_ipc else shm_path
    if shm_source:
        # Read-only for pause itself; containers mount the same tmpfs read-write.
        extra_mounts.append(
            _bind_mount(
                source=shm_source,
                destination=_DEV_SHM,
                options=["rbind", "ro", "nosuid", "nodev", "noexec"],
            )
        )
    if resolv_conf_path:
        extra_mounts.append(
            _bind_mount(
                source=resolv_conf_path, destination=_ETC_RESOLV_CONF, options=["rbind", "ro"]
            )
        )

    caps = _in_kernel_order(set(DEFAULT_CAPABILITIES) & host.available_capabilities)
    process: JsonDict = {
        "terminal": False,
        "user": _user_json(user),
        "args": argv,
        "env": merge_env([DEFAULT_PATH_ENV], image.env),
        "cwd": _working_dir("", image.working_dir),
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": _rlimits(host),
        "noNewPrivileges": True,
        "oomScoreAdj": _oom_score_adj(SANDBOX_OOM_SCORE_ADJ, current=current_oom_score_adj),
    }

    linux: JsonDict = {
        "resources": {
            "devices": _default_device_rules(allow_all=False),
            "cpu": {"shares": SANDBOX_CPU_SHARES},
        },
        "cgroupsPath": cgroups_path,
        "namespaces": linux_namespaces,
        "maskedPaths": list(DEFAULT_MASKED_PATHS),
        "readonlyPaths": list(DEFAULT_READONLY_PATHS),
    }
    if config.linux.sysctls:
        linux["sysctl"] = dict(sorted(config.linux.sysctls.items()))

    spec: JsonDict = {
        "ociVersion": OCI_VERSION,
        "process": process,
        # Pause writes nothing; a read-only root keeps it that way.
        "root": {"path": ROOTFS_PATH, "readonly": True},
        "mounts": _merge_mounts(
            _standard_mounts(writable_sysfs=False, with_cgroupfs=False), extra_mounts
        ),
        "annotations": {
            ANNOTATION_CONTAINER_TYPE: CONTAINER_TYPE_SANDBOX,
            ANNOTATION_SANDBOX_ID: sandbox_id,
            ANNOTATION_SANDBOX_NAME: config.metadata.name,
            ANNOTATION_SANDBOX_NAMESPACE: config.metadata.namespace,
            ANNOTATION_SANDBOX_UID: config.metadata.uid,
            ANNOTATION_SANDBOX_LOG_DIRECTORY: config.log_directory,
        },
        "linux": linux,
    }
    # runc refuses a hostname without a private UTS namespace.
    if not host_network and config.hostname:
        spec["hostname"] = config.hostname
    return spec


# --------------------------------------------------------------------------------------------
# Container
# --------------------------------------------------------------------------------------------


def container_spec(
    *,
    container_id: str,
    config: api_pb2.ContainerConfig,
    sandbox_id: str,
    sandbox_config: api_pb2.PodSandboxConfig,
    sandbox_pid: int,
    image: ImageConfig,
    user: ProcessUser,
    hostname_path: str | None,
    resolv_conf_path: str | None,
    hosts_path: str | None,
    cgroups_path: str,
    current_oom_score_adj: int,
    shm_path: str | None = None,
    image_name: str = "",
    host: HostFeatures | None = None,
    resolve_device: DeviceResolver = device_from_host,
) -> JsonDict:
    """The spec of an application container in the sandbox whose pause process is ``sandbox_pid``.

    Namespaces: the container joins the sandbox's network, IPC and UTS namespaces through
    ``/proc/<sandbox_pid>/ns/*``; when the pod uses the host's network (or IPC) the sandbox has none
    of its own, so the container gets none either and shares the host's. The PID namespace follows
    the container's own ``namespace_options.pid``: POD joins the sandbox's, CONTAINER (and TARGET,
    not supported yet) gets a new one, NODE the host's. The mount namespace is always new.

    Mounts: the standard kernel filesystems, then ``/etc/hostname``, ``/etc/hosts``,
    ``/etc/resolv.conf`` (from the sandbox's files, read-only with a read-only rootfs) and the pod's
    ``/dev/shm`` (``shm_path``, or the host's with host IPC), each unless a CRI mount covers the
    path, then the CRI mounts; a CRI mount replaces a standard one at the same place.

    ``user`` comes from :func:`resolve_user`; devices are described by ``resolve_device`` (the
    filesystem access lives there). ``image_name`` defaults to the image the config names.
    """
    del container_id  # the spec does not name the container; containerd keys it by ID
    host = host or HostFeatures()
    security = config.linux.security_context
    sandbox_namespaces = _namespace_options(sandbox_config)

    if security.privileged and not sandbox_config.linux.security_context.privileged:
        raise ValueError("a privileged container is not allowed in a non-privileged sandbox")
    for mount in config.mounts:
        validate_mount(mount)
    for device in config.devices:
        _validate_device(device)

    # -- namespaces
    host_network = sandbox_namespaces.network == api_pb2.NODE
    host_ipc = sandbox_namespaces.ipc == api_pb2.NODE
    pid_mode = security.namespace_options.pid
    linux_namespaces = [_namespace("mount")]
    if not host_network:
        linux_namespaces.append(_namespace("network", f"/proc/{sandbox_pid}/ns/net"))
        linux_namespaces.append(_namespace("uts", f"/proc/{sandbox_pid}/ns/uts"))
    if not host_ipc:
        linux_namespaces.append(_namespace("ipc", f"/proc/{sandbox_pid}/ns/ipc"))
    if pid_mode == api_pb2.POD:
        # With host PID the sandbox has no PID namespace to join: the container shares the host's.
        if sandbox_namespaces.pid != api_pb2.NODE:
            linux_namespaces.append(_namespace("pid", f"/proc/{sandbox_pid}/ns/pid"))
    elif pid_mode != api_pb2.NODE:
        linux_namespaces.append(_namespace("pid"))

    # -- mounts
    cri_destinations = {posixpath.normpath(m.container_path) for m in config.mounts}
    # The pod's files follow the rootfs: a read-only container cannot rewrite its hosts either.
    sandbox_file_mode = "ro" if security.readonly_rootfs else "rw"
    sandbox_files = (
        (hostname_path, _ETC_HOSTNAME),
        (hosts_path, _ETC_HOSTS),
        (resolv_conf_path, _ETC_RESOLV_CONF),
    )
    extra_mounts = [
        _bind_mount(
            source=source, destination=destination, options=["rbind", "rprivate", sandbox_file_mode]
        )
        for source, destination in sandbox_files
        if source and destination not in cri_destinations
    ]
    shm_source = "/dev/shm" if host_ipc else shm_path
    if shm_source and _DEV_SHM not in cri_destinations:
        extra_mounts.append(
            _bind_mount(
                source=shm_source, destination=_DEV_SHM, options=["rbind", "rprivate", "rw"]
            )
        )
    rootfs_propagation = ""
    for mount in config.mounts:
        propagation = _PROPAGATION_OPTION[mount.propagation]
        # A propagating mount needs a propagating root, or the events stop at the rootfs.
        if propagation == "rshared":
            rootfs_propagation = "rshared"
        elif propagation == "rslave" and rootfs_propagation != "rshared":
            rootfs_propagation = "rslave"
        extra_mounts.append(
            _bind_mount(
                source=mount.host_path,
                destination=posixpath.normpath(mount.container_path),
                options=["rbind", propagation, "ro" if mount.readonly else "rw"],
            )
        )
    mounts = _merge_mounts(
        _standard_mounts(writable_sysfs=security.privileged, with_cgroupfs=True), extra_mounts
    )

    # -- devices
    devices = [
        oci_device
        for device in config.devices
        for oci_device in resolve_device(
            device.host_path, posixpath.normpath(device.container_path), device.permissions
        )
    ]
    resources: JsonDict = {
        "devices": [
            *_default_device_rules(allow_all=security.privileged),
            *(
                {
                    "allow": True,
                    "type": d.type,
                    "major": d.major,
                    "minor": d.minor,
                    "access": d.access,
                }
                for d in devices
            ),
        ],
        **linux_resources_to_oci(config.linux.resources, host=host),
    }

    # -- process
    process: JsonDict = {
        "terminal": config.tty,
        "user": _user_json(user),
        "args": process_args(command=config.command, args=config.args, image=image),
        "env": _container_env(config, hostname=sandbox_config.hostname, image=image),
        "cwd": _working_dir(config.working_dir, image.working_dir),
        "capabilities": _container_capabilities(security, host=host),
        "rlimits": _rlimits(host),
        "noNewPrivileges": security.no_new_privs,
        "oomScoreAdj": _oom_score_adj(
            config.linux.resources.oom_score_adj, current=current_oom_score_adj
        ),
    }

    masked_paths, readonly_paths = _masked_and_readonly_paths(security)
    linux: JsonDict = {
        "resources": resources,
        "cgroupsPath": cgroups_path,
        "namespaces": linux_namespaces,
        "maskedPaths": masked_paths,
        "readonlyPaths": readonly_paths,
    }
    if devices:
        linux["devices"] = [
            {
                "path": d.path,
                "type": d.type,
                "major": d.major,
                "minor": d.minor,
                "fileMode": d.file_mode,
                "uid": d.uid,
                "gid": d.gid,
            }
            for d in devices
        ]
    if rootfs_propagation:
        linux["rootfsPropagation"] = rootfs_propagation

    annotations = dict(config.annotations)
    # Ours last, so a pod's annotations cannot pass a container off as something else.
    annotations.update(
        {
            ANNOTATION_CONTAINER_TYPE: CONTAINER_TYPE_CONTAINER,
            ANNOTATION_CONTAINER_NAME: config.metadata.name,
            ANNOTATION_SANDBOX_ID: sandbox_id,
            ANNOTATION_SANDBOX_NAME: sandbox_config.metadata.name,
            ANNOTATION_SANDBOX_NAMESPACE: sandbox_config.metadata.namespace,
            ANNOTATION_SANDBOX_UID: sandbox_config.metadata.uid,
            ANNOTATION_IMAGE_NAME: image_name
            or config.image.user_specified_image
            or config.image.image,
        }
    )

    return {
        "ociVersion": OCI_VERSION,
        "process": process,
        "root": {"path": ROOTFS_PATH, "readonly": security.readonly_rootfs},
        "mounts": mounts,
        "annotations": annotations,
        "linux": linux,
    }
