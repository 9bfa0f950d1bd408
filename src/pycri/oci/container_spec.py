"""Build the OCI runtime spec of an application container (the pause container's is in
``sandbox_spec``).

The CRI hands us a ``PodSandboxConfig`` or a ``ContainerConfig`` plus the image's config; runc
wants an OCI runtime-spec 1.0.2 document (``config.json``). The ``oci`` package is the translation,
and nothing else:

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

import posixpath

from cri_api.v1 import api_pb2

from pycri.images.model import ImageConfig
from pycri.oci.capabilities import container_capabilities
from pycri.oci.common import (
    ANNOTATION_CONTAINER_NAME,
    ANNOTATION_CONTAINER_TYPE,
    ANNOTATION_IMAGE_NAME,
    ANNOTATION_SANDBOX_ID,
    ANNOTATION_SANDBOX_NAME,
    ANNOTATION_SANDBOX_NAMESPACE,
    ANNOTATION_SANDBOX_UID,
    CONTAINER_TYPE_CONTAINER,
    OCI_VERSION,
    ROOTFS_PATH,
    JsonDict,
    masked_and_readonly_paths,
    namespace,
    namespace_options,
)
from pycri.oci.devices import (
    DeviceResolver,
    default_device_rules,
    device_from_host,
    validate_device,
)
from pycri.oci.host import HostFeatures
from pycri.oci.mounts import (
    DEV_SHM,
    ETC_HOSTNAME,
    ETC_HOSTS,
    ETC_RESOLV_CONF,
    PROPAGATION_OPTION,
    bind_mount,
    merge_mounts,
    standard_mounts,
)
from pycri.oci.process import container_env, oom_score_adj, process_args, rlimits, working_dir
from pycri.oci.resources import linux_resources_to_oci
from pycri.oci.users import ProcessUser, user_json
from pycri.oci.validation import validate_mount


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
    seccomp: JsonDict | None = None,
    apparmor_profile: str | None = None,
    recursive_read_only_supported: bool = False,
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
    ``seccomp`` (``linux.seccomp``) and ``apparmor_profile`` are resolved by the caller
    (``pycri.security``), for the capabilities :func:`container_capabilities` gives this config.
    A CRI mount with ``recursive_read_only`` gets runc's ``rro`` option, where the pod's runtime
    handler supports it (``recursive_read_only_supported``); elsewhere it is refused.
    """
    del container_id  # the spec does not name the container; containerd keys it by ID
    host = host or HostFeatures()
    security = config.linux.security_context
    sandbox_namespaces = namespace_options(sandbox_config)

    if security.privileged and not sandbox_config.linux.security_context.privileged:
        raise ValueError("a privileged container is not allowed in a non-privileged sandbox")
    for mount in config.mounts:
        validate_mount(mount, recursive_read_only_supported=recursive_read_only_supported)
    for device in config.devices:
        validate_device(device)

    # -- namespaces
    host_network = sandbox_namespaces.network == api_pb2.NODE
    host_ipc = sandbox_namespaces.ipc == api_pb2.NODE
    pid_mode = security.namespace_options.pid
    linux_namespaces = [namespace("mount")]
    if not host_network:
        linux_namespaces.append(namespace("network", f"/proc/{sandbox_pid}/ns/net"))
        linux_namespaces.append(namespace("uts", f"/proc/{sandbox_pid}/ns/uts"))
    if not host_ipc:
        linux_namespaces.append(namespace("ipc", f"/proc/{sandbox_pid}/ns/ipc"))
    if pid_mode == api_pb2.POD:
        # With host PID the sandbox has no PID namespace to join: the container shares the host's.
        if sandbox_namespaces.pid != api_pb2.NODE:
            linux_namespaces.append(namespace("pid", f"/proc/{sandbox_pid}/ns/pid"))
    elif pid_mode != api_pb2.NODE:
        linux_namespaces.append(namespace("pid"))

    # -- mounts
    cri_destinations = {posixpath.normpath(m.container_path) for m in config.mounts}
    # The pod's files follow the rootfs: a read-only container cannot rewrite its hosts either.
    sandbox_file_mode = "ro" if security.readonly_rootfs else "rw"
    sandbox_files = (
        (hostname_path, ETC_HOSTNAME),
        (hosts_path, ETC_HOSTS),
        (resolv_conf_path, ETC_RESOLV_CONF),
    )
    extra_mounts = [
        bind_mount(
            source=source, destination=destination, options=["rbind", "rprivate", sandbox_file_mode]
        )
        for source, destination in sandbox_files
        if source and destination not in cri_destinations
    ]
    shm_source = "/dev/shm" if host_ipc else shm_path
    if shm_source and DEV_SHM not in cri_destinations:
        extra_mounts.append(
            bind_mount(source=shm_source, destination=DEV_SHM, options=["rbind", "rprivate", "rw"])
        )
    rootfs_propagation = ""
    for mount in config.mounts:
        propagation = PROPAGATION_OPTION[mount.propagation]
        # A propagating mount needs a propagating root, or the events stop at the rootfs.
        if propagation == "rshared":
            rootfs_propagation = "rshared"
        elif propagation == "rslave" and rootfs_propagation != "rshared":
            rootfs_propagation = "rslave"
        extra_mounts.append(
            bind_mount(
                source=mount.host_path,
                destination=posixpath.normpath(mount.container_path),
                options=[
                    "rbind",
                    propagation,
                    "ro" if mount.readonly else "rw",
                    *(["rro"] if mount.recursive_read_only else []),
                ],
            )
        )
    mounts = merge_mounts(
        standard_mounts(writable_sysfs=security.privileged, with_cgroupfs=True), extra_mounts
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
            *default_device_rules(allow_all=security.privileged),
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
        "user": user_json(user),
        "args": process_args(command=config.command, args=config.args, image=image),
        "env": container_env(config, hostname=sandbox_config.hostname, image=image),
        "cwd": working_dir(config.working_dir, image.working_dir),
        "capabilities": container_capabilities(security, available=host.available_capabilities),
        "rlimits": rlimits(host),
        "noNewPrivileges": security.no_new_privs,
        "oomScoreAdj": oom_score_adj(
            config.linux.resources.oom_score_adj, current=current_oom_score_adj
        ),
    }

    masked_paths, readonly_paths = masked_and_readonly_paths(security)
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
    if seccomp is not None:
        linux["seccomp"] = seccomp
    if apparmor_profile:
        process["apparmorProfile"] = apparmor_profile

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
