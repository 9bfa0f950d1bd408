"""StopContainer: the stop signal once, wait for the recorded exit, SIGKILL at the timeout.

It never records the exit itself: the exit monitor does, and Stop waits for that (the
container's ``exited`` event). So Stop returns only once the status is EXITED. Then, as
containerd's plugin returns only once the task is deleted, it waits for the exit handler's
task delete too, but at most ``TEARDOWN_WAIT``: a stuck teardown (which runs after the exit
is recorded, and is retried by the dispatcher) holds Stop up no longer than that, and a
Remove right after a Stop finds the task gone instead of waiting for its delete.

- The stop signal (the image's StopSignal, else SIGTERM) is sent at most once per container
  lifetime: repeated or concurrent Stops don't restart the grace period (reference §6.4).
- timeout 0: SIGKILL at once.
- After SIGKILL the call waits until the exit is recorded or the request's deadline ends
  (grpc cancels the handler; the container then keeps running, as kubelet expects).
- A Start under way is waited for first (``start_settled``), so a Stop right after a Start
  stops the container it started instead of returning while it comes up RUNNING.
- CREATED, EXITED and unknown IDs: success without signals (idempotent).
- UNKNOWN (after recovery) gets a monitor first, so the kill is recorded.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from cri_api.v1 import api_pb2

from pycri.containerd.errors import NotFoundError
from pycri.events.types import Kind
from pycri.service.context import RuntimeContext
from pycri.store.container import Container

log = logging.getLogger(__name__)

INTERNAL_KILL_WAIT = 120.0  # bound for internal stops (sandbox stop, remove)
# How long Stop waits for the task delete after the exit was recorded (it normally takes a
# runc delete, tens of milliseconds).
TEARDOWN_WAIT = 1.0


def parse_signal(name: str) -> int:
    """``SIGTERM``, ``TERM``, ``15`` or ``SIGRTMIN+3`` → signal number (SIGTERM if unknown)."""
    text = name.strip().upper()
    if not text:
        return int(signal.SIGTERM)
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    if text.startswith("SIGRTMIN+") and text[9:].isdigit():
        return int(signal.SIGRTMIN) + int(text[9:])
    if text.startswith("SIGRTMAX-") and text[9:].isdigit():
        return int(signal.SIGRTMAX) - int(text[9:])
    try:
        return int(signal.Signals[text])
    except KeyError:
        log.warning("unknown stop signal; using SIGTERM", extra={"signal": name})
        return int(signal.SIGTERM)


async def _kill(rt: RuntimeContext, container: Container, signum: int) -> None:
    try:
        await rt.containerd.tasks.kill(
            container.id, signum, all=signum == signal.SIGKILL, timeout=10
        )
    except NotFoundError:
        pass  # the task is gone already; its monitor records the exit


async def stop_container(
    rt: RuntimeContext, container: Container, *, timeout: float, bounded: bool = True
) -> None:
    await container.start_settled.wait()  # Stop wins over a Start in flight
    state = container.status.state
    if state not in (api_pb2.CONTAINER_RUNNING, api_pb2.CONTAINER_UNKNOWN):
        return
    if not rt.monitors.is_watching(container.id):
        rt.monitors.watch(kind=Kind.CONTAINER, object_id=container.id, pid=container.status.pid)
    if timeout > 0:
        if not container.stop_signal_sent:
            container.stop_signal_sent = True
            signum = parse_signal(container.metadata.stop_signal)
            log.info(
                "stopping container",
                extra={"container_id": container.id, "signal": signum, "timeout_s": timeout},
            )
            await _kill(rt, container, signum)
        try:
            async with asyncio.timeout(timeout):
                await container.exited.wait()
        except TimeoutError:
            log.info("stop timeout; killing", extra={"container_id": container.id})
    if not container.exited.is_set():
        await _kill(rt, container, int(signal.SIGKILL))
        if bounded:
            async with asyncio.timeout(INTERNAL_KILL_WAIT):
                await container.exited.wait()
        else:
            await container.exited.wait()  # until the client's deadline cancels us
    await container.task.wait_gone(timeout=TEARDOWN_WAIT)


async def stop_container_rpc(
    rt: RuntimeContext, request: api_pb2.StopContainerRequest
) -> api_pb2.StopContainerResponse:
    container = rt.containers.find(request.container_id)
    if container is not None:
        await stop_container(rt, container, timeout=float(request.timeout), bounded=False)
    return api_pb2.StopContainerResponse()
