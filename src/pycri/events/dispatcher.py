"""The event dispatcher: handle each event now, or retry it later, one ID at a time.

Every event that changes an object's state (a task exit, an OOM, an image event) goes through
``EventDispatcher.submit(object_id, event)``. The dispatcher owns three things:

1. **The first attempt.** ``submit`` runs the handler at once, in the caller's task (an exit
   monitor's, or the event-stream reader's), bounded by ``handle_timeout`` (10 s). Different IDs
   never wait for each other here: there is no shared queue or worker in front of the handler,
   so one exit whose handling hangs cannot hold up any other exit (the bug containerd's CRI
   plugin had before its per-task monitors, reference §3.2).

2. **Per-ID serialization and order.** Each ID has an ``asyncio.Lock`` held around every handler
   call for it, first attempt or retry, so two handlers of one ID never run at once (an exit and
   an OOM of the same container, behaviour 28). asyncio locks are FIFO, so events of one ID are
   handled in the order ``submit`` was called. If the ID is in backoff or a retry of it is under
   way, a new event is *not* handled: it is appended to the ID's queue, behind the events that
   failed before it (behaviour 7). The check is made again once the lock is held, because the
   event ahead may have failed while this one waited.

3. **Retries.** A failed or timed-out event goes to the ID's ``BackoffQueue``. A ticker
   (``start()``; every ``check_interval``, 1 s) starts one retry task per expired ID. Retries of
   different IDs run concurrently, at most ``max_concurrent_retries`` at a time, so one stuck ID
   delays no other (containerd retries serially in its single event loop, issue #11682). A retry
   handles the ID's dequeued events in order; on the first failure it re-queues that event and
   the rest with a doubled delay and stops for this ID (the later events are not attempted: they
   may depend on the earlier one). Once the whole batch succeeds, it also handles, in the same
   task, whatever was submitted for that ID while it ran, since those events were queued behind
   the batch (behaviour 8); then the ID leaves backoff.

Races and how they are closed:

* *Submit during a retry.* After ``dequeue`` the ID has no queue, so ``in_backoff`` alone would
  let a new event be handled at once, ahead of the older events the retry still holds. The ID
  is therefore marked "retrying" from the moment its retry task is created until it ends, and
  ``submit`` queues while the mark is set. The queue's ``requeue`` merges such events behind
  the remaining ones, so nothing is lost whichever way the retry ends.
* *Remove during handling.* ``remove(id)`` drops the ID's queue and bumps the ID's generation.
  Handling already under way finishes, but its failure is not re-queued (the object is gone,
  retrying would only fail or do nothing), and events submitted before the removal that are
  still waiting for the lock are dropped unhandled. Events submitted after the removal are
  handled normally: a late event for a removed ID finds nothing to do in the handler.
* *Teardown by the removal itself.* A removal that deletes the object's task itself must not
  race the handler's own delete of it (two concurrent deletes of one task can leave its shim
  running with no task record). ``take_over(id)`` holds the ID's lock for the removal's
  block: handling under way finishes first (bounded by ``handle_timeout``), no retry or new
  event is handled meanwhile, and when the block succeeds the ID is removed before the lock
  is released, so the events that waited are dropped: the removal did what they would have.
  If the block fails, nothing is removed and the pending events are retried as before.
* *Cancellation.* If the task running a handler is cancelled (an exit monitor torn down, or
  ``stop()`` cancelling the retries at shutdown), the event it held, and for a retry the events
  after it, go back to the queue before the cancellation propagates: an event accepted by
  ``submit`` is only ever lost through ``remove``. (A retry cancelled this way counts as a
  failure for the delay, which doubles.)
* *A handler that ignores cancellation* cannot be stopped by the timeout; it keeps holding its
  ID's lock (and, for a retry, one retry slot). Only its own ID is affected.

Concurrency model: one asyncio loop, no threads. The per-ID state (lock, generation, retrying
mark) lives in a dict entry that exists only while some coroutine uses it, so the dict does not
grow with every ID ever seen. Nothing here is thread-safe, and nothing needs to be.

For tests, ``clock`` drives the backoff deadlines and ``tick()`` runs one expiry check and waits
for the retries it started, so retry behaviour can be tested without sleeping; the handling
timeout uses the loop's real clock (it bounds real waiting).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pycri.events.backoff import INITIAL_DELAY_S, MAX_DELAY_S, BackoffQueue

log = logging.getLogger(__name__)

E = TypeVar("E")

#: Bound of one handling attempt, first or retry (containerd: ``handleEventTimeout``).
HANDLE_TIMEOUT_S = 10.0
#: Period of the expiry check (containerd: ``backOffExpireCheckDuration``).
CHECK_INTERVAL_S = 1.0
#: Retries of different IDs running at once; beyond it, expired IDs wait for a slot.
MAX_CONCURRENT_RETRIES = 32


class Outcome(enum.StrEnum):
    """How one handling attempt ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


class Disposition(enum.StrEnum):
    """What ``submit`` did with an event."""

    #: Handled now, successfully.
    HANDLED = "handled"
    #: In the ID's backoff queue: its handling failed, or earlier events of the ID are pending.
    QUEUED = "queued"
    #: Dropped unhandled: the object was removed while the event waited for its ID's lock.
    DROPPED = "dropped"


@dataclass(frozen=True, kw_only=True)
class DispatcherStats:
    """A snapshot of the dispatcher's counters, for metrics."""

    #: First attempts (from ``submit``) by outcome.
    first_attempts: dict[Outcome, int]
    #: Retry attempts by outcome, one per event handled in a retry.
    retries: dict[Outcome, int]
    #: Events waiting in the backoff queue, over all IDs.
    queued_events: int
    #: IDs with a backoff queue.
    ids_in_backoff: int
    #: Retry tasks alive (running, or waiting for a slot or their ID's lock).
    retries_in_flight: int
    #: Events dropped because their object was removed.
    dropped_events: int


@dataclass(kw_only=True)
class _IdState:
    """What the dispatcher knows about one ID while some coroutine is using it."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Bumped by ``remove``: handling that started under an older generation must not re-queue.
    generation: int = 0
    #: A retry task exists for this ID (from its creation, before it dequeues, to its end).
    retrying: bool = False
    #: Coroutines and tasks using this entry; it is deleted when the count drops to zero.
    users: int = 0


class EventDispatcher(Generic[E]):
    """Runs ``handler(object_id, event)`` per event, serialized per ID, with backoff retries."""

    def __init__(
        self,
        *,
        handler: Callable[[str, E], Awaitable[None]],
        handle_timeout: float = HANDLE_TIMEOUT_S,
        check_interval: float = CHECK_INTERVAL_S,
        max_concurrent_retries: int = MAX_CONCURRENT_RETRIES,
        clock: Callable[[], float] = time.monotonic,
        initial_delay_s: float = INITIAL_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
        on_failure: Callable[[str, E, BaseException], None] | None = None,
        name: str = "events",
    ) -> None:
        if handle_timeout <= 0 or check_interval <= 0 or max_concurrent_retries < 1:
            raise ValueError("timeouts and intervals must be positive, retries at least 1")
        self._handler = handler
        self._handle_timeout = handle_timeout
        self._check_interval = check_interval
        self._on_failure = on_failure
        self.name = name
        self.queue: BackoffQueue[E] = BackoffQueue(
            clock=clock, initial_delay_s=initial_delay_s, max_delay_s=max_delay_s
        )
        self._retry_slots = asyncio.Semaphore(max_concurrent_retries)
        self._id_states: dict[str, _IdState] = {}
        self._retry_tasks: set[asyncio.Task[None]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._first_attempts: Counter[Outcome] = Counter()
        self._retries: Counter[Outcome] = Counter()
        self._dropped_events = 0

    # ---------------------------------------------------------------- public API

    async def submit(self, object_id: str, event: E) -> Disposition:
        """Handle ``event`` for ``object_id`` now, or queue it behind the ID's pending events.

        Returns once the event is handled, queued or dropped; never raises for a handler failure.
        """
        with self._id_state(object_id) as state:
            if self._must_queue(object_id, state):
                self._queue_behind(object_id, event)
                return Disposition.QUEUED
            generation = state.generation
            async with state.lock:
                if state.generation != generation:
                    self._drop(object_id, 1, reason="removed while waiting")
                    return Disposition.DROPPED
                # While we waited for the lock, the event ahead of us may have failed.
                if self._must_queue(object_id, state):
                    self._queue_behind(object_id, event)
                    return Disposition.QUEUED
                try:
                    outcome = await self._attempt(object_id, event, retry=False)
                except asyncio.CancelledError:
                    if state.generation == generation:
                        self.queue.enqueue(object_id, event)
                        log.info(
                            "event handling cancelled; queued for retry",
                            extra=self._fields(object_id, event),
                        )
                    raise
                if outcome is Outcome.SUCCEEDED:
                    return Disposition.HANDLED
                if state.generation != generation:
                    self._drop(object_id, 1, reason="removed while handling")
                    return Disposition.DROPPED
                self.queue.enqueue(object_id, event)
                log.warning(
                    "event handling failed; queued for retry",
                    extra=self._fields(
                        object_id, event, outcome=outcome, delay_s=self.queue.delay_s(object_id)
                    ),
                )
                return Disposition.QUEUED

    def remove(self, object_id: str) -> int:
        """Forget ``object_id`` (its object is gone): drop its queue; returns the events dropped.

        Handling already running for it finishes but is not re-queued on failure; events
        submitted before this call and still waiting for the ID's lock are dropped.
        """
        dropped = self.queue.remove(object_id)
        state = self._id_states.get(object_id)
        if state is not None:
            state.generation += 1
        if dropped:
            self._drop(object_id, dropped, reason="object removed")
        return dropped

    @contextlib.asynccontextmanager
    async def take_over(self, object_id: str) -> AsyncIterator[None]:
        """Hold ``object_id``'s handling for the block, then ``remove`` it (see the module
        docstring): for a removal that tears the object down itself."""
        with self._id_state(object_id) as state:
            async with state.lock:
                yield
                self.remove(object_id)

    def start(self) -> None:
        """Start the ticker that retries expired IDs every ``check_interval`` (idempotent)."""
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.create_task(self._run_ticker(), name=f"{self.name}-backoff")

    async def stop(self) -> None:
        """Stop the ticker and cancel running retries (their events go back to the queue)."""
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        retries = list(self._retry_tasks)
        for task in retries:
            task.cancel()
        if retries:
            await asyncio.wait(retries)

    async def tick(self) -> None:
        """Run one expiry check and wait for the retries it started (the ticker's step, for tests).

        Retries already running (started by an earlier tick) are not waited for.
        """
        started = self._start_expired_retries()
        if started:
            await asyncio.wait(started)

    def in_backoff(self, object_id: str) -> bool:
        """Whether events of ``object_id`` are waiting for a retry, or a retry of it is running."""
        state = self._id_states.get(object_id)
        return self.queue.in_backoff(object_id) or (state is not None and state.retrying)

    def stats(self) -> DispatcherStats:
        return DispatcherStats(
            first_attempts=dict(self._first_attempts),
            retries=dict(self._retries),
            queued_events=self.queue.depth(),
            ids_in_backoff=len(self.queue),
            retries_in_flight=len(self._retry_tasks),
            dropped_events=self._dropped_events,
        )

    # ---------------------------------------------------------------- retries

    async def _run_ticker(self) -> None:
        while True:
            await asyncio.sleep(self._check_interval)
            try:
                self._start_expired_retries()
            except Exception:
                # A dead ticker would stall every retry forever; log and keep ticking.
                log.exception("backoff expiry check failed", extra={"dispatcher": self.name})

    def _start_expired_retries(self) -> list[asyncio.Task[None]]:
        started: list[asyncio.Task[None]] = []
        for object_id in self.queue.expired_ids():
            existing = self._id_states.get(object_id)
            if existing is not None and existing.retrying:
                # Its running retry will drain this queue when it is done with its batch.
                continue
            state = self._acquire_state(object_id)
            # Marked before the task runs: from now on submit() queues for this ID.
            state.retrying = True
            task = asyncio.create_task(
                self._retry(object_id, state), name=f"{self.name}-retry-{object_id}"
            )
            self._retry_tasks.add(task)
            # Clean-up in a done callback, not in a ``finally`` of _retry: a task cancelled before
            # its first step (stop() right after a tick) never runs its body at all, and the ID
            # must not stay marked "retrying" forever. Registered before any waiter's callback,
            # so it has run by the time tick() or stop() resume.
            task.add_done_callback(functools.partial(self._retry_done, object_id, state))
            started.append(task)
        return started

    async def _retry(self, object_id: str, state: _IdState) -> None:
        try:
            async with self._retry_slots, state.lock:
                await self._drain(object_id, state)
        finally:
            # Cleared here too, in the same step as the lock's release, so that a submit landing
            # between the end of this task and its done callback is handled, not queued.
            state.retrying = False

    def _retry_done(self, object_id: str, state: _IdState, task: asyncio.Task[None]) -> None:
        self._retry_tasks.discard(task)
        state.retrying = False
        self._release_state(object_id, state)
        if not task.cancelled() and (error := task.exception()) is not None:
            # A bug in the machinery (handler failures are caught in _attempt): the batch being
            # handled may be lost. Log it; the ticker and other IDs carry on.
            log.error(
                "backoff retry crashed",
                exc_info=error,
                extra={"dispatcher": self.name, "object_id": object_id},
            )

    async def _drain(self, object_id: str, state: _IdState) -> None:
        """Handle ``object_id``'s queue in order until it is empty or an event fails."""
        generation = state.generation
        while True:
            delay_s = self.queue.delay_s(object_id)
            batch = self.queue.dequeue(object_id)
            if batch is None or delay_s is None:
                # Handled completely (or removed while this retry waited): out of backoff.
                return
            for index, event in enumerate(batch):
                try:
                    outcome = await self._attempt(object_id, event, retry=True)
                except asyncio.CancelledError:
                    if state.generation == generation:
                        self.queue.requeue(object_id, batch[index:], old_duration=delay_s)
                    raise
                if state.generation != generation:
                    # Removed meanwhile: this attempt finished, the rest of the batch is moot.
                    handled = 1 if outcome is Outcome.SUCCEEDED else 0
                    self._drop(object_id, len(batch) - index - handled, reason="removed")
                    return
                if outcome is not Outcome.SUCCEEDED:
                    self.queue.requeue(object_id, batch[index:], old_duration=delay_s)
                    log.warning(
                        "event retry failed; queued again",
                        extra=self._fields(
                            object_id,
                            event,
                            outcome=outcome,
                            delay_s=self.queue.delay_s(object_id),
                            queued=len(self.queue.pending(object_id)),
                        ),
                    )
                    return
            log.info(
                "queued events handled",
                extra={"dispatcher": self.name, "object_id": object_id, "events": len(batch)},
            )
            # Loop: events submitted while this batch was handled were queued behind it (a fresh
            # queue for the ID); they are next in order, so handle them now, not after a delay.

    # ---------------------------------------------------------------- one attempt

    async def _attempt(self, object_id: str, event: E, *, retry: bool) -> Outcome:
        """Run the handler once under the timeout; count and report the outcome.

        The caller holds ``object_id``'s lock.
        """
        timeout = asyncio.timeout(self._handle_timeout)
        error: BaseException | None = None
        try:
            async with timeout:
                await self._handler(object_id, event)
        except TimeoutError as exc:
            # The handler's own TimeoutError (an inner deadline) is a plain failure.
            outcome = Outcome.TIMED_OUT if timeout.expired() else Outcome.FAILED
            error = exc
        except Exception as exc:
            outcome = Outcome.FAILED
            error = exc
        else:
            outcome = Outcome.SUCCEEDED
        (self._retries if retry else self._first_attempts)[outcome] += 1
        if error is not None:
            log.debug(
                "event handler failed",
                exc_info=error if outcome is Outcome.FAILED else None,
                extra=self._fields(object_id, event, outcome=outcome, retry=retry),
            )
            self._report_failure(object_id, event, error)
        return outcome

    def _report_failure(self, object_id: str, event: E, error: BaseException) -> None:
        if self._on_failure is None:
            return
        try:
            self._on_failure(object_id, event, error)
        except Exception:
            # A broken logging hook must not break retries.
            log.exception("on_failure hook raised", extra={"dispatcher": self.name})

    # ---------------------------------------------------------------- helpers

    def _must_queue(self, object_id: str, state: _IdState) -> bool:
        return self.queue.in_backoff(object_id) or state.retrying

    def _queue_behind(self, object_id: str, event: E) -> None:
        self.queue.enqueue(object_id, event)
        log.debug(
            "event queued behind pending events",
            extra=self._fields(object_id, event, queued=len(self.queue.pending(object_id))),
        )

    def _drop(self, object_id: str, count: int, *, reason: str) -> None:
        if count <= 0:
            return
        self._dropped_events += count
        log.info(
            "events dropped",
            extra={
                "dispatcher": self.name,
                "object_id": object_id,
                "events": count,
                "reason": reason,
            },
        )

    def _fields(self, object_id: str, event: E, **more: object) -> dict[str, object]:
        return {
            "dispatcher": self.name,
            "object_id": object_id,
            "event": type(event).__name__,
            **more,
        }

    def _acquire_state(self, object_id: str) -> _IdState:
        state = self._id_states.get(object_id)
        if state is None:
            state = self._id_states[object_id] = _IdState()
        state.users += 1
        return state

    def _release_state(self, object_id: str, state: _IdState) -> None:
        state.users -= 1
        if state.users == 0 and self._id_states.get(object_id) is state:
            del self._id_states[object_id]

    @contextlib.contextmanager
    def _id_state(self, object_id: str) -> Iterator[_IdState]:
        state = self._acquire_state(object_id)
        try:
            yield state
        finally:
            self._release_state(object_id, state)
