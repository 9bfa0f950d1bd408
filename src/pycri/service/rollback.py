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

Durability (``service/undo.py``): ``await undo.journal(rt.undo, intent)``, called before the
first step that makes something, persists an intent for the object. The intent is dropped
when the create commits or when every undo step succeeded (or a critical step halted the
rollback: the object is then kept, listed, for a later Stop/Remove). When any other step
failed (containerd was down), the object goes to the undo journal, which retries removing
it by ID until that succeeds, across restarts. Steps are registered *before* the step they
undo wherever that step cannot tell whether it made something (all undo steps are
idempotent), so a step that fails half-way is undone too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING

from pycri.service.faults import InjectedFault

if TYPE_CHECKING:
    from pycri.service.undo import Intent, UndoJournal

log = logging.getLogger(__name__)

UNDO_TIMEOUT = 60.0  # like containerd's deferCleanupTimeout


class Rollback:
    def __init__(self, *, what: str, fault: Callable[[], bool] | None = None) -> None:
        self.what = what
        # fault injection (tests): True makes the next undo step the journal covers (one
        # pushed after ``journal()``) fail without running, as if containerd were down
        self._fault = fault
        self._journaled_from = 0
        self._steps: list[tuple[str, Callable[[], Awaitable[object] | object], bool]] = []
        self._committed = False
        self.failed_steps: list[str] = []
        self.halted = ""  # the critical step whose failure stopped the rollback
        self._journal: UndoJournal | None = None
        self._intent: Intent | None = None

    def push(
        self, name: str, undo: Callable[[], Awaitable[object] | object], *, critical: bool = False
    ) -> None:
        """Register an undo step (sync or async); steps run last-pushed first."""
        self._steps.append((name, undo, critical))

    def commit(self) -> None:
        self._committed = True

    async def journal(self, journal: UndoJournal, intent: Intent) -> None:
        """Persist ``intent`` now, before anything is made; undo becomes durable."""
        await journal.begin(intent)
        self._journal, self._intent = journal, intent
        self._journaled_from = len(self._steps)

    async def __aenter__(self) -> Rollback:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None and self._committed:
            if self._journal is not None and self._intent is not None:
                await asyncio.shield(self._journal.done(self._intent.object_id))
            return
        await asyncio.shield(self._finish(exc))

    async def _finish(self, cause: BaseException | None) -> None:
        await self._undo_all(cause)
        if self._journal is None or self._intent is None:
            return
        if self.failed_steps and not self.halted:
            self._journal.finish_later(self._intent)
        else:
            await self._journal.done(self._intent.object_id)

    async def _undo_all(self, cause: BaseException | None) -> None:
        for index, (name, undo, critical) in reversed(list(enumerate(self._steps))):
            try:
                injectable = self._journal is not None and index >= self._journaled_from
                if injectable and self._fault is not None and self._fault():
                    raise InjectedFault(f"injected failure of undo step {name!r}")
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
        log.log(
            logging.WARNING if self.failed_steps else logging.INFO,
            "rollback incomplete" if self.failed_steps else "rolled back",
            extra={
                "object": self.what,
                "cause": repr(cause)[:512],
                "steps": len(self._steps),
                "failed": ",".join(self.failed_steps),
            },
        )
