"""StopPodSandbox: stop every container of the pod, then its pause task, then its network.

Idempotent: an unknown ID is a success (kubelet treats NOT_FOUND as done anyway, and
crictl retries), and calling it again on a NOTREADY sandbox just re-checks each step.
The pause task is killed only while the sandbox is READY/UNKNOWN; the call then waits for
the exit monitor to record the exit (it never records it itself), bounded by STOP_TIMEOUT,
and for the task's delete after it, bounded by ``container_stop.TEARDOWN_WAIT``.

Then the network (``teardown_network``): CNI DEL with the config stored in the sandbox's
metadata, then the netns is removed. DEL is retried inside the call; if it keeps failing
the call fails with the plugin's error (kubelet retries), the netns stays so the next DEL
still finds the pod's interface, and the failure is counted on the sandbox. After
``GIVE_UP_AFTER`` failed calls the next Stop/Remove tries DEL once more, then logs what
may leak and goes on (kubelet removes a sandbox only after its StopPodSandbox succeeded,
so Stop must give up too), so a broken plugin never blocks removal forever. The count is
in the sandbox's status checkpoint, so it survives a restart of pycri. The sandbox's
``stopping`` lock serializes all of it per sandbox; different sandboxes tear down in parallel.

First of all the pod is closed (``Sandbox.begin_closing``): no container may be created or
started in it any more, and the creates already under way are waited for (they roll back
when they see the fence), so the containers stopped here are all the pod will ever have.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from cri_api.v1 import api_pb2

from pycri.containerd.errors import NotFoundError
from pycri.errors import DeadlineExceeded
from pycri.events.types import Kind
from pycri.net.manager import NetworkTeardownError
from pycri.service.container_stop import TEARDOWN_WAIT, stop_container
from pycri.service.context import RuntimeContext
from pycri.store.sandbox import Sandbox, SandboxState

log = logging.getLogger(__name__)

STOP_TIMEOUT = 120.0  # kubelet's default runtime request timeout
GIVE_UP_AFTER = 3  # failed network teardown calls, after which Stop/Remove proceed anyway


async def stop_sandbox(rt: RuntimeContext, sandbox: Sandbox) -> None:
    async with sandbox.stopping:
        await close_sandbox(sandbox)
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
            await _within_stop_timeout(
                sandbox.exited.wait(), f"sandbox {sandbox.id}: pause task exit not recorded"
            )
            await sandbox.task.wait_gone(timeout=TEARDOWN_WAIT)  # as StopContainer
        await teardown_network(rt, sandbox)
    log.info("sandbox stopped", extra={"sandbox_id": sandbox.id})


async def close_sandbox(sandbox: Sandbox) -> None:
    """Fence new creates and starts, then wait for the creates under way to end."""
    if not sandbox.status.closing:
        await sandbox.begin_closing()
    await _within_stop_timeout(
        sandbox.creates.wait_idle(), f"sandbox {sandbox.id}: container creates still under way"
    )


async def _within_stop_timeout(waiting: Coroutine[Any, Any, object], what: str) -> None:
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            await waiting
    except TimeoutError:
        raise DeadlineExceeded(f"{what} after {STOP_TIMEOUT}s") from None


async def teardown_network(rt: RuntimeContext, sandbox: Sandbox) -> None:
    """CNI DEL and netns removal, once; NetworkTeardownError if DEL keeps failing."""
    if sandbox.status.network_torn_down:
        return
    give_up = sandbox.status.network_teardown_failures >= GIVE_UP_AFTER
    try:
        await rt.network.teardown(sandbox.metadata, give_up=give_up)
    except NetworkTeardownError:
        await sandbox.record_teardown_failure()
        raise
    await sandbox.record_network_torn_down()


async def stop_pod_sandbox(
    rt: RuntimeContext, request: api_pb2.StopPodSandboxRequest
) -> api_pb2.StopPodSandboxResponse:
    sandbox = rt.sandboxes.find(request.pod_sandbox_id)
    if sandbox is not None:
        await stop_sandbox(rt, sandbox)
    return api_pb2.StopPodSandboxResponse()
