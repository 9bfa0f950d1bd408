"""CreateContainer: validate, reserve the name, build the OCI spec, make the containerd
container, checkpoint CREATED.

Steps (undone in reverse on failure, so bad input leaves nothing behind):
    validate (names, sizes, resources, mounts, log path) → sandbox READY and not closing
    (the pod's ``creates`` count held from here to the end) → reserve name → resolve image
    (local only: no implicit pull) → log path's directory checked beneath the pod's log
    directory → intent in the undo journal → missing host paths of mounts made (as
    containerd's plugin does) → resolve the user against the image's /etc/passwd → spec →
    lease + snapshot + containerd container (metadata in its extension) → status checkpoint
    (CreatedAt) → the pod still not closing → store → intent dropped

The containerd container exists before the status file, and remove deletes the status last,
so a crash at any point leaves something recovery can reconcile; a create that had not
finished is undone by the undo journal (``service/undo.py``).

A pod that StopPodSandbox or RemovePodSandbox began to close refuses new creates; a create
already past that check sees the fence again just before it commits and rolls back, and
Stop/Remove wait for it (``Sandbox.creates``), so no container outlives its pod's removal.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2

from pycri.errors import InvalidArgument, quote
from pycri.events.types import Kind
from pycri.fsutil import check_beneath, make_dirs, remove_empty_dirs
from pycri.images.model import Image
from pycri.oci.capabilities import container_capabilities
from pycri.oci.container_spec import container_spec
from pycri.oci.host import HostFeatures
from pycri.oci.resources import linux_resources_to_oci, validate_linux_resources
from pycri.oci.runtime_handlers import RuntimeHandler
from pycri.oci.users import ProcessUser, resolve_user
from pycri.oci.validation import (
    validate_annotations,
    validate_image_ref,
    validate_labels,
    validate_log_path,
    validate_mount,
    validate_name,
)
from pycri.security.seccomp import linux_seccomp
from pycri.service import records
from pycri.service.concurrently import all_settled
from pycri.service.container_events import CREATED
from pycri.service.context import RuntimeContext
from pycri.service.faults import FAULT_ROLLBACK_FAIL
from pycri.service.ids import new_id, now_ns
from pycri.service.image_resolve import resolve_image
from pycri.service.records import Mount
from pycri.service.rollback import Rollback
from pycri.service.sandbox_files import SandboxFiles
from pycri.service.sandbox_run import current_oom_score_adj, resolve_runtime_handler
from pycri.service.undo import Intent
from pycri.store import checkpoint
from pycri.store.container import Container, ContainerMetadata, ContainerStatus
from pycri.store.names import container_name
from pycri.store.sandbox import Sandbox

log = logging.getLogger(__name__)


def validate_container_config(
    config: api_pb2.ContainerConfig,
    *,
    recursive_read_only_supported: bool = False,
    host: HostFeatures | None = None,
) -> None:
    if not config.HasField("metadata") or not config.metadata.name:
        raise InvalidArgument("container config must include metadata with a name")
    if not config.image.image:
        raise InvalidArgument("container config must name an image")
    try:
        validate_name(config.metadata.name, what="container metadata.name")
        validate_image_ref(config.image.image)
        validate_labels(config.labels, what="container")
        validate_annotations(config.annotations, config.image.annotations, what="container")
        if config.log_path:
            validate_log_path(config.log_path)
        for mount in config.mounts:
            validate_mount(mount, recursive_read_only_supported=recursive_read_only_supported)
        validate_linux_resources(config.linux.resources, host=host or HostFeatures())
    except ValueError as err:
        raise InvalidArgument(f"container config: {err}") from None


def _check_log_path(log_directory: str, log_path: str) -> None:
    """The log file's directory must exist beneath the pod's, reached without links."""
    try:
        check_beneath(log_directory, log_path)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise InvalidArgument(
            f"container config: log_path {quote(log_path)} cannot be used in the pod's log "
            f"directory: {reason}"
        ) from None


def _make_host_paths(mounts: list[api_pb2.Mount]) -> list[list[Path]]:
    """A missing host path is made a directory, as containerd's plugin does; what was made
    is returned for the rollback. InvalidArgument when one cannot be made."""
    made: list[list[Path]] = []
    try:
        for mount in mounts:
            if not os.path.lexists(mount.host_path):
                made.append(make_dirs(Path(mount.host_path)))
    except OSError as err:
        for created in reversed(made):
            remove_empty_dirs(created)
        raise InvalidArgument(
            f"container config: mount host_path {quote(mount.host_path)} does not exist and "
            f"cannot be created: {err.strerror or err}"
        ) from None
    return made


def _remove_host_paths(made: list[list[Path]]) -> None:
    for created in reversed(made):
        remove_empty_dirs(created)


def _read_from_layers(mounts: list[Mount], rel: str) -> str:
    """Read a file of the container's rootfs straight from the snapshot's layer dirs.

    The first dir that has the file wins, as overlayfs would show. No mount is made, so
    nothing needs cleaning up.
    """
    for d in records.layer_dirs(mounts):
        path = Path(d) / rel
        if path.is_file():
            return path.read_text(errors="replace")
    return ""


async def resolve_process_user(
    config: api_pb2.ContainerConfig, image: Image, mounts: list[Mount]
) -> ProcessUser:
    """Who the process runs as; the Strict supplemental groups policy ignores the image's
    /etc/group memberships (what Status' ``supplemental_groups_policy`` feature says)."""
    security = config.linux.security_context
    passwd, group = await asyncio.to_thread(
        lambda: (_read_from_layers(mounts, "etc/passwd"), _read_from_layers(mounts, "etc/group"))
    )
    try:
        return resolve_user(
            image_user=image.config.user,
            run_as_user=security.run_as_user.value if security.HasField("run_as_user") else None,
            run_as_username=security.run_as_username,
            run_as_group=security.run_as_group.value if security.HasField("run_as_group") else None,
            supplemental_groups=list(security.supplemental_groups),
            passwd=passwd,
            group=group,
            strict_supplemental_groups=(
                security.supplemental_groups_policy == api_pb2.SupplementalGroupsPolicy.Strict
            ),
        )
    except ValueError as err:
        raise InvalidArgument(str(err)) from None


async def security_profiles(
    rt: RuntimeContext, config: api_pb2.ContainerConfig
) -> tuple[dict[str, Any] | None, str | None]:
    """The container's ``linux.seccomp`` and AppArmor profile, before anything is made: a bad
    or missing profile is refused with nothing to undo (InvalidArgument naming it)."""
    security = config.linux.security_context
    try:
        capabilities = container_capabilities(
            security, available=rt.host_features.available_capabilities
        )
    except ValueError as err:
        raise InvalidArgument(f"container config: {err}") from None
    seccomp = await linux_seccomp(
        security, capabilities=capabilities["bounding"], settings=rt.seccomp
    )
    return seccomp, await rt.apparmor.container_profile(security)


async def create_container(
    rt: RuntimeContext, request: api_pb2.CreateContainerRequest
) -> api_pb2.CreateContainerResponse:
    config = request.config
    sandbox = rt.sandboxes.get(request.pod_sandbox_id)
    # Every container runs under its pod's handler (recorded with the pod, so also after a
    # restart); one removed from the config since is refused, never swapped for another.
    handler = resolve_runtime_handler(rt, sandbox.metadata.handler)
    validate_container_config(
        config,
        recursive_read_only_supported=handler.features.recursive_read_only_mounts,
        host=rt.host_features,
    )
    sandbox.check_open()
    sandbox.creates.enter()
    try:
        return await _create(rt, config, sandbox, handler)
    finally:
        sandbox.creates.leave()


async def _create(
    rt: RuntimeContext, config: api_pb2.ContainerConfig, sandbox: Sandbox, handler: RuntimeHandler
) -> api_pb2.CreateContainerResponse:
    recursive_read_only = handler.features.recursive_read_only_mounts
    sandbox_config = sandbox.metadata.config
    seccomp, apparmor_profile = await security_profiles(rt, config)
    container_id = new_id()
    name = container_name(config.metadata, sandbox_config.metadata)
    cgroup = sandbox.metadata.cgroups_path(container_id)
    fault = functools.partial(
        rt.faults.should_fail, container_id, config.labels, FAULT_ROLLBACK_FAIL
    )
    async with Rollback(what=f"container {container_id}", fault=fault) as undo:
        rt.container_names.reserve(name, container_id)
        undo.push("release name", lambda: rt.container_names.release(name, container_id))
        image = await resolve_image(rt, config.image.image)
        log_path = ""
        if sandbox_config.log_directory and config.log_path:
            await asyncio.to_thread(_check_log_path, sandbox_config.log_directory, config.log_path)
            log_path = os.path.join(sandbox_config.log_directory, config.log_path)
        await undo.journal(
            rt.undo,
            Intent(
                kind=Kind.CONTAINER,
                object_id=container_id,
                cgroups_path=cgroup,
                created_at=time.time(),
            ),
        )
        made = await asyncio.to_thread(_make_host_paths, list(config.mounts))
        undo.push("remove made host paths", lambda: asyncio.to_thread(_remove_host_paths, made))
        created_at = now_ns()
        metadata = ContainerMetadata(
            id=container_id,
            name=name,
            sandbox_id=sandbox.id,
            config=config,
            image_id=image.id,
            image_name=config.image.image,
            log_path=log_path,
            stop_signal=image.config.stop_signal,
            created_at=created_at,
            runtime_handler=handler.name,
            runtime_type=handler.runtime_type,
            runtime_options=handler.options.to_json() if handler.options is not None else {},
        )

        # The snapshot comes first: the user lookup reads /etc/passwd from its layers.
        async def build_spec(mounts: list[Mount]) -> dict[str, Any]:
            user = await resolve_process_user(config, image, mounts)
            files = SandboxFiles(rt.paths.sandbox_dir(sandbox.id))
            try:
                # device_from_host stats host paths: off the loop
                return await asyncio.to_thread(
                    functools.partial(
                        container_spec,
                        container_id=container_id,
                        config=config,
                        sandbox_id=sandbox.id,
                        sandbox_config=sandbox_config,
                        sandbox_pid=sandbox.status.pid,
                        image=image.config,
                        image_name=config.image.image,
                        user=user,
                        hostname_path=str(files.hostname),
                        resolv_conf_path=str(files.resolv_conf),
                        hosts_path=str(files.hosts),
                        cgroups_path=cgroup,
                        current_oom_score_adj=current_oom_score_adj(),
                        host=rt.host_features,
                        seccomp=seccomp,
                        apparmor_profile=apparmor_profile,
                        recursive_read_only_supported=recursive_read_only,
                    )
                )
            except (OSError, ValueError) as err:
                raise InvalidArgument(f"container config: {err}") from None

        # The CREATED checkpoint is written while containerd makes the snapshot and record;
        # both settle before anything else (a rollback never races the write).
        status = ContainerStatus(
            created_at=created_at,
            resources=linux_resources_to_oci(config.linux.resources),
        )
        status_path = rt.paths.container_status(container_id)
        undo.push("remove container dir", lambda: _remove_dir(rt.paths.container_dir(container_id)))
        record = records.create_record(
            rt,
            object_id=container_id,
            kind=Kind.CONTAINER,
            image=image,
            spec=build_spec,
            metadata=metadata.encode(),
            labels={
                **image.config.labels,
                **dict(config.labels),
                records.SANDBOX_ID_LABEL: sandbox.id,
            },
            handler=handler,
            undo=undo,
        )
        rootfs, _ = await all_settled(
            record, asyncio.to_thread(_write_first_status, status_path, status.persisted())
        )
        container = Container(metadata=metadata, status=status, status_path=status_path)
        container.task.deleted()  # none yet: Start creates it
        container.rootfs = rootfs  # Start needs no Snapshots.Mounts round trip
        sandbox.check_open()  # Stop/Remove began meanwhile: this container must not stay
        rt.containers.add(container)
        undo.commit()
    log.info(
        "container created",
        extra={"container_id": container_id, "container_name": name, "sandbox_id": sandbox.id},
    )
    rt.events.emit(container_id, CREATED)
    return api_pb2.CreateContainerResponse(container_id=container_id)


def _write_first_status(path: Path, document: dict[str, Any]) -> None:
    """Blocking: the container's directory and its first status checkpoint, in one hop."""
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_sync(path, document)


async def _remove_dir(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, True)
