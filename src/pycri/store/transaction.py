"""One object's mutable status, changed only through a transaction: apply, persist, publish.

Both sandboxes and containers keep their status in a ``Transactional``: a frozen status
value that readers get as an immutable snapshot, and ``update(change)``, the single way to
change it:

    async with the object's lock:
        new = change(current)           # a pure function; raising aborts, nothing changes
        if new's persisted part differs: write the checkpoint (temp, fsync, rename, dir fsync)
        publish new                     # readers see it only now
        on_published(new)               # e.g. wake waiters on an exit

Races and why the lock spans the write: ``update`` awaits the checkpoint write (a worker
thread). If a second change could be computed from the same old status meanwhile, one of the
two would be lost when both publish. So every change, including the in-memory fences that
are never persisted (``starting``, ``removing`` of a container), goes through ``update`` and
waits for the lock: a fence set while a checkpoint is being written lands *after* that write,
on top of its result, and is never overwritten. The lock is held only around the change and
its write, never across a containerd call, so an exit handler never waits behind a slow shim
call of an RPC.

A failed write raises and leaves the published status as it was (the caller retries: exit
handling goes to its backoff queue).

Removal and late writes: ``retire()`` is the last transaction of an object whose removal
is about to delete its directory. From then on a change that would write the checkpoint
raises ``Retired`` (a FailedPrecondition: "being removed") and changes nothing, so a late
exit-handler retry, an OOM event or an UpdateContainerResources that started before the
removal can never re-create ``ROOT/containers/<id>/`` (nor a sandbox's directory); changes
of in-memory fields still apply. The checkpoint writer never creates directories either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from pycri.errors import FailedPrecondition
from pycri.store import checkpoint


class Retired(FailedPrecondition):
    """A persisted change of an object whose removal has begun deleting its files."""


class Persistable(Protocol):
    def persisted(self) -> dict[str, Any]:
        """The part of the status that goes into the checkpoint."""
        ...


S = TypeVar("S", bound=Persistable)


class Transactional(Generic[S]):
    """A status of type ``S``, checkpointed at ``status_path`` (None: kept in memory only)."""

    def __init__(self, status: S, *, status_path: Path | None) -> None:
        self._status = status
        self.status_path = status_path
        self._lock = asyncio.Lock()
        self._retired = ""  # what the object is, once its removal deletes its files

    @property
    def status(self) -> S:
        return self._status  # frozen: callers get an immutable snapshot

    async def update(self, change: Callable[[S], S]) -> S:
        """Apply ``change`` transactionally: checkpoint first (when needed), then publish."""
        async with self._lock:
            old = self._status
            new = change(old)
            if self.status_path is not None and new.persisted() != old.persisted():
                if self._retired:
                    raise Retired(f"{self._retired} is being removed")
                await checkpoint.write(self.status_path, new.persisted())
            self._status = new
            self._published(new)
            return new

    async def retire(self, what: str) -> None:
        """The removal deletes the files now: no persisted change is accepted any more.

        Under the lock, so a write in progress ends before the caller deletes anything.
        """
        async with self._lock:
            self._retired = what

    def _published(self, status: S) -> None:
        """Hook for subclasses: runs once ``status`` is visible (under the lock)."""
