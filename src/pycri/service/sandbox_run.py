"""RunPodSandbox: make a pod's pause container and its namespaces, and start it.

Steps, each undone in reverse by ``Rollback`` if a later one fails (nothing is left half
made: no containerd container, snapshot, task, lease, netns or file):

    validate → reserve name → resolve pause image → netns (unless host network) →
    sandbox files (hostname, hosts, resolv.conf, log dir) → lease → snapshot → containerd
    container (spec + metadata extension) → task (null IO) → Wait issued → Start →
    READY in the store → exit monitor

The sandbox enters the store only once its pause task runs, and its monitor starts only
after that, so an instant exit is always found by the handler.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from cri_api.v1 import api_pb2

from pycri.containerd import api
from pycri.errors import InvalidArgument, NotFound
from pycri.events.types import Kind
from pycri.oci import spec as oci
from pycri.service import records
from pycri.service.cgroups import cgroups_path
from pycri.service.context import RuntimeContext
from pycri.service.ids import new_id, now_ns
from pycri.service.image_resolve import resolve_image
from pycri.service.rollback import Rollback
from pycri.service.sandbox_files import SandboxFiles, remove_sandbox_files, write_sandbox_files
from pycri.store.names import sandbox_name
from pycri.store.sandbox import Sandbox, SandboxMetadata, SandboxState, SandboxStatus

log = logging.getLogger(__name__)


def validate_sandbox_config(config: api_pb2.PodSandboxConfig) -> None:
    meta = config.metadata
    if not config.HasField("metadata"):
        raise InvalidArgument("sandbox config must include metadata")
    for field_name in ("name", "namespace", "uid"):
        if not getattr(meta, field_name):
            raise InvalidArgument(f"sandbox metadata.{field_name} must not be empty")
    if config.log_directory and not os.path.isabs(config.log_directory):
        raise InvalidArgument(f"log_directory {config.log_directory!r} must be absolute")
    if ".." in Path(config.log_directory).parts:
        raise InvalidArgument(f"log_directory {config.log_directory!r} must not contain '..'")


def current_oom_score_adj() -> int:
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0


async def run_pod_sandbox(
    rt: RuntimeContext, request: api_pb2.RunPodSandboxRequest
) -> api_pb2.RunPodSandboxResponse:
    config = request.config
    validate_sandbox_config(config)
    if request.runtime_handler not in ("", "runc"):
        raise NotFound(f"runtime handler {request.runtime_handler!r} is not configured")
    sandbox_id = new_id()
    name = sandbox_name(config.metadata)
    client = rt.containerd
    async with Rollback(what=f"sandbox {sandbox_id}") as undo:
        rt.sandbox_names.reserve(name, sandbox_id)
        undo.push("release name", lambda: rt.sandbox_names.release(name, sandbox_id))

        image = await resolve_image(rt, rt.config.sandbox_image, what="sandbox image")
        host_network = config.linux.security_context.namespace_options.network == api_pb2.NODE
        netns_path = ""
        if not host_network:
            path = await rt.netns.create(sandbox_id)
            netns_path = str(path)
            undo.push("remove netns", lambda: rt.netns.remove(path))

        files = SandboxFiles(rt.sandbox_dir(sandbox_id))
        hostname = config.hostname or (os.uname().nodename if host_network else "")
        await write_sandbox_files(files, config=config, hostname=hostname)
        undo.push("remove sandbox files", lambda: remove_sandbox_files(files))

        try:
            spec = oci.sandbox_spec(
                sandbox_id=sandbox_id,
                config=config,
                image=image.config,
                netns_path=netns_path or None,
                hostname_path=str(files.hostname),
                resolv_conf_path=str(files.resolv_conf),
                hosts_path=str(files.hosts),
                cgroups_path=cgroups_path(config, sandbox_id),
                current_oom_score_adj=current_oom_score_adj(),
                host=rt.host_features,
            )
        except ValueError as err:
            raise InvalidArgument(f"sandbox config: {err}") from None
        metadata = SandboxMetadata(
            id=sandbox_id,
            name=name,
            config=config,
            netns_path=netns_path,
            created_at=now_ns(),
            runtime_handler=request.runtime_handler,
        )
        mounts = await records.create_record(
            rt,
            object_id=sandbox_id,
            kind=records.KIND_SANDBOX,
            image=image,
            spec=spec,
            metadata=metadata.encode(),
            labels={**image.config.labels, **dict(config.labels)},
            undo=undo,
        )

        await client.tasks.create(
            api.tasks.CreateTaskRequest(container_id=sandbox_id, rootfs=mounts), timeout=60
        )
        undo.push("delete task", lambda: records.kill_and_delete_task(rt, sandbox_id))
        wait = await rt.monitors.issue_wait(sandbox_id)
        undo.push("cancel wait", wait.cancel)
        pid = await client.tasks.start(sandbox_id, timeout=60)

        sandbox = Sandbox(
            metadata=metadata, status=SandboxStatus(state=SandboxState.READY, pid=pid)
        )
        rt.sandboxes.add(sandbox)
        rt.monitors.watch(kind=Kind.SANDBOX, object_id=sandbox_id, pid=pid, wait=wait)
        undo.commit()
    log.info(
        "sandbox ready",
        extra={"sandbox_id": sandbox_id, "sandbox_name": name, "pid": pid, "netns": netns_path},
    )
    rt.emit_container_event(sandbox_id, "CREATED")
    rt.emit_container_event(sandbox_id, "STARTED")
    return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)
