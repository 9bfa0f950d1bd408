"""RunPodSandbox: make a pod's pause container and its namespaces, and start it.

Steps, each undone in reverse by ``Rollback`` if a later one fails (nothing is left half
made: no containerd container, snapshot, task, lease, netns or file):

    validate (names, sizes, hostname, DNS, cgroup parent, log directory) → reserve name →
    resolve pause image → pick the CNI network → intent in the undo journal → log
    directory (made if missing) → netns (unless host network) → sandbox files (hostname,
    hosts, resolv.conf) → lease → snapshot → containerd container (spec + metadata
    extension, which already names the CNI network) → CNI ADD → record updated with the IPs
    and result → task (null IO) → Wait issued → Start → READY in the store → exit monitor →
    intent dropped

Each undo step is registered before the step it undoes (they are idempotent), so a step
that fails half-way (a netns made but not yet returned, files partly written) is undone
too; an undo step that fails (containerd down) is retried by the undo journal
(``service/undo.py``) until the half-made sandbox is gone, across restarts.

The sandbox enters the store only once its pause task runs, and its monitor starts only
after that, so an instant exit is always found by the handler.

Networking (``pycri.net.manager``): with no CNI config at all the pod runs in its own
namespace with only loopback (degraded mode; Status says NetworkReady=false); an invalid
config refuses the pod. The network config is in the record before ADD runs and the result
right after, so a pycri killed anywhere in between leaves a record from which the undo
journal, at the next start, runs DEL (no IP leaks; the half-made pod is never loaded). A
failed ADD rolls back with DEL (the plugins before the failing one made things) and then the
netns; the error is the plugin's. If that DEL fails too, the rollback halts (``Rollback``
critical step): the sandbox is kept NOTREADY with its record, netns and name, for kubelet's
StopPodSandbox/RemovePodSandbox to retry.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path
from typing import Any

from cri_api.v1 import api_pb2

from pycri.cgroups import cgroups_path
from pycri.errors import FailedPrecondition, InvalidArgument, quote
from pycri.events.types import Kind
from pycri.fsutil import make_dirs, remove_empty_dirs
from pycri.net.cni import AddProgress
from pycri.oci.capabilities import sandbox_capabilities
from pycri.oci.runtime_handlers import RuntimeHandler, UnknownHandlerError, UnusableHandlerError
from pycri.oci.sandbox_spec import sandbox_spec
from pycri.oci.validation import (
    validate_annotations,
    validate_cgroup_parent,
    validate_labels,
    validate_name,
)
from pycri.security.seccomp import linux_seccomp
from pycri.service import records
from pycri.service.container_events import CREATED, STARTED
from pycri.service.context import RuntimeContext
from pycri.service.faults import FAULT_ROLLBACK_FAIL
from pycri.service.ids import new_id, now_ns
from pycri.service.image_resolve import ensure_sandbox_image
from pycri.service.rollback import Rollback
from pycri.service.sandbox_files import (
    SandboxFiles,
    remove_sandbox_files,
    validate_dns_config,
    validate_hostname,
    write_sandbox_files,
)
from pycri.service.undo import Intent
from pycri.store.names import sandbox_name
from pycri.store.sandbox import Sandbox, SandboxMetadata, SandboxState, SandboxStatus

log = logging.getLogger(__name__)


def validate_sandbox_config(config: api_pb2.PodSandboxConfig) -> None:
    meta = config.metadata
    if not config.HasField("metadata"):
        raise InvalidArgument("sandbox config must include metadata")
    try:
        for field_name in ("name", "namespace", "uid"):
            if not getattr(meta, field_name):
                raise InvalidArgument(f"sandbox metadata.{field_name} must not be empty")
            validate_name(getattr(meta, field_name), what=f"sandbox metadata.{field_name}")
        log_directory = config.log_directory
        if log_directory and not os.path.isabs(log_directory):
            raise InvalidArgument(f"log_directory {quote(log_directory)} must be absolute")
        if ".." in Path(log_directory).parts:
            raise InvalidArgument(f"log_directory {quote(log_directory)} must not contain '..'")
        if "\0" in log_directory:
            raise InvalidArgument(f"log_directory {quote(log_directory)} contains a NUL byte")
        validate_labels(config.labels, what="sandbox")
        validate_annotations(config.annotations, what="sandbox")
        validate_hostname(config.hostname)
        validate_dns_config(config.dns_config)
        validate_cgroup_parent(config.linux.cgroup_parent)
    except ValueError as err:
        raise InvalidArgument(str(err)) from None


def _make_log_directory(path: str) -> list[Path]:
    """The pod's log directory, made if missing; InvalidArgument when it cannot be."""
    try:
        return make_dirs(Path(path))
    except OSError as err:
        raise InvalidArgument(
            f"log_directory {quote(path)} cannot be created: {err.strerror or err}"
        ) from None


def resolve_runtime_handler(rt: RuntimeContext, name: str) -> RuntimeHandler:
    """The handler a pod asked for ("" → the default): an unknown name is the request's fault
    (INVALID_ARGUMENT), a configured one that cannot run is the node's (FAILED_PRECONDITION)."""
    try:
        return rt.handlers.resolve(name)
    except UnknownHandlerError as err:
        raise InvalidArgument(str(err.args[0])) from None
    except UnusableHandlerError as err:
        raise FailedPrecondition(str(err)) from None


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
    handler = resolve_runtime_handler(rt, request.runtime_handler)
    # The pause container's filter, resolved before anything is made (a bad profile leaves
    # nothing to undo).
    seccomp = await linux_seccomp(
        config.linux.security_context,
        capabilities=sandbox_capabilities(rt.host_features.available_capabilities),
        settings=rt.seccomp,
    )
    sandbox_id = new_id()
    name = sandbox_name(config.metadata)
    undo = Rollback(
        what=f"sandbox {sandbox_id}",
        fault=lambda: rt.faults.should_fail(sandbox_id, config.labels, FAULT_ROLLBACK_FAIL),
    )
    latest: list[SandboxMetadata] = []  # the newest metadata, for the network teardown
    try:
        await _run(
            rt,
            request,
            sandbox_id=sandbox_id,
            name=name,
            handler=handler,
            seccomp=seccomp,
            undo=undo,
            latest=latest,
        )
    except BaseException:
        if undo.halted and latest:
            _keep_for_cleanup(rt, latest[-1], reason=undo.halted)
        raise
    rt.events.emit(sandbox_id, CREATED)
    rt.events.emit(sandbox_id, STARTED)
    return api_pb2.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)


def _keep_for_cleanup(rt: RuntimeContext, metadata: SandboxMetadata, *, reason: str) -> None:
    """A rollback that could not release the network keeps the sandbox NOTREADY (name held)."""
    rt.sandboxes.add(
        Sandbox(
            metadata=metadata,
            status=SandboxStatus(state=SandboxState.NOTREADY),
            status_path=rt.paths.sandbox_status(metadata.id),
        )
    )
    log.error(
        "sandbox kept for cleanup after a failed rollback; stop and remove it to finish",
        extra={"sandbox_id": metadata.id, "sandbox_name": metadata.name, "step": reason},
    )


async def _run(
    rt: RuntimeContext,
    request: api_pb2.RunPodSandboxRequest,
    *,
    sandbox_id: str,
    name: str,
    handler: RuntimeHandler,
    seccomp: dict[str, Any] | None,
    undo: Rollback,
    latest: list[SandboxMetadata],
) -> None:
    config = request.config
    client = rt.containerd
    cgroup_parent = config.linux.cgroup_parent or rt.config.cgroup_parent
    async with undo:
        rt.sandbox_names.reserve(name, sandbox_id)
        undo.push("release name", lambda: rt.sandbox_names.release(name, sandbox_id))

        image = await ensure_sandbox_image(rt)
        host_network = config.linux.security_context.namespace_options.network == api_pb2.NODE
        network = None
        if not host_network:
            network = rt.network.network_for_pod()  # None: no CNI config, loopback only
        await undo.journal(
            rt.undo,
            Intent(
                kind=Kind.SANDBOX,
                object_id=sandbox_id,
                cgroups_path=cgroups_path(cgroup_parent, sandbox_id),
                created_at=time.time(),
            ),
        )
        if config.log_directory:
            made = await asyncio.to_thread(_make_log_directory, config.log_directory)
            undo.push("remove log directory", lambda: asyncio.to_thread(remove_empty_dirs, made))

        netns_path = ""
        if not host_network:
            path = rt.netns.path_for(sandbox_id)
            undo.push("remove netns", lambda: rt.netns.remove(path))
            await rt.netns.create(sandbox_id)
            netns_path = str(path)

        files = SandboxFiles(rt.paths.sandbox_dir(sandbox_id))
        hostname = config.hostname or (os.uname().nodename if host_network else "")
        undo.push("remove sandbox files", lambda: remove_sandbox_files(files))
        await write_sandbox_files(files, config=config, hostname=hostname)

        try:
            spec = sandbox_spec(
                sandbox_id=sandbox_id,
                config=config,
                image=image.config,
                netns_path=netns_path or None,
                hostname_path=str(files.hostname),
                resolv_conf_path=str(files.resolv_conf),
                hosts_path=str(files.hosts),
                cgroups_path=cgroups_path(cgroup_parent, sandbox_id),
                current_oom_score_adj=current_oom_score_adj(),
                host=rt.host_features,
                seccomp=seccomp,
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
            resolved_runtime_handler=handler.name,
            cni_network=network.to_json() if network is not None else None,
            cgroup_parent=cgroup_parent,
        )
        latest.append(metadata)
        mounts = await records.create_record(
            rt,
            object_id=sandbox_id,
            kind=Kind.SANDBOX,
            image=image,
            spec=spec,
            metadata=metadata.encode(),
            labels={**image.config.labels, **dict(config.labels)},
            handler=handler,
            undo=undo,
        )
        if network is not None:
            progress = AddProgress()  # a failed ADD's DEL insists only on completed plugins
            undo.push(
                "tear down pod network",
                lambda: rt.network.teardown(latest[-1], progress=progress),
                critical=True,
            )
            attached = await rt.network.setup(
                sandbox_id=sandbox_id,
                config=config,
                netns_path=netns_path,
                network=network,
                progress=progress,
            )
            metadata = metadata.replace(
                ip=attached.ip, additional_ips=attached.additional_ips, cni_result=attached.result
            )
            latest.append(metadata)
            await records.update_metadata(rt, sandbox_id, metadata.encode())

        undo.push(
            "delete task",
            lambda: records.kill_and_delete_task(rt, sandbox_id, stray_shim=True),
        )
        await client.tasks.create(container_id=sandbox_id, rootfs=mounts, timeout=60)
        wait = await rt.monitors.issue_wait(sandbox_id)
        undo.push("cancel wait", wait.cancel)
        pid = await client.tasks.start(sandbox_id, timeout=60)

        sandbox = Sandbox(
            metadata=metadata,
            status=SandboxStatus(state=SandboxState.READY, pid=pid),
            status_path=rt.paths.sandbox_status(sandbox_id),
        )
        rt.sandboxes.add(sandbox)
        rt.monitors.watch(kind=Kind.SANDBOX, object_id=sandbox_id, pid=pid, wait=wait)
        undo.commit()
    log.info(
        "sandbox ready",
        extra={
            "sandbox_id": sandbox_id,
            "sandbox_name": name,
            "pid": pid,
            "runtime_handler": handler.name,
            "netns": netns_path,
            "ip": metadata.ip,
        },
    )
