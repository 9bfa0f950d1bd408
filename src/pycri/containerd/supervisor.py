"""The managed containerd: pycri's own containerd, started, watched and stopped by pycri.

By default pycri runs a private containerd (root and state under pycri's dirs, containerd's
own CRI plugin disabled, socket at ``STATE/containerd/containerd.sock``), so it never
fights a system containerd or a second pycri over state.

Life cycle and its races:
- **Adopt before start.** If a containerd already answers on our socket (pycri was SIGKILLed,
  its containerd lived on in its own session), it is adopted: containers keep running and no
  second containerd is started on the same dirs. Its pid comes from the pid file.
- **Start.** Otherwise containerd is spawned in a new session (so a signal to pycri's
  process group never reaches it) and pycri waits until ``Version`` answers.
- **Watch.** A watcher task notices the process dying (our child: ``wait()``; adopted: a
  liveness poll of the pid) and starts it again, with a capped backoff so a containerd that
  dies at once is not spun. While it is down, ``Status`` reports RuntimeReady=false, because
  readiness is always probed, never remembered.
- **Stop.** SIGTERM, then SIGKILL after a grace period. Shims are separate processes, so
  running containers survive a containerd stop and are picked up again by the next start.

Only the plugins pycri uses are loaded (``render_config``): pycri needs content, metadata,
one snapshotter, the walking differ, leases, events, GC, introspection, the v2 task runtime
(the v1 runtime too: containerd's tasks service refuses to start without one) and the
services on top of them. Everything in ``config.UNUSED_CONTAINERD_PLUGINS`` is disabled
unless the operator keeps it (``managed_containerd_disabled_plugins``); a Go memory limit
and GC percent, if configured (``managed_containerd_memory_limit``,
``managed_containerd_gogc``), are passed to it as ``GOMEMLIMIT`` / ``GOGC``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pycri.containerd.client import ContainerdClient
from pycri.containerd.errors import ContainerdError

log = logging.getLogger(__name__)

RESTART_BACKOFF_INITIAL = 0.5
RESTART_BACKOFF_MAX = 10.0
READY_TIMEOUT = 30.0
STOP_GRACE = 10.0


CRI_PLUGIN = "io.containerd.grpc.v1.cri"  # always off: pycri is the CRI
SNAPSHOTTER_PLUGIN_PREFIX = "io.containerd.snapshotter.v1."


def disabled_plugins(*, unused: Sequence[str], snapshotter: str) -> list[str]:
    """The CRI plugin and the given unused ones, never the configured snapshotter."""
    keep = SNAPSHOTTER_PLUGIN_PREFIX + snapshotter
    return [CRI_PLUGIN, *(p for p in unused if p not in (keep, CRI_PLUGIN))]


def go_environment(*, memory_limit: str, gogc: int) -> dict[str, str]:
    """GOMEMLIMIT / GOGC for the managed containerd; empty and 0 leave Go's defaults."""
    env = {}
    if memory_limit:
        env["GOMEMLIMIT"] = memory_limit
    if gogc:
        env["GOGC"] = str(gogc) if gogc > 0 else "off"
    return env


def render_config(
    *, root: Path, state: Path, socket: Path, disabled: Sequence[str] = (CRI_PLUGIN,)
) -> str:
    """containerd 1.6 config (version 2) for a private instance without its CRI plugin."""
    return "\n".join(
        [
            "version = 2",
            f'root = "{root}"',
            f'state = "{state}"',
            "disabled_plugins = [" + ", ".join(f'"{p}"' for p in disabled) + "]",
            "",
            "[grpc]",
            f'  address = "{socket}"',
            "",
            "[ttrpc]",
            f'  address = "{socket}.ttrpc"',
            "",
            "[debug]",
            '  level = "info"',
            "",
            '[plugins."io.containerd.internal.v1.opt"]',  # used only if not disabled
            f'  path = "{root}/opt"',
            "",
        ]
    )


async def answers(socket: Path, *, timeout: float = 2.0) -> bool:
    """True when a containerd answers Version on ``socket``."""
    if not socket.exists():  # noqa: ASYNC240 - a stat in /run, never stalls
        return False
    client = ContainerdClient(str(socket))
    try:
        await client.version(timeout=timeout)
        return True
    except ContainerdError:
        return False
    finally:
        await client.close()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still "exists" for kill(0); look at its state.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


async def _wait_pid(pid: int) -> None:
    """Wait for a process that is not our child to exit (pidfd: no polling)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class ManagedContainerd:
    """Runs and supervises a private containerd under ``root``/``state``."""

    def __init__(
        self,
        *,
        root: Path,
        state: Path,
        binary: str = "containerd",
        disabled: Sequence[str] = (CRI_PLUGIN,),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.root = root / "containerd"
        self.state = state / "containerd"
        self.binary = binary
        self.disabled = tuple(disabled)
        self.env = dict(env or {})  # added to pycri's own environment
        self.socket = self.state / "containerd.sock"
        self.config_path = self.state / "config.toml"
        self.pid_path = self.state / "containerd.pid"
        self.log_path = self.root / "containerd.log"
        self.pid: int | None = None
        self.restarts = 0
        self._proc: asyncio.subprocess.Process | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Adopt a live containerd on our socket, or start one; return once it answers."""
        self._stopping = False
        if await answers(self.socket):
            self.pid = self._read_pid()
            log.info(
                "adopted running managed containerd",
                extra={"pid": self.pid, "socket": str(self.socket)},
            )
        else:
            await self._spawn()
        self._watcher = asyncio.create_task(self._watch(), name="containerd-watcher")

    async def _spawn(self) -> None:
        await asyncio.to_thread(self._prepare_dirs)
        log_file = await asyncio.to_thread(open, self.log_path, "ab")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                self.binary,
                "--config",
                str(self.config_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,
                env={**os.environ, **self.env},
            )
        finally:
            log_file.close()
        self.pid = self._proc.pid
        await asyncio.to_thread(self.pid_path.write_text, str(self.pid))
        log.info(
            "started managed containerd",
            extra={
                "pid": self.pid,
                "socket": str(self.socket),
                "log": str(self.log_path),
                "disabled_plugins": ",".join(self.disabled),
                **{k.lower(): v for k, v in self.env.items()},
            },
        )
        deadline = time.monotonic() + READY_TIMEOUT
        while not await answers(self.socket, timeout=1.0):
            if self._proc.returncode is not None:
                tail = await asyncio.to_thread(self._log_tail)
                raise RuntimeError(
                    f"containerd exited with {self._proc.returncode} at start; "
                    f"last log lines:\n{tail}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"containerd did not answer on {self.socket} in time")
            await asyncio.sleep(0.1)

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()  # stale: nothing answered on it
        self.config_path.write_text(
            render_config(
                root=self.root, state=self.state, socket=self.socket, disabled=self.disabled
            )
        )

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def _wait_exit(self) -> None:
        if self._proc is not None:
            await self._proc.wait()
            return
        if self.pid is None:
            # Adopted without a pid file: fall back to probing the socket.
            while await answers(self.socket):  # noqa: ASYNC110 - nothing to wait on
                await asyncio.sleep(1.0)
            return
        await _wait_pid(self.pid)

    async def _watch(self) -> None:
        backoff = RESTART_BACKOFF_INITIAL
        while not self._stopping:
            await self._wait_exit()
            if self._stopping:
                return
            code = self._proc.returncode if self._proc else None
            log.error(
                "managed containerd died; restarting",
                extra={"pid": self.pid, "exit_code": code, "delay_s": backoff},
            )
            self._proc = None
            await asyncio.sleep(backoff)
            started = time.monotonic()
            try:
                await self._spawn()
                self.restarts += 1
            except (RuntimeError, OSError) as err:
                log.error("restarting containerd failed", extra={"error": str(err)})
            # A containerd that stays up resets the backoff; one that dies at once doubles it.
            if time.monotonic() - started > 30:
                backoff = RESTART_BACKOFF_INITIAL
            else:
                backoff = min(backoff * 2, RESTART_BACKOFF_MAX)

    async def stop(self, *, grace: float = STOP_GRACE) -> None:
        """Stop containerd (running containers live on in their shims)."""
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        pid = self.pid
        if pid is None or not _pid_alive(pid):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _pid_alive(pid) and time.monotonic() < deadline:
            if self._proc is not None and self._proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        if _pid_alive(pid):
            log.warning("containerd ignored SIGTERM; killing", extra={"pid": pid})
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            await self._proc.wait()
        with contextlib.suppress(OSError):
            self.pid_path.unlink()
        log.info("stopped managed containerd", extra={"pid": pid})
