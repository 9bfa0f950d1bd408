"""Undo steps for multi-step creates: whatever a failed RunPodSandbox/CreateContainer made
is removed again, in reverse order, so bad input never leaves a containerd container,
snapshot, task, netns or file behind.

Usage::

    async with Rollback(what=f"sandbox {id}") as undo:
        await make_a(); undo.push("remove a", remove_a)
        await make_b(); undo.push("remove b", remove_b)
        undo.commit()          # success: keep everything

An undo step that fails is logged and the others still run; the original error propagates.
Undo steps run shielded from cancellation (a client that hangs up mid-create must not
strand half of it).

A step pushed with ``critical=True`` (CNI teardown: only it knows how to release the pod's
IP) *halts* the rollback when it fails: the steps pushed before it are not run, so what it
depends on (the record holding the network config, the netns, the name) stays for a later
StopPodSandbox/RemovePodSandbox to finish; ``halted`` names the step. Containerd's plugin
does the same since 1.6.10 (reference §2.3, §6.4 item 20) — deleting them would leak the IP.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType

log = logging.getLogger(__name__)

UNDO_TIMEOUT = 60.0  # like containerd's deferCleanupTimeout


class Rollback:
    def __init__(self, *, what: str) -> None:
        self.what = what
        self._steps: list[tuple[str, Callable[[], Awaitable[object] | object], bool]] = []
        self._committed = False
        self.failed_steps: list[str] = []
        self.halted = ""  # the critical step whose failure stopped the rollback

    def push(
        self, name: str, undo: Callable[[], Awaitable[object] | object], *, critical: bool = False
    ) -> None:
        """Register an undo step (sync or async); steps run last-pushed first."""
        self._steps.append((name, undo, critical))

    def commit(self) -> None:
        self._committed = True

    async def __aenter__(self) -> Rollback:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None and self._committed:
            return
        await asyncio.shield(self._undo_all(exc))

    async def _undo_all(self, cause: BaseException | None) -> None:
        for name, undo, critical in reversed(self._steps):
            try:
                async with asyncio.timeout(UNDO_TIMEOUT):
                    result = undo()
                    if inspect.isawaitable(result):
                        await result
            except Exception as err:
                self.failed_steps.append(name)
                log.error(
                    "rollback step failed",
                    extra={"object": self.what, "step": name, "error": repr(err)},
                )
                if critical:
                    self.halted = name
                    log.error(
                        "rollback halted; the rest is left for a later stop/remove",
                        extra={"object": self.what, "step": name},
                    )
                    break
        log.info(
            "rolled back",
            extra={"object": self.what, "cause": repr(cause), "steps": len(self._steps)},
        )
