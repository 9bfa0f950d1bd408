"""One exec process in a running container, from containerd's Exec to its deletion.

ExecSync and the streaming Exec share this: the process is made from the container's own
process spec (user, env, cwd, capabilities, AppArmor profile; its seccomp filter is the
container's, applied by runc) with the requested argv and terminal flag, Wait is issued
before Start (an instant exit is never missed), and the process is *always* deleted again.

    async with exec_process(client, container, exec_id=..., cmd=..., tty=..., stdio=io.paths) as p:
        ...                                  # feed stdin, resize, wait for p.exited
    # here the exec process is gone from containerd, whatever happened in the block

Races and rules:

* **A caller that goes away kills the process.** If the block ends before the process
  exited — the ExecSync timeout, a client whose gRPC deadline passed, a streaming client that
  disconnected (the body is cancelled) — the process is killed with SIGKILL, waited for
  (bounded), then deleted. The cleanup runs as its own task, shielded from the cancellation
  that ended the block, so a cancelled caller never leaves an exec process behind.
* **The container stopped meanwhile.** containerd refuses an exec in a task that is not
  running ("cannot exec in a stopped state", NotFound for a deleted task): that is a
  FailedPrecondition for the caller, not an internal error.
* Deleting an exec process that containerd already dropped (its task was deleted with the
  container) is a success.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from cri_api.v1 import api_pb2

from pycri.cio.fifo import StdioPaths
from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import ContainerdError, NotFoundError
from pycri.containerd.types import ExitStatus, TaskStatus
from pycri.errors import FailedPrecondition
from pycri.service import records
from pycri.store.container import Container

log = logging.getLogger(__name__)

KILL_WAIT = 10.0  # after SIGKILL, how long to wait for the exit before deleting anyway
CALL_TIMEOUT = 30.0


def new_exec_id() -> str:
    return f"exec-{secrets.token_hex(8)}"


@dataclass
class ExecProcess:
    container_id: str
    exec_id: str
    exited: asyncio.Task[ExitStatus]  # Tasks.Wait of the process; done once it exited
    _client: ContainerdClient

    async def close_stdin(self) -> None:
        """Tasks.CloseIO: the shim's own write end of the stdin FIFO (EOF for the process)."""
        await self._client.tasks.close_io(self.container_id, self.exec_id, timeout=CALL_TIMEOUT)

    async def resize(self, *, width: int, height: int) -> None:
        await self._client.tasks.resize_pty(
            self.container_id, self.exec_id, width=width, height=height, timeout=CALL_TIMEOUT
        )

    async def kill(self) -> None:
        try:
            await self._client.tasks.kill(
                self.container_id, int(signal.SIGKILL), exec_id=self.exec_id, timeout=KILL_WAIT
            )
        except ContainerdError as err:  # it exited meanwhile, or its task is gone
            log.debug("killing exec failed", extra={"exec_id": self.exec_id, "error": str(err)})


async def _refused(
    client: ContainerdClient, container: Container, err: ContainerdError
) -> FailedPrecondition | None:
    """containerd's (or runc's) answer to an exec in a task that no longer runs, as the
    caller sees it. The wording varies with the moment ("cannot exec in a stopped state",
    a task NotFound, runc's "error executing setns process" when the container exits
    between Exec and Start), so the task's own state decides."""
    text = err.message.lower()
    if isinstance(err, NotFoundError) or "stopped" in text or "not running" in text:
        return FailedPrecondition(f"container {container.id} is not running")
    try:
        task = await client.tasks.get(container.id, timeout=CALL_TIMEOUT)
    except NotFoundError:
        task = None
    except ContainerdError:
        return None  # cannot tell: the original error stands
    if task is None or task.status is not TaskStatus.RUNNING:
        return FailedPrecondition(f"container {container.id} is not running")
    return None


@contextlib.asynccontextmanager
async def exec_process(
    client: ContainerdClient,
    container: Container,
    *,
    exec_id: str,
    cmd: Sequence[str],
    tty: bool,
    stdio: StdioPaths,
) -> AsyncIterator[ExecProcess]:
    """Exec ``cmd`` in ``container`` and start it; on leaving, kill it if still running and
    delete it (see the module docstring)."""
    if container.status.state != api_pb2.CONTAINER_RUNNING:
        raise FailedPrecondition(f"container {container.id} is not running")
    record = await client.containers.get(container.id, timeout=CALL_TIMEOUT)
    process = dict(records.record_spec(record).get("process", {}))
    process["args"] = list(cmd)
    process["terminal"] = tty
    try:
        await client.tasks.exec(
            container_id=container.id,
            exec_id=exec_id,
            process=process,
            stdin=stdio.stdin,
            stdout=stdio.stdout,
            stderr=stdio.stderr,
            terminal=tty,
            timeout=CALL_TIMEOUT,
        )
    except ContainerdError as err:
        raise await _refused(client, container, err) or err from None
    wait = asyncio.create_task(client.tasks.wait(container.id, exec_id), name=f"wait-{exec_id}")
    running = ExecProcess(container_id=container.id, exec_id=exec_id, exited=wait, _client=client)
    try:
        await asyncio.sleep(0)  # Wait is sent before Start
        try:
            await client.tasks.start(container.id, exec_id, timeout=CALL_TIMEOUT)
        except ContainerdError as err:
            raise await _refused(client, container, err) or err from None
        yield running
    finally:
        cleanup = asyncio.create_task(_cleanup(running), name=f"exec-cleanup-{exec_id}")
        await asyncio.shield(cleanup)


async def _cleanup(running: ExecProcess) -> None:
    wait = running.exited
    if not wait.done():
        await running.kill()
        with contextlib.suppress(TimeoutError, ContainerdError):
            async with asyncio.timeout(KILL_WAIT):
                await asyncio.shield(wait)
    if not wait.done():
        wait.cancel()
    with contextlib.suppress(asyncio.CancelledError, ContainerdError):
        await wait  # retrieve its outcome, so asyncio never reports it unretrieved
    try:
        await running._client.tasks.delete_process(
            running.container_id, running.exec_id, timeout=CALL_TIMEOUT
        )
    except NotFoundError:
        pass  # gone with its task, or never created
    except ContainerdError as err:
        log.warning(
            "deleting an exec process failed",
            extra={
                "exec_id": running.exec_id,
                "container_id": running.container_id,
                "error": str(err),
            },
        )
