"""StopPodSandbox: stop every container of the pod, then its pause task, then its network.

Idempotent: an unknown ID is a success (kubelet treats NOT_FOUND as done anyway, and
crictl retries), and calling it again on a NOTREADY sandbox just re-checks each step.
The pause task is killed only while the sandbox is READY/UNKNOWN; the call then waits for
the exit monitor to record the exit (it never records it itself), bounded by STOP_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from cri_api.v1 import api_pb2

from pycri.containerd.errors import NotFoundError
from pycri.errors import DeadlineExceeded
from pycri.events.types import Kind
from pycri.service.container_stop import stop_container
from pycri.service.context import RuntimeContext
from pycri.store.sandbox import Sandbox, SandboxState

log = logging.getLogger(__name__)

STOP_TIMEOUT = 120.0  # kubelet's default runtime request timeout


async def stop_sandbox(rt: RuntimeContext, sandbox: Sandbox) -> None:
    async with sandbox.stopping:
        await asyncio.gather(
            *(stop_container(rt, c, timeout=0) for c in rt.containers.in_sandbox(sandbox.id))
        )
        if sandbox.status.state is not SandboxState.NOTREADY:
            if not rt.monitors.is_watching(sandbox.id):
                # UNKNOWN after recovery: no monitor yet; watch it so the kill is recorded.
                rt.monitors.watch(kind=Kind.SANDBOX, object_id=sandbox.id, pid=0)
            try:
                await rt.containerd.tasks.kill(sandbox.id, 9, all=True, timeout=10)
            except NotFoundError:
                pass  # already gone: the monitor records it as exited
            try:
                async with asyncio.timeout(STOP_TIMEOUT):
                    await sandbox.exited.wait()
            except TimeoutError:
                raise DeadlineExceeded(
                    f"sandbox {sandbox.id}: pause task exit not recorded within {STOP_TIMEOUT}s"
                ) from None
        await teardown_network(rt, sandbox)
    log.info("sandbox stopped", extra={"sandbox_id": sandbox.id})


async def teardown_network(rt: RuntimeContext, sandbox: Sandbox) -> None:
    if sandbox.network_torn_down:
        return
    if sandbox.metadata.netns_path:
        await rt.netns.remove(Path(sandbox.metadata.netns_path))
    sandbox.network_torn_down = True


async def stop_pod_sandbox(
    rt: RuntimeContext, request: api_pb2.StopPodSandboxRequest
) -> api_pb2.StopPodSandboxResponse:
    sandbox = rt.sandboxes.find(request.pod_sandbox_id)
    if sandbox is not None:
        await stop_sandbox(rt, sandbox)
    return api_pb2.StopPodSandboxResponse()
