"""CreateContainer: validate, reserve the name, build the OCI spec, make the containerd
container, checkpoint CREATED.

Steps (undone in reverse on failure, so bad input leaves nothing behind):
    validate → sandbox READY → reserve name → resolve image (local only: no implicit pull) →
    resolve the user against the image's /etc/passwd → spec → lease + snapshot + containerd
    container (metadata in its extension) → status checkpoint (CreatedAt) → store

The containerd container exists before the status file, and remove deletes the status last,
so a crash at any point leaves something recovery can reconcile.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2

from pycri.cgroups import cgroups_path
from pycri.errors import FailedPrecondition, InvalidArgument
from pycri.events.types import Kind
from pycri.images.model import Image
from pycri.oci.capabilities import container_capabilities
from pycri.oci.container_spec import container_spec
from pycri.oci.resources import linux_resources_to_oci
from pycri.oci.users import ProcessUser, resolve_user
from pycri.oci.validation import validate_log_path, validate_mount
from pycri.security.seccomp import linux_seccomp
from pycri.service import records
from pycri.service.container_events import CREATED
from pycri.service.context import RuntimeContext
from pycri.service.ids import new_id, now_ns
from pycri.service.image_resolve import resolve_image
from pycri.service.records import Mount
from pycri.service.rollback import Rollback
from pycri.service.sandbox_files import SandboxFiles
from pycri.service.sandbox_run import current_oom_score_adj, resolve_runtime_handler
from pycri.store import checkpoint
from pycri.store.container import Container, ContainerMetadata, ContainerStatus
from pycri.store.names import container_name
from pycri.store.sandbox import SandboxState

log = logging.getLogger(__name__)


def validate_container_config(
    config: api_pb2.ContainerConfig, *, recursive_read_only_supported: bool = False
) -> None:
    if not config.HasField("metadata") or not config.metadata.name:
        raise InvalidArgument("container config must include metadata with a name")
    if not config.image.image:
        raise InvalidArgument("container config must name an image")
    try:
        if config.log_path:
            validate_log_path(config.log_path)
        for mount in config.mounts:
            validate_mount(mount, recursive_read_only_supported=recursive_read_only_supported)
    except ValueError as err:
        raise InvalidArgument(str(err)) from None


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
    recursive_read_only = handler.features.recursive_read_only_mounts
    validate_container_config(config, recursive_read_only_supported=recursive_read_only)
    if sandbox.status.state is not SandboxState.READY:
        raise FailedPrecondition(f"sandbox {sandbox.id} is not ready")
    sandbox_config = sandbox.metadata.config
    seccomp, apparmor_profile = await security_profiles(rt, config)
    container_id = new_id()
    name = container_name(config.metadata, sandbox_config.metadata)
    async with Rollback(what=f"container {container_id}") as undo:
        rt.container_names.reserve(name, container_id)
        undo.push("release name", lambda: rt.container_names.release(name, container_id))
        image = await resolve_image(rt, config.image.image)
        log_path = (
            os.path.join(sandbox_config.log_directory, config.log_path)
            if sandbox_config.log_directory and config.log_path
            else ""
        )
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
                        cgroups_path=cgroups_path(sandbox_config.linux.cgroup_parent, container_id),
                        current_oom_score_adj=current_oom_score_adj(),
                        host=rt.host_features,
                        seccomp=seccomp,
                        apparmor_profile=apparmor_profile,
                        recursive_read_only_supported=recursive_read_only,
                    )
                )
            except (OSError, ValueError) as err:
                raise InvalidArgument(f"container config: {err}") from None

        await records.create_record(
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
        status = ContainerStatus(
            created_at=created_at,
            resources=linux_resources_to_oci(config.linux.resources),
        )
        status_path = rt.paths.container_status(container_id)
        await checkpoint.write(status_path, status.persisted())
        undo.push("remove container dir", lambda: _remove_dir(rt.paths.container_dir(container_id)))
        container = Container(metadata=metadata, status=status, status_path=status_path)
        rt.containers.add(container)
        undo.commit()
    log.info(
        "container created",
        extra={"container_id": container_id, "container_name": name, "sandbox_id": sandbox.id},
    )
    rt.events.emit(container_id, CREATED)
    return api_pb2.CreateContainerResponse(container_id=container_id)


async def _remove_dir(path: Path) -> None:
    await asyncio.to_thread(shutil.rmtree, path, True)
