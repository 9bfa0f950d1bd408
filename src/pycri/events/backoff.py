"""The per-ID backoff queue: events whose handling failed wait here for their retry.

Why it exists: handling an event (recording an exit, deleting a task, applying an OOM) can fail
or hang for reasons that go away by themselves: a shim that answers slowly, a disk under
pressure, containerd restarting. Dropping the event would leave a container RUNNING forever;
retrying it in a tight loop would hammer the thing that is already struggling. So a failed event
goes into a queue of its own ID and is retried later, with a delay that starts at 1 s and doubles
at each failure up to 5 min. There is no retry limit: an ID stays in backoff until its whole
queue has been handled or the object is removed.

The structure, one entry per ID (a container or sandbox ID, or an image name)::

    "3f2a…" -> events [exit, oom]   delay 4 s    deadline t+4 s
    "9c01…" -> events [exit]        delay 1 s    deadline t+1 s

* ``enqueue(id, event)``: a new ID gets a queue ``[event]`` with the initial delay, due at
  now + 1 s; an ID already in backoff gets the event appended, its deadline unchanged (a new
  event does not postpone, nor hasten, the retry of the earlier ones).
* ``expired_ids()``: the IDs whose deadline has come (``now >= deadline``, so a queue due at
  exactly now is retried now), earliest deadline first.
* ``dequeue(id)``: takes the whole queue out; the caller handles the events in order.
* ``requeue(id, remaining, old_duration=...)``: the caller handled a prefix and failed on the
  next event: the failed event and everything after it go back, due after twice the old delay
  (capped).
* ``remove(id)``: the object is gone; its events are dropped.

The race this module closes (containerd's CRI plugin has it; see reference §3.6): between
``dequeue(id)`` and ``requeue(id, ...)`` the caller awaits the handling of the dequeued events,
and meanwhile a new event for the same ID may be enqueued (an exit monitor reporting the exit
while an earlier OOM for the same container is being retried). That creates a fresh queue for
the ID. A ``requeue`` that simply replaced the queue would silently drop that event; here
``requeue`` **merges**: the remaining events first (they are older), then whatever was enqueued
since the dequeue, all due after the doubled delay.

Concurrency: this class is not thread-safe and need not be. pycri runs one asyncio loop and every
caller is a coroutine on it; no method here awaits, so each call runs to completion without any
other coroutine observing a half-updated queue. The only window in which other coroutines run
is the one the caller opens by awaiting between ``dequeue`` and ``requeue``, and the merge above
is what makes that window safe. Serializing the *handling* of one ID (never two handlers for the
same ID at once) is the dispatcher's job (``dispatcher.py``), not this queue's.

The clock is injectable (``clock=``, default ``time.monotonic``) so that tests drive time by hand.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

E = TypeVar("E")

#: First retry delay of an ID that enters backoff (containerd: ``backOffInitDuration``).
INITIAL_DELAY_S = 1.0
#: Cap of the doubling delay (containerd: ``backOffMaxDuration``, 5 min).
MAX_DELAY_S = 300.0


@dataclass(kw_only=True)
class _PendingEvents(Generic[E]):
    """The queue of one ID: its events in arrival order and when they are next due."""

    events: list[E]
    delay_s: float
    deadline: float


class BackoffQueue(Generic[E]):
    """Failed events waiting for their retry, one ordered queue per ID, with doubling delays."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        initial_delay_s: float = INITIAL_DELAY_S,
        max_delay_s: float = MAX_DELAY_S,
    ) -> None:
        if initial_delay_s <= 0 or max_delay_s < initial_delay_s:
            raise ValueError("backoff delays must satisfy 0 < initial_delay_s <= max_delay_s")
        self._clock = clock
        self.initial_delay_s = initial_delay_s
        self.max_delay_s = max_delay_s
        self._queues: dict[str, _PendingEvents[E]] = {}
        # Kept up to date on every change so that the metrics read is O(1), not a sum over IDs.
        self._depth = 0

    def enqueue(self, object_id: str, event: E) -> None:
        """Append ``event`` to the queue of ``object_id``, creating it (due in 1 s) if absent."""
        pending = self._queues.get(object_id)
        if pending is None:
            now = self._clock()
            self._queues[object_id] = _PendingEvents(
                events=[event],
                delay_s=self.initial_delay_s,
                deadline=now + self.initial_delay_s,
            )
        else:
            # Behind the earlier events, and without touching the deadline: the new event must not
            # be handled before them, and must not push their retry further away either.
            pending.events.append(event)
        self._depth += 1

    def in_backoff(self, object_id: str) -> bool:
        """Whether ``object_id`` has events waiting (new events for it must queue behind them)."""
        return object_id in self._queues

    def expired_ids(self) -> list[str]:
        """The IDs due for a retry (``now >= deadline``), earliest deadline first."""
        now = self._clock()
        due = [(p.deadline, oid) for oid, p in self._queues.items() if now >= p.deadline]
        # Earliest first: with a bounded number of concurrent retries the longest-waiting IDs
        # should get the slots first. The sort is stable, so equal deadlines keep queue order.
        due.sort(key=lambda deadline_and_id: deadline_and_id[0])
        return [object_id for _, object_id in due]

    def dequeue(self, object_id: str) -> list[E] | None:
        """Take out and return the whole queue of ``object_id`` (``None`` if it has none).

        Read ``delay_s(object_id)`` before this call if a ``requeue`` may follow: the queue,
        and with it its delay, is gone afterwards.
        """
        pending = self._queues.pop(object_id, None)
        if pending is None:
            return None
        self._depth -= len(pending.events)
        return pending.events

    def requeue(self, object_id: str, remaining: Iterable[E], *, old_duration: float) -> None:
        """Put back the events a retry could not handle, due after twice ``old_duration``.

        ``remaining`` is the event that failed followed by those not attempted yet. Events that
        were enqueued for ``object_id`` after its ``dequeue`` (a fresh queue) are kept, behind
        ``remaining``: they arrived later. The merged queue takes the doubled delay.
        """
        remaining_events = list(remaining)
        if not remaining_events:
            raise ValueError("requeue needs at least the event that failed")
        if old_duration <= 0:
            raise ValueError("old_duration must be positive")
        delay_s = min(2 * old_duration, self.max_delay_s)
        newer = self._queues.pop(object_id, None)
        if newer is not None:
            self._depth -= len(newer.events)
            remaining_events.extend(newer.events)
        self._queues[object_id] = _PendingEvents(
            events=remaining_events,
            delay_s=delay_s,
            deadline=self._clock() + delay_s,
        )
        self._depth += len(remaining_events)

    def remove(self, object_id: str) -> int:
        """Drop the queue of a removed object; returns how many events were dropped."""
        pending = self._queues.pop(object_id, None)
        if pending is None:
            return 0
        self._depth -= len(pending.events)
        return len(pending.events)

    def delay_s(self, object_id: str) -> float | None:
        """The current delay of ``object_id``'s queue (``None`` if it is not in backoff)."""
        pending = self._queues.get(object_id)
        return None if pending is None else pending.delay_s

    def deadline(self, object_id: str) -> float | None:
        """When ``object_id``'s queue is next due, on the injected clock (``None`` if absent)."""
        pending = self._queues.get(object_id)
        return None if pending is None else pending.deadline

    def pending(self, object_id: str) -> tuple[E, ...]:
        """A copy of the events queued for ``object_id`` in order (empty if none)."""
        pending = self._queues.get(object_id)
        return () if pending is None else tuple(pending.events)

    def depth(self) -> int:
        """Total number of events waiting, over all IDs (the queue-depth metric)."""
        return self._depth

    def __len__(self) -> int:
        """Number of IDs in backoff."""
        return len(self._queues)
