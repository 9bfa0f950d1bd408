"""BackoffQueue: reference §7 behaviours 1-10 with a fake clock, and a stateful property test."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

from pycri.events.backoff import INITIAL_DELAY_S, MAX_DELAY_S, BackoffQueue
from tests.unit.fakes import FakeClock


@pytest.fixture
def queue(clock: FakeClock) -> BackoffQueue[str]:
    return BackoffQueue(clock=clock)


def test_constants_match_reference() -> None:
    assert INITIAL_DELAY_S == 1.0
    assert MAX_DELAY_S == 300.0


# 1
def test_enqueue_new_id_creates_queue_due_in_one_second(
    queue: BackoffQueue[str], clock: FakeClock
) -> None:
    queue.enqueue("a", "e1")
    assert queue.pending("a") == ("e1",)
    assert queue.delay_s("a") == 1.0
    assert queue.deadline("a") == clock.now + 1.0


def test_second_enqueue_appends_without_moving_deadline(
    queue: BackoffQueue[str], clock: FakeClock
) -> None:
    queue.enqueue("a", "e1")
    deadline = queue.deadline("a")
    clock.advance(0.7)
    queue.enqueue("a", "e2")
    assert queue.pending("a") == ("e1", "e2")
    assert queue.deadline("a") == deadline
    assert queue.delay_s("a") == 1.0


# 2
def test_in_backoff(queue: BackoffQueue[str]) -> None:
    assert not queue.in_backoff("a")
    queue.enqueue("a", "e1")
    assert queue.in_backoff("a")
    assert not queue.in_backoff("b")
    queue.dequeue("a")
    assert not queue.in_backoff("a")


# 3
def test_expiry_is_at_exactly_the_deadline(queue: BackoffQueue[str], clock: FakeClock) -> None:
    queue.enqueue("a", "e1")
    queue.enqueue("b", "e2")
    clock.advance(0.999)
    assert queue.expired_ids() == []
    clock.advance(0.001)
    # now == deadline: expired (>=, not >).
    assert clock.now == queue.deadline("a")
    assert sorted(queue.expired_ids()) == ["a", "b"]


def test_expired_ids_earliest_deadline_first(queue: BackoffQueue[str], clock: FakeClock) -> None:
    queue.enqueue("late", "x")
    queue.dequeue("late")
    queue.enqueue("early", "y")
    queue.requeue("late", ["x"], old_duration=1.0)  # due in 2 s, inserted after "early"
    clock.advance(0.5)
    queue.enqueue("middle", "z")  # due at +1.5 s
    clock.advance(5)
    assert queue.expired_ids() == ["early", "middle", "late"]


# 4
def test_dequeue_returns_the_whole_queue_once(queue: BackoffQueue[str]) -> None:
    for event in ("e1", "e2", "e3"):
        queue.enqueue("a", event)
    assert queue.dequeue("a") == ["e1", "e2", "e3"]
    assert queue.dequeue("a") is None
    assert queue.dequeue("never") is None
    assert queue.depth() == 0
    assert len(queue) == 0


# 5
def test_requeue_doubles_delay_up_to_the_cap(queue: BackoffQueue[str], clock: FakeClock) -> None:
    queue.enqueue("a", "e")
    delays = [queue.delay_s("a")]
    for _ in range(11):
        old = queue.delay_s("a")
        assert old is not None
        events = queue.dequeue("a")
        assert events is not None
        queue.requeue("a", events, old_duration=old)
        delays.append(queue.delay_s("a"))
        assert queue.deadline("a") == clock.now + delays[-1]  # type: ignore[operator]
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]


def test_requeue_rejects_nonsense(queue: BackoffQueue[str]) -> None:
    with pytest.raises(ValueError):
        queue.requeue("a", [], old_duration=1.0)
    with pytest.raises(ValueError):
        queue.requeue("a", ["e"], old_duration=0.0)


def _retry_once(
    queue: BackoffQueue[str], object_id: str, fails: set[str], handled: list[str]
) -> None:
    """The retry loop of reference §3.6 step 3, synchronously: stop at the first failure."""
    delay = queue.delay_s(object_id)
    events = queue.dequeue(object_id)
    assert events is not None and delay is not None
    for index, event in enumerate(events):
        if event in fails:
            queue.requeue(object_id, events[index:], old_duration=delay)
            return
        handled.append(event)


# 6
def test_retry_stops_at_first_failure_and_requeues_the_rest_in_order(
    queue: BackoffQueue[str], clock: FakeClock
) -> None:
    for event in ("e1", "e2", "e3"):
        queue.enqueue("a", event)
    clock.advance(1)
    handled: list[str] = []
    _retry_once(queue, "a", fails={"e2"}, handled=handled)
    assert handled == ["e1"]  # e1 once; e3 not attempted
    assert queue.pending("a") == ("e2", "e3")
    assert queue.delay_s("a") == 2.0
    assert queue.deadline("a") == clock.now + 2.0


# 7
def test_events_for_an_id_in_backoff_queue_behind(queue: BackoffQueue[str]) -> None:
    queue.enqueue("a", "exit")
    assert queue.in_backoff("a")  # the caller therefore appends instead of handling:
    queue.enqueue("a", "oom")
    assert queue.pending("a") == ("exit", "oom")


# 8
def test_event_enqueued_during_a_retry_is_merged_not_lost(
    queue: BackoffQueue[str], clock: FakeClock
) -> None:
    queue.enqueue("a", "e1")
    queue.enqueue("a", "e2")
    clock.advance(1)
    delay = queue.delay_s("a")
    batch = queue.dequeue("a")
    assert batch == ["e1", "e2"] and delay == 1.0
    # While the retry awaits e1's handling, an exit monitor enqueues for the same ID.
    queue.enqueue("a", "e3")
    # e1 fails: requeue must keep e3, behind the older events.
    queue.requeue("a", batch, old_duration=delay)
    assert queue.pending("a") == ("e1", "e2", "e3")
    assert queue.depth() == 3
    assert queue.delay_s("a") == 2.0


# 9
def test_permanent_failure_retries_forever_at_most_every_five_minutes(
    queue: BackoffQueue[str], clock: FakeClock
) -> None:
    queue.enqueue("a", "exit")
    retry_times: list[float] = []
    for _ in range(30):
        deadline = queue.deadline("a")
        assert deadline is not None
        clock.now = deadline
        assert queue.expired_ids() == ["a"]
        retry_times.append(clock.now)
        _retry_once(queue, "a", fails={"exit"}, handled=[])
    gaps = [later - earlier for earlier, later in itertools.pairwise(retry_times)]
    assert max(gaps) == 300.0
    assert all(gap <= 300.0 for gap in gaps)
    assert queue.in_backoff("a")
    # The object is removed from the store: the next retry succeeds and the queue disappears.
    clock.now = queue.deadline("a")  # type: ignore[assignment]
    handled: list[str] = []
    _retry_once(queue, "a", fails=set(), handled=handled)
    assert handled == ["exit"]
    assert not queue.in_backoff("a")


def test_remove_drops_the_queue(queue: BackoffQueue[str]) -> None:
    queue.enqueue("a", "e1")
    queue.enqueue("a", "e2")
    queue.enqueue("b", "e3")
    assert queue.remove("a") == 2
    assert queue.remove("a") == 0
    assert not queue.in_backoff("a")
    assert queue.depth() == 1
    assert len(queue) == 1


# 10
def test_thousands_of_ids(queue: BackoffQueue[int], clock: FakeClock) -> None:
    ids = [f"id-{n}" for n in range(5000)]
    for n, object_id in enumerate(ids):
        queue.enqueue(object_id, n)
        queue.enqueue(object_id, -n)
        if n == 2499:
            clock.advance(0.5)  # the second half is due half a second later
    assert len(queue) == 5000 and queue.depth() == 10000
    clock.advance(0.5)
    assert queue.expired_ids() == ids[:2500]
    clock.advance(0.5)
    assert set(queue.expired_ids()) == set(ids)
    for n, object_id in enumerate(ids):
        assert queue.dequeue(object_id) == [n, -n]
    assert len(queue) == 0 and queue.depth() == 0


# ---------------------------------------------------------------- property tests


@dataclass
class _ModelQueue:
    events: list[int]
    delay: float
    deadline: float


@dataclass
class _Held:
    """A batch dequeued by a pretend retry that has not finished yet."""

    object_id: str
    events: list[int]
    delay: float
    removed: bool = False


@dataclass
class _Ledger:
    enqueued: dict[str, list[int]] = field(default_factory=dict)
    handled: dict[str, list[int]] = field(default_factory=dict)
    dropped: set[int] = field(default_factory=set)


OBJECT_IDS = st.sampled_from(["a", "b", "c", "d"])
ALLOWED_DELAYS = {1.0 * 2**n for n in range(9)} | {300.0}


class BackoffMachine(RuleBasedStateMachine):
    """Random interleavings of enqueue / dequeue / requeue / remove / clock advances.

    A pretend retry ``dequeue``s a batch (held), later handles a prefix of it and re-queues the
    rest, exactly like the dispatcher; enqueues can happen while batches are held. Against a
    simple model we check: the queue contents, delays and deadlines; that every event is in
    exactly one place (queued, held, handled, dropped); and that per ID events are handled in
    the order they were enqueued.
    """

    held = Bundle("held")

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.queue: BackoffQueue[int] = BackoffQueue(clock=self.clock)
        self.model: dict[str, _ModelQueue] = {}
        self.held_ids: set[str] = set()
        self.held_batches: list[_Held] = []
        self.ledger = _Ledger()
        self.next_event = 0

    @rule(object_id=OBJECT_IDS)
    def enqueue(self, object_id: str) -> None:
        event = self.next_event
        self.next_event += 1
        self.queue.enqueue(object_id, event)
        self.ledger.enqueued.setdefault(object_id, []).append(event)
        if object_id in self.model:
            self.model[object_id].events.append(event)
        else:
            self.model[object_id] = _ModelQueue([event], 1.0, self.clock.now + 1.0)

    @rule(seconds=st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 7.0, 64.0, 300.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(target=held, object_id=OBJECT_IDS)
    def dequeue(self, object_id: str) -> _Held | None:
        # One retry per ID at a time, as the dispatcher guarantees.
        if object_id in self.held_ids:
            return None
        delay = self.queue.delay_s(object_id)
        batch = self.queue.dequeue(object_id)
        expected = self.model.pop(object_id, None)
        if expected is None:
            assert batch is None and delay is None
            return None
        assert batch == expected.events
        assert delay == expected.delay
        self.held_ids.add(object_id)
        held = _Held(object_id, batch, expected.delay)
        self.held_batches.append(held)
        return held

    @rule(held=consumes(held), data=st.data())
    def finish_retry(self, held: _Held | None, data: st.DataObject) -> None:
        if held is None:
            return
        self.held_ids.discard(held.object_id)
        self.held_batches.remove(held)
        handled_count = data.draw(st.integers(0, len(held.events)), label="handled")
        self.ledger.handled.setdefault(held.object_id, []).extend(held.events[:handled_count])
        rest = held.events[handled_count:]
        if not rest:
            return
        if held.removed:
            self.ledger.dropped.update(rest)
            return
        self.queue.requeue(held.object_id, rest, old_duration=held.delay)
        delay = min(2 * held.delay, 300.0)
        newer = self.model.pop(held.object_id, None)
        merged = rest + (newer.events if newer else [])
        self.model[held.object_id] = _ModelQueue(merged, delay, self.clock.now + delay)

    @rule(object_id=OBJECT_IDS)
    def remove(self, object_id: str) -> None:
        expected = self.model.pop(object_id, None)
        assert self.queue.remove(object_id) == (len(expected.events) if expected else 0)
        if expected:
            self.ledger.dropped.update(expected.events)
        for held in self.held_batches:
            if held.object_id == object_id:
                held.removed = True

    @precondition(lambda self: bool(self.model))
    @rule()
    def expired(self) -> None:
        due = [oid for oid, q in self.model.items() if self.clock.now >= q.deadline]
        assert set(self.queue.expired_ids()) == set(due)

    @invariant()
    def matches_model(self) -> None:
        assert len(self.queue) == len(self.model)
        assert self.queue.depth() == sum(len(q.events) for q in self.model.values())
        for object_id, expected in self.model.items():
            assert self.queue.pending(object_id) == tuple(expected.events)
            assert self.queue.delay_s(object_id) == expected.delay
            assert expected.delay in ALLOWED_DELAYS
            assert self.queue.deadline(object_id) == expected.deadline

    @invariant()
    def nothing_lost_or_duplicated(self) -> None:
        places: list[int] = []
        for object_id in ("a", "b", "c", "d"):
            places.extend(self.queue.pending(object_id))
        for held in self.held_batches:
            places.extend(held.events)
        for handled in self.ledger.handled.values():
            places.extend(handled)
        places.extend(self.ledger.dropped)
        assert len(places) == len(set(places)), "an event is in two places"
        assert set(places) == set(range(self.next_event)), "an event was lost"

    @invariant()
    def per_id_order(self) -> None:
        for object_id, handled in self.ledger.handled.items():
            enqueued = self.ledger.enqueued[object_id]
            positions = [enqueued.index(event) for event in handled]
            assert positions == sorted(positions)
        for object_id in self.model:
            queued = list(self.queue.pending(object_id))
            enqueued = self.ledger.enqueued[object_id]
            positions = [enqueued.index(event) for event in queued]
            assert positions == sorted(positions)


BackoffMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)
TestBackoffMachine = BackoffMachine.TestCase
