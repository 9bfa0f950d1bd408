"""The undo journal: a create that fails half-way is undone for sure, even across crashes.

``service/rollback.py`` undoes a failed RunPodSandbox/CreateContainer step by step, in the
RPC's own task. That is not enough when the thing that failed is containerd itself (killed,
restarting): the undo steps fail too, and without more the half-made object (a containerd
container record, its snapshot, a ``pycri-create-*`` lease, a task stuck in CREATED with its
shim, a cgroup, a netns pin, its directories) would stay behind, listed by no RPC and known
to nobody. So every create is journaled:

1. **Before the first thing is made** (netns, directories, lease...) the create writes an
   *intent*, ``ROOT/creating/<id>``: kind, ID, cgroup and when (``begin``; atomic, fsynced).
   Everything a create can make is named by the ID alone (the record, snapshot and task
   are keyed by it, the lease is ``pycri-create-<id>``, the dirs and the netns pin are
   ``paths.py``'s), so the intent needs nothing more.
2. **On success** the intent is removed once the object is in its store (``done``; the
   unlink is fsynced): from then on the object is a normal one that recovery loads.
3. **On failure** the in-process rollback runs first. If every step succeeded, the intent is
   removed. If a step failed, the ID goes to this journal's own dispatcher
   (``finish_later``): an ``EventDispatcher`` whose handler removes, by ID, whatever of the
   object still exists (``Cleanup``), retried with the dispatcher's backoff (first after
   1 s, since what made the step fail, containerd gone, rarely passes at once; doubling to
   5 min) until it succeeds, and only then removes the intent.
4. **At start** recovery reads every intent before it loads anything (``pending``): those
   objects are never loaded, listed or given their names back; their cleanup is submitted
   once the daemon runs (``resume``). A crash anywhere, even in the middle of a rollback,
   therefore ends with the object gone.
5. **Out of process**, ``pycri check --orphans`` lists intents as half-made objects (while a
   daemon holds the state lock, only those older than a minute: younger ones may be creates
   in flight) and ``pycri gc`` runs the same ``Cleanup`` for them.

Cleanup of one ID (every step idempotent; the first failure ends the attempt, since later
steps may need what earlier ones remove: containerd refuses to delete a record whose task
lives, and CNI DEL needs the record's stored network config): kill and delete the task
(so the shim exits and runc removes the cgroup) → for a sandbox, CNI DEL with the network
config stored in its record (given up after ``GIVE_UP_AFTER`` failed attempts, counted in
the intent, as StopPodSandbox does) → the containerd record → the snapshot → the lease →
a shim still running under the object's ID (containerd died in Tasks.Create: the next
containerd never knew the task, ``containerd/shims.py``) → the netns pin → the object's
directories → its cgroup in every hierarchy (its processes killed first, in case runc
never got to delete it).

Races: the journal's cleanup for an ID runs only after that ID's create has ended (its
rollback called ``finish_later``), and a committed object is never journaled, so a cleanup
never meets a live object. ``pycri gc`` and the daemon may both clean an ID: the steps are
idempotent and whoever finishes removes the intent. The in-process rollback is kept (not
replaced by the journal): it runs at once, knows what the create made (CNI ADD progress)
and keeps the halted-CNI rule of ``rollback.py``.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from pycri.cgroups import remove_cgroup
from pycri.containerd.errors import NotFoundError
from pycri.events.dispatcher import EventDispatcher
from pycri.events.types import Kind
from pycri.net.manager import NetworkTeardownError
from pycri.paths import Paths
from pycri.service import records
from pycri.store import checkpoint
from pycri.store.sandbox import SandboxMetadata

if TYPE_CHECKING:
    from pycri.containerd.client import ContainerdClient
    from pycri.net.manager import PodNetwork
    from pycri.net.netns import NetNS

log = logging.getLogger(__name__)

#: A cleanup attempt may wait for several containerd calls (task kill, wait, delete).
CLEANUP_TIMEOUT_S = 120.0
#: Failed CNI DELs of a half-made sandbox after which the network is given up (logged).
GIVE_UP_AFTER = 3


@dataclass(frozen=True, kw_only=True)
class Intent:
    """A create in progress (or a failed one not yet undone): what ``ROOT/creating/<id>`` holds."""

    kind: Kind
    object_id: str
    cgroups_path: str  # the object's cgroup, relative to each hierarchy's root
    created_at: float  # Unix seconds
    network_failures: int = 0  # failed CNI DELs of its cleanup (sandboxes)

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind.value,
            "id": self.object_id,
            "cgroups_path": self.cgroups_path,
            "created_at": self.created_at,
            "network_failures": self.network_failures,
        }

    @classmethod
    def from_json(cls, doc: dict[str, object]) -> Intent:
        return cls(
            kind=Kind(str(doc["kind"])),
            object_id=str(doc["id"]),
            cgroups_path=str(doc.get("cgroups_path", "")),
            created_at=float(str(doc.get("created_at", 0))),
            network_failures=int(str(doc.get("network_failures", 0))),
        )


def read_intents(directory: Path) -> list[Intent]:
    """Every intent under ``directory`` (blocking); unreadable ones are logged and skipped."""
    if not directory.is_dir():
        return []
    found = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith("."):
            continue  # a temp file of an interrupted write
        try:
            found.append(Intent.from_json(checkpoint.read_sync(entry)))
        except (checkpoint.CheckpointError, KeyError, ValueError) as err:
            log.error("unreadable undo intent", extra={"path": str(entry), "error": repr(err)})
    return found


class Cleanup:
    """Removes whatever a create of one ID made, knowing only the ID (and its intent)."""

    def __init__(
        self,
        *,
        client: ContainerdClient,
        snapshotter: str,
        paths: Paths,
        netns: NetNS,
        network: PodNetwork,
    ) -> None:
        self._client = client
        self._snapshotter = snapshotter
        self._paths = paths
        self._netns = netns
        self._network = network

    async def __call__(self, intent: Intent) -> None:
        """One attempt; raises at the first step that fails (NetworkTeardownError, containerd
        errors, OSError). ``intent.network_failures`` decides whether DEL may be given up."""
        object_id = intent.object_id
        client = self._client
        await records.force_delete_task(client, object_id)
        if intent.kind is Kind.SANDBOX:
            metadata = await self._sandbox_metadata(object_id)
            if metadata is not None:
                await self._network.teardown(
                    metadata, give_up=intent.network_failures >= GIVE_UP_AFTER
                )
        try:
            await client.containers.delete(object_id, timeout=30)
        except NotFoundError:
            pass
        try:
            await client.snapshots.remove(self._snapshotter, object_id)
        except NotFoundError:
            pass
        try:
            await client.leases.delete(records.lease_id(object_id))
        except NotFoundError:
            pass
        # A shim started for a task containerd never recorded (it died in Tasks.Create)
        # outlives everything above: nothing but its pid reaches it.
        await records.kill_stray_shim(client, object_id)
        paths = self._paths
        if intent.kind is Kind.SANDBOX:
            await self._netns.remove(self._netns.path_for(object_id))
            dirs = [paths.sandbox_dir(object_id)]
        else:
            dirs = [paths.container_dir(object_id), paths.container_run_dir(object_id)]
        for directory in dirs:
            await asyncio.to_thread(shutil.rmtree, directory, True)
        if intent.cgroups_path:
            await asyncio.to_thread(remove_cgroup, intent.cgroups_path)

    async def _sandbox_metadata(self, object_id: str) -> SandboxMetadata | None:
        try:
            record = await self._client.containers.get(object_id, timeout=30)
        except NotFoundError:
            return None
        try:
            return SandboxMetadata.from_json(records.record_metadata(record))
        except (KeyError, ValueError) as err:
            log.error(
                "half-made sandbox with unreadable metadata: its network cannot be released",
                extra={"sandbox_id": object_id, "error": repr(err)},
            )
            return None


class UndoJournal:
    """The intents on disk and the retries that finish failed rollbacks (module docstring)."""

    def __init__(
        self,
        *,
        directory: Path,
        cleanup: Callable[[Intent], Awaitable[None]],
        initial_delay_s: float = 1.0,
        check_interval: float = 1.0,
    ) -> None:
        self.directory = directory
        self._cleanup = cleanup
        self._dispatcher: EventDispatcher[Intent] = EventDispatcher(
            handler=self._handle,
            handle_timeout=CLEANUP_TIMEOUT_S,
            check_interval=check_interval,
            initial_delay_s=initial_delay_s,
            name="undo",
        )
        self._unfinished: set[str] = set()  # IDs handed to the dispatcher, not yet cleaned

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._dispatcher.start()

    async def stop(self) -> None:
        """Stop retrying (the intents stay on disk: the next start finishes them)."""
        await self._dispatcher.stop()

    def __len__(self) -> int:
        """Half-made objects whose undo is still being retried."""
        return len(self._unfinished)

    # ---------------------------------------------------------------- creates

    async def begin(self, intent: Intent) -> None:
        """Persist the intent before the create makes anything (OSError if it cannot)."""
        await asyncio.to_thread(self._write, intent)

    def _write(self, intent: Intent) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        checkpoint.write_sync(self.directory / intent.object_id, intent.to_json())

    async def done(self, object_id: str) -> None:
        """The create committed, or its rollback removed everything: drop the intent.

        Never raises: the object is complete either way; a failure is logged (a stale intent
        would make the next start undo a complete object, so it is worth an error line).
        """
        try:
            await asyncio.to_thread(checkpoint.remove_sync, self.directory / object_id)
        except OSError as err:
            log.error(
                "could not remove an undo intent", extra={"id": object_id, "error": repr(err)}
            )

    def finish_later(self, intent: Intent) -> None:
        """A rollback step failed: retry the cleanup of the object until it succeeds.

        The first attempt comes after the dispatcher's initial delay, not now: what made
        the step fail (containerd gone) rarely passes at once.
        """
        log.warning(
            "rollback incomplete; its undo is retried until it succeeds",
            extra={"id": intent.object_id, "kind": intent.kind.value},
        )
        self._unfinished.add(intent.object_id)
        self._dispatcher.queue.enqueue(intent.object_id, intent)

    # ---------------------------------------------------------------- recovery

    async def pending(self) -> list[Intent]:
        """The intents on disk (recovery: these objects are half-made, never to be loaded)."""
        return await asyncio.to_thread(read_intents, self.directory)

    def resume(self, intents: list[Intent]) -> None:
        """Recovery: finish the cleanup of every half-made object found at start."""
        for intent in intents:
            log.info(
                "undoing an object whose create did not finish",
                extra={"id": intent.object_id, "kind": intent.kind.value},
            )
            self._unfinished.add(intent.object_id)
            self._dispatcher.queue.enqueue(intent.object_id, intent)

    # ---------------------------------------------------------------- internals

    def _read(self, object_id: str) -> Intent | None:
        try:
            return Intent.from_json(checkpoint.read_sync(self.directory / object_id))
        except checkpoint.CheckpointError:
            return None  # gone: finished by someone else (pycri gc)
        except (KeyError, ValueError) as err:
            log.error("unreadable undo intent", extra={"id": object_id, "error": repr(err)})
            return None

    async def _handle(self, object_id: str, queued: Intent) -> None:
        del queued  # re-read: the failure count may have changed, gc may have finished it
        intent = await asyncio.to_thread(self._read, object_id)
        if intent is None:
            self._unfinished.discard(object_id)
            return
        try:
            await self._cleanup(intent)
        except NetworkTeardownError:
            counted = replace(intent, network_failures=intent.network_failures + 1)
            await asyncio.to_thread(self._write, counted)
            raise
        await self.done(object_id)
        self._unfinished.discard(object_id)
        log.info("half-made object undone", extra={"id": object_id, "kind": intent.kind.value})
