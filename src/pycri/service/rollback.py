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
        self._steps: list[tuple[str, Callable[[], Awaitable[object] | object]]] = []
        self._committed = False
        self.failed_steps: list[str] = []

    def push(self, name: str, undo: Callable[[], Awaitable[object] | object]) -> None:
        """Register an undo step (sync or async); steps run last-pushed first."""
        self._steps.append((name, undo))

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
        for name, undo in reversed(self._steps):
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
        log.info(
            "rolled back",
            extra={"object": self.what, "cause": repr(cause), "steps": len(self._steps)},
        )
