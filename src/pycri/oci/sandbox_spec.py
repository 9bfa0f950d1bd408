"""The OCI spec of a pod's pause container, which holds the pod's namespaces.

A pure function of its keyword arguments (see ``container_spec`` for the conventions shared
by both builders).
"""

from __future__ import annotations

from cri_api.v1 import api_pb2

from pycri.images.model import ImageConfig
from pycri.oci.capabilities import sandbox_capabilities
from pycri.oci.common import (
    ANNOTATION_CONTAINER_TYPE,
    ANNOTATION_SANDBOX_ID,
    ANNOTATION_SANDBOX_LOG_DIRECTORY,
    ANNOTATION_SANDBOX_NAME,
    ANNOTATION_SANDBOX_NAMESPACE,
    ANNOTATION_SANDBOX_UID,
    CONTAINER_TYPE_SANDBOX,
    DEFAULT_MASKED_PATHS,
    DEFAULT_READONLY_PATHS,
    OCI_VERSION,
    ROOTFS_PATH,
    JsonDict,
    namespace,
    namespace_options,
)
from pycri.oci.devices import default_device_rules
from pycri.oci.host import HostFeatures
from pycri.oci.mounts import DEV_SHM, ETC_RESOLV_CONF, bind_mount, merge_mounts, standard_mounts
from pycri.oci.process import DEFAULT_PATH_ENV, merge_env, oom_score_adj, rlimits, working_dir
from pycri.oci.users import ProcessUser, resolve_user, user_json

# The pause process should be the last thing the OOM killer picks; clamped like any other value.
SANDBOX_OOM_SCORE_ADJ = -998
# The pause process needs next to no CPU; the smallest weight cgroup v1 accepts.
SANDBOX_CPU_SHARES = 2


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
    seccomp: JsonDict | None = None,
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
    because some runtimes (VM-based ones) read the pod's DNS from the sandbox. ``seccomp`` is
    the pause container's ``linux.seccomp``, resolved by the caller for
    :func:`sandbox_capabilities`.
    """
    del hostname_path, hosts_path  # see the docstring: only application containers mount them
    host = host or HostFeatures()
    security = config.linux.security_context
    namespaces = namespace_options(config)
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

    linux_namespaces = [namespace("mount")]
    if not host_pid:
        linux_namespaces.append(namespace("pid"))
    if not host_ipc:
        linux_namespaces.append(namespace("ipc"))
    if not host_network:
        linux_namespaces.append(namespace("uts"))
        linux_namespaces.append(namespace("network", netns_path))

    extra_mounts = []
    shm_source = "/dev/shm" if host_ipc else shm_path
    if shm_source:
        # Read-only for pause itself; containers mount the same tmpfs read-write.
        extra_mounts.append(
            bind_mount(
                source=shm_source,
                destination=DEV_SHM,
                options=["rbind", "ro", "nosuid", "nodev", "noexec"],
            )
        )
    if resolv_conf_path:
        extra_mounts.append(
            bind_mount(
                source=resolv_conf_path, destination=ETC_RESOLV_CONF, options=["rbind", "ro"]
            )
        )

    caps = sandbox_capabilities(host.available_capabilities)
    process: JsonDict = {
        "terminal": False,
        "user": user_json(user),
        "args": argv,
        "env": merge_env([DEFAULT_PATH_ENV], image.env),
        "cwd": working_dir("", image.working_dir),
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": rlimits(host),
        "noNewPrivileges": True,
        "oomScoreAdj": oom_score_adj(SANDBOX_OOM_SCORE_ADJ, current=current_oom_score_adj),
    }

    linux: JsonDict = {
        "resources": {
            "devices": default_device_rules(allow_all=False),
            "cpu": {"shares": SANDBOX_CPU_SHARES},
        },
        "cgroupsPath": cgroups_path,
        "namespaces": linux_namespaces,
        "maskedPaths": list(DEFAULT_MASKED_PATHS),
        "readonlyPaths": list(DEFAULT_READONLY_PATHS),
    }
    if config.linux.sysctls:
        linux["sysctl"] = dict(sorted(config.linux.sysctls.items()))
    if seccomp is not None:
        linux["seccomp"] = seccomp

    spec: JsonDict = {
        "ociVersion": OCI_VERSION,
        "process": process,
        # Pause writes nothing; a read-only root keeps it that way.
        "root": {"path": ROOTFS_PATH, "readonly": True},
        "mounts": merge_mounts(
            standard_mounts(writable_sysfs=False, with_cgroupfs=False), extra_mounts
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
