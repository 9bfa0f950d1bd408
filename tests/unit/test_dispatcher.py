"""EventDispatcher: first attempts, per-ID serialization, retries, isolation between IDs.

Backoff deadlines run on a fake clock and retries are driven by ``tick()``; only the handling
timeout uses real time, and it is set to a few hundredths of a second where it matters.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pycri.events.dispatcher import Disposition, EventDispatcher, Outcome
from tests.unit.fakes import FakeClock

T = TypeVar("T")


@dataclass
class Recorder:
    """A scriptable handler: records calls, fails or blocks on demand, tracks overlap per ID."""

    failures: dict[str, int] = field(default_factory=dict)  # event -> failures left
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # event -> released when set
    calls: list[tuple[str, str]] = field(default_factory=list)
    handled: list[tuple[str, str]] = field(default_factory=list)
    started: dict[str, asyncio.Event] = field(default_factory=lambda: defaultdict(asyncio.Event))
    running: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    max_running_per_id: int = 0
    running_total: int = 0
    max_running_total: int = 0

    async def __call__(self, object_id: str, event: str) -> None:
        self.calls.append((object_id, event))
        self.running[object_id] += 1
        self.running_total += 1
        self.max_running_per_id = max(self.max_running_per_id, self.running[object_id])
        self.max_running_total = max(self.max_running_total, self.running_total)
        self.started[event].set()
        try:
            gate = self.gates.get(event)
            if gate is not None:
                await gate.wait()
            await asyncio.sleep(0)  # let others interleave
            if self.failures.get(event, 0) > 0:
                self.failures[event] -= 1
                raise RuntimeError(f"{event} failed")
            self.handled.append((object_id, event))
        finally:
            self.running[object_id] -= 1
            self.running_total -= 1


def make(
    recorder: Recorder,
    clock: FakeClock,
    **options: object,
) -> EventDispatcher[str]:
    return EventDispatcher(handler=recorder, clock=clock, **options)  # type: ignore[arg-type]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


async def soon(awaitable: Awaitable[T], *, within: float = 1.0) -> T:
    """Await something that must happen promptly: a regression fails the test, never hangs it."""
    return await asyncio.wait_for(awaitable, within)


async def held_in_handling(
    dispatcher: EventDispatcher[str], recorder: Recorder, object_id: str, event: str
) -> asyncio.Task[Disposition]:
    """Submit ``event`` and return once its handler runs, held there until its gate is set."""
    recorder.gates[event] = asyncio.Event()
    submitted = asyncio.create_task(dispatcher.submit(object_id, event))
    await soon(recorder.started[event].wait())
    return submitted


async def wait_for(condition: Callable[[], bool], *, within: float = 1.0) -> None:
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state the test cannot subscribe to
            await asyncio.sleep(0.001)


async def test_success_is_handled_at_once(recorder: Recorder, clock: FakeClock) -> None:
    dispatcher = make(recorder, clock)
    assert await dispatcher.submit("a", "exit") is Disposition.HANDLED
    assert recorder.handled == [("a", "exit")]
    assert not dispatcher.in_backoff("a")
    assert dispatcher.stats().first_attempts == {Outcome.SUCCEEDED: 1}


async def test_failure_is_queued_and_retried_after_one_second(
    recorder: Recorder, clock: FakeClock
) -> None:
    failures: list[tuple[str, str, BaseException]] = []
    dispatcher = make(
        recorder, clock, on_failure=lambda oid, ev, exc: failures.append((oid, ev, exc))
    )
    recorder.failures["exit"] = 1
    assert await dispatcher.submit("a", "exit") is Disposition.QUEUED
    assert dispatcher.in_backoff("a")
    assert [(oid, ev) for oid, ev, _ in failures] == [("a", "exit")]
    assert isinstance(failures[0][2], RuntimeError)

    clock.advance(0.999)
    await dispatcher.tick()
    assert recorder.handled == []  # not due yet
    clock.advance(0.001)
    await dispatcher.tick()
    assert recorder.handled == [("a", "exit")]
    assert not dispatcher.in_backoff("a")
    stats = dispatcher.stats()
    assert stats.first_attempts == {Outcome.FAILED: 1}
    assert stats.retries == {Outcome.SUCCEEDED: 1}
    assert stats.queued_events == 0 and stats.ids_in_backoff == 0
    assert dispatcher._id_states == {}  # no per-ID state left behind


async def test_timeout_queues_the_event(recorder: Recorder, clock: FakeClock) -> None:
    dispatcher = make(recorder, clock, handle_timeout=0.02)
    recorder.gates["exit"] = asyncio.Event()  # hangs until released
    assert await dispatcher.submit("a", "exit") is Disposition.QUEUED
    assert dispatcher.stats().first_attempts == {Outcome.TIMED_OUT: 1}
    assert dispatcher.queue.pending("a") == ("exit",)
    # The delete unblocks; the retry succeeds with the original event.
    recorder.gates["exit"].set()
    clock.advance(1)
    await dispatcher.tick()
    assert recorder.handled == [("a", "exit")]
    assert dispatcher.stats().retries == {Outcome.SUCCEEDED: 1}


async def test_handlers_own_timeout_error_is_a_failure_not_a_timeout(clock: FakeClock) -> None:
    async def handler(object_id: str, event: str) -> None:
        raise TimeoutError("inner deadline")

    dispatcher: EventDispatcher[str] = EventDispatcher(handler=handler, clock=clock)
    assert await dispatcher.submit("a", "exit") is Disposition.QUEUED
    assert dispatcher.stats().first_attempts == {Outcome.FAILED: 1}


async def test_stuck_first_attempt_of_one_id_does_not_delay_another(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)  # 10 s handling timeout: A stays stuck for the test
    recorder.gates["exit-a"] = asyncio.Event()
    stuck = asyncio.create_task(dispatcher.submit("a", "exit-a"))
    await soon(recorder.started["exit-a"].wait())

    async with asyncio.timeout(1.0):
        assert await dispatcher.submit("b", "exit-b") is Disposition.HANDLED
    assert recorder.handled == [("b", "exit-b")]

    # A's exit monitor is torn down mid-handling: the event is kept for a retry, not lost.
    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await soon(stuck)
    assert dispatcher.queue.pending("a") == ("exit-a",)


async def test_stuck_retry_of_one_id_does_not_delay_another(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures.update({"exit-a": 1, "exit-b": 1})
    await dispatcher.submit("a", "exit-a")
    await dispatcher.submit("b", "exit-b")
    recorder.gates["exit-a"] = asyncio.Event()  # A's retry hangs
    clock.advance(1)
    ticking = asyncio.create_task(dispatcher.tick())
    await wait_for(lambda: ("b", "exit-b") in recorder.handled)
    assert ("a", "exit-a") not in recorder.handled
    assert not dispatcher.in_backoff("b")
    recorder.gates["exit-a"].set()
    await soon(ticking)
    assert ("a", "exit-a") in recorder.handled


async def test_one_id_never_runs_two_handlers_at_once_and_keeps_order(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    first = await held_in_handling(dispatcher, recorder, "a", "exit")
    # The OOM of the same container arrives while its exit is being handled: it waits.
    second = asyncio.create_task(dispatcher.submit("a", "oom"))
    await asyncio.sleep(0.01)
    assert recorder.calls == [("a", "exit")]
    recorder.gates["exit"].set()
    assert await soon(first) is Disposition.HANDLED
    assert await soon(second) is Disposition.HANDLED
    assert recorder.handled == [("a", "exit"), ("a", "oom")]
    assert recorder.max_running_per_id == 1


async def test_many_concurrent_submits_for_one_id_are_serialized_in_order(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    events = [f"e{n}" for n in range(20)]
    await asyncio.gather(*(dispatcher.submit("a", event) for event in events))
    assert recorder.handled == [("a", event) for event in events]
    assert recorder.max_running_per_id == 1


async def test_event_waiting_behind_a_failure_is_queued_not_handled(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["exit"] = 1
    first = await held_in_handling(dispatcher, recorder, "a", "exit")
    second = asyncio.create_task(dispatcher.submit("a", "oom"))
    await asyncio.sleep(0)
    recorder.gates["exit"].set()
    # The exit failed while the OOM waited for the lock: the OOM goes behind it.
    assert await soon(first) is Disposition.QUEUED
    assert await soon(second) is Disposition.QUEUED
    assert recorder.calls == [("a", "exit")]
    assert dispatcher.queue.pending("a") == ("exit", "oom")


async def test_events_for_an_id_in_backoff_are_appended_not_handled(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["exit"] = 1
    await dispatcher.submit("a", "exit")
    assert await dispatcher.submit("a", "oom") is Disposition.QUEUED
    assert recorder.calls == [("a", "exit")]  # the OOM was not attempted
    assert await dispatcher.submit("b", "other") is Disposition.HANDLED  # other IDs unaffected
    clock.advance(1)
    await dispatcher.tick()
    assert [ev for oid, ev in recorder.handled if oid == "a"] == ["exit", "oom"]


async def test_retry_stops_at_first_failure_and_requeues_the_rest(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures.update({"e1": 1, "e2": 2})
    for event in ("e1", "e2", "e3"):
        await dispatcher.submit("a", event)
    assert dispatcher.queue.pending("a") == ("e1", "e2", "e3")
    clock.advance(1)
    await dispatcher.tick()
    # e1 handled once; e2 failed; e3 not attempted in that tick.
    assert recorder.handled == [("a", "e1")]
    assert [ev for _, ev in recorder.calls].count("e3") == 0
    assert dispatcher.queue.pending("a") == ("e2", "e3")
    assert dispatcher.queue.delay_s("a") == 2.0
    clock.advance(1.5)
    await dispatcher.tick()
    assert recorder.handled == [("a", "e1")]  # not due until 2 s
    clock.advance(0.5)
    await dispatcher.tick()  # e2 fails again
    assert dispatcher.queue.delay_s("a") == 4.0
    clock.advance(4)
    await dispatcher.tick()
    assert recorder.handled == [("a", "e1"), ("a", "e2"), ("a", "e3")]
    assert not dispatcher.in_backoff("a")


async def test_event_submitted_during_a_retry_is_merged_and_handled_after(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["oom"] = 1
    await dispatcher.submit("a", "oom")
    recorder.gates["oom"] = asyncio.Event()
    recorder.started["oom"].clear()  # set by the first attempt
    clock.advance(1)
    ticking = asyncio.create_task(dispatcher.tick())
    await soon(recorder.started["oom"].wait())
    # The queue has been dequeued, yet the exit must not overtake the OOM being retried.
    assert not dispatcher.queue.in_backoff("a")
    assert dispatcher.in_backoff("a")
    assert await dispatcher.submit("a", "exit") is Disposition.QUEUED
    recorder.gates["oom"].set()
    await soon(ticking)
    assert recorder.handled == [("a", "oom"), ("a", "exit")]
    assert recorder.max_running_per_id == 1
    assert not dispatcher.in_backoff("a")


async def test_no_second_retry_task_for_an_id_already_retrying(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["oom"] = 1
    await dispatcher.submit("a", "oom")
    recorder.gates["oom"] = asyncio.Event()
    recorder.started["oom"].clear()  # set by the first attempt
    clock.advance(1)
    ticking = asyncio.create_task(dispatcher.tick())
    await soon(recorder.started["oom"].wait())
    await dispatcher.submit("a", "exit")  # a fresh queue for "a", due in 1 s
    clock.advance(1)
    await dispatcher.tick()  # must not start a retry that would only wait for a's lock
    assert dispatcher.stats().retries_in_flight == 1
    recorder.gates["oom"].set()
    await soon(ticking)
    assert recorder.handled == [("a", "oom"), ("a", "exit")]


async def test_event_submitted_during_a_failing_retry_is_requeued_behind(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["oom"] = 2
    await dispatcher.submit("a", "oom")
    recorder.gates["oom"] = asyncio.Event()
    recorder.started["oom"].clear()  # set by the first attempt
    clock.advance(1)
    ticking = asyncio.create_task(dispatcher.tick())
    await soon(recorder.started["oom"].wait())
    await dispatcher.submit("a", "exit")
    recorder.gates["oom"].set()
    await soon(ticking)
    assert dispatcher.queue.pending("a") == ("oom", "exit")
    assert dispatcher.queue.delay_s("a") == 2.0
    clock.advance(2)
    await dispatcher.tick()
    assert recorder.handled == [("a", "oom"), ("a", "exit")]


async def test_permanent_failure_keeps_retrying_with_capped_delays(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["exit"] = 1_000_000
    await dispatcher.submit("a", "exit")
    delays = []
    for _ in range(12):
        delays.append(dispatcher.queue.delay_s("a"))
        deadline = dispatcher.queue.deadline("a")
        assert deadline is not None
        clock.now = deadline
        await dispatcher.tick()
    assert delays == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300, 300]
    assert dispatcher.stats().retries == {Outcome.FAILED: 12}
    # The object is removed from the store; the handler now has nothing to do and succeeds.
    recorder.failures["exit"] = 0
    clock.advance(300)
    await dispatcher.tick()
    assert not dispatcher.in_backoff("a")


async def test_retries_of_different_ids_are_concurrent_but_bounded(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock, max_concurrent_retries=2)
    ids = [f"c{n}" for n in range(6)]
    for object_id in ids:
        recorder.failures[object_id] = 1
        await dispatcher.submit(object_id, object_id)
        recorder.gates[object_id] = asyncio.Event()
    clock.advance(1)
    ticking = asyncio.create_task(dispatcher.tick())
    await wait_for(lambda: recorder.running_total == 2)
    await asyncio.sleep(0.01)
    assert recorder.running_total == 2  # the others wait for a slot
    assert dispatcher.stats().retries_in_flight == 6
    for object_id in ids:
        recorder.gates[object_id].set()
    await soon(ticking)
    assert recorder.max_running_total == 2
    assert sorted(ev for _, ev in recorder.handled) == ids
    assert dispatcher.stats().retries_in_flight == 0


async def test_remove_drops_the_queue(recorder: Recorder, clock: FakeClock) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["exit"] = 1
    await dispatcher.submit("a", "exit")
    await dispatcher.submit("a", "oom")
    assert dispatcher.remove("a") == 2
    clock.advance(1)
    await dispatcher.tick()
    assert recorder.handled == []
    assert not dispatcher.in_backoff("a")
    assert dispatcher.stats().dropped_events == 2
    # A late event for the removed ID is handled normally (the handler finds nothing to do).
    assert await dispatcher.submit("a", "late") is Disposition.HANDLED


async def test_remove_during_a_retry_lets_it_finish_without_requeueing(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures.update({"e1": 2})
    await dispatcher.submit("a", "e1")
    await dispatcher.submit("a", "e2")
    recorder.gates["e1"] = asyncio.Event()
    recorder.started["e1"].clear()  # set by the first attempt
    clock.advance(1)
    ticking = asyncio.create_task(dispatcher.tick())
    await soon(recorder.started["e1"].wait())
    dispatcher.remove("a")
    recorder.gates["e1"].set()
    await soon(ticking)  # e1 fails again, but the object is gone
    assert not dispatcher.in_backoff("a")
    assert recorder.calls == [("a", "e1"), ("a", "e1")]  # e2 not attempted
    assert dispatcher.stats().dropped_events == 2


async def test_remove_drops_events_still_waiting_for_the_lock(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["exit"] = 1
    first = await held_in_handling(dispatcher, recorder, "a", "exit")
    waiting = asyncio.create_task(dispatcher.submit("a", "oom"))
    await asyncio.sleep(0)
    dispatcher.remove("a")
    recorder.gates["exit"].set()
    assert await soon(first) is Disposition.DROPPED  # failed, but the object is gone
    assert await soon(waiting) is Disposition.DROPPED
    assert not dispatcher.in_backoff("a")
    assert dispatcher._id_states == {}


async def test_take_over_waits_for_handling_under_way_then_drops_what_waited(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    first = await held_in_handling(dispatcher, recorder, "a", "exit")
    inside = asyncio.Event()

    async def removal() -> None:
        async with dispatcher.take_over("a"):
            inside.set()
            assert recorder.running["a"] == 0  # the handler is never running meanwhile

    removing = asyncio.create_task(removal())
    await asyncio.sleep(0.01)
    assert not inside.is_set()  # waits for the handling under way
    waiting = asyncio.create_task(dispatcher.submit("a", "oom"))
    await asyncio.sleep(0)
    recorder.gates["exit"].set()
    assert await soon(first) is Disposition.HANDLED
    await soon(removing)
    assert await soon(waiting) is Disposition.DROPPED  # the removal did its teardown
    assert recorder.handled == [("a", "exit")]
    assert dispatcher._id_states == {}


async def test_take_over_holds_off_a_retry_and_drops_the_queue(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["exit"] = 1
    assert await dispatcher.submit("a", "exit") is Disposition.QUEUED
    clock.advance(1)
    async with dispatcher.take_over("a"):
        ticking = asyncio.create_task(dispatcher.tick())
        await asyncio.sleep(0.01)
        assert recorder.calls == [("a", "exit")]  # the retry waits for the block
    await soon(ticking)
    assert recorder.calls == [("a", "exit")]  # and then finds nothing to do
    assert not dispatcher.in_backoff("a")
    assert dispatcher.stats().dropped_events == 1


async def test_a_failed_take_over_keeps_the_pending_events(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["exit"] = 1
    await dispatcher.submit("a", "exit")
    with pytest.raises(RuntimeError, match="containerd down"):
        async with dispatcher.take_over("a"):
            raise RuntimeError("containerd down")
    assert dispatcher.in_backoff("a")
    clock.advance(1)
    await dispatcher.tick()
    assert recorder.handled == [("a", "exit")]  # retried as before


async def test_ticker_retries_by_itself(recorder: Recorder, clock: FakeClock) -> None:
    dispatcher = make(recorder, clock, check_interval=0.005)
    recorder.failures["exit"] = 1
    await dispatcher.submit("a", "exit")
    dispatcher.start()
    dispatcher.start()  # idempotent
    try:
        await asyncio.sleep(0.02)
        assert recorder.handled == []  # fake clock not advanced: not due
        clock.advance(1)
        await wait_for(lambda: recorder.handled == [("a", "exit")])
    finally:
        await dispatcher.stop()


async def test_stop_cancels_running_retries_and_keeps_their_events(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock, check_interval=0.005, max_concurrent_retries=1)
    for object_id in ("a", "b"):
        recorder.failures[object_id] = 1
        await dispatcher.submit(object_id, object_id)
        recorder.gates[object_id] = asyncio.Event()  # retries hang
    dispatcher.start()
    clock.advance(1)
    await wait_for(lambda: recorder.running_total == 1)
    await dispatcher.stop()
    # One retry was running, the other waiting for the slot: both IDs keep their event.
    assert dispatcher.queue.pending("a") == ("a",)
    assert dispatcher.queue.pending("b") == ("b",)
    assert dispatcher.stats().retries_in_flight == 0
    assert dispatcher._id_states == {}
    # Nothing is stuck "retrying": after a restart the retries go through.
    for gate in recorder.gates.values():
        gate.set()
    clock.advance(300)
    await dispatcher.tick()
    assert sorted(recorder.handled) == [("a", "a"), ("b", "b")]


async def test_stop_right_after_a_tick_leaves_no_id_stuck(
    recorder: Recorder, clock: FakeClock
) -> None:
    dispatcher = make(recorder, clock)
    recorder.failures["exit"] = 1
    await dispatcher.submit("a", "exit")
    clock.advance(1)
    dispatcher._start_expired_retries()  # tasks created, not yet run
    await dispatcher.stop()  # cancels them before their first step
    assert dispatcher.queue.pending("a") == ("exit",)
    assert dispatcher._id_states == {}
    await dispatcher.tick()
    assert recorder.handled == [("a", "exit")]


async def test_a_broken_failure_hook_does_not_break_retries(
    recorder: Recorder, clock: FakeClock
) -> None:
    def hook(object_id: str, event: str, error: BaseException) -> None:
        raise ValueError("hook bug")

    dispatcher = make(recorder, clock, on_failure=hook)
    recorder.failures["exit"] = 2
    assert await dispatcher.submit("a", "exit") is Disposition.QUEUED
    clock.advance(1)
    await dispatcher.tick()
    clock.advance(2)
    await dispatcher.tick()
    assert recorder.handled == [("a", "exit")]


# ---------------------------------------------------------------- property test

_SUBMISSIONS = st.lists(
    st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 3), st.integers(0, 3)),
    min_size=1,
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(submissions=_SUBMISSIONS, tick_every=st.integers(1, 5))
def test_random_workloads_handle_every_event_once_in_order(
    submissions: list[tuple[str, int, int]], tick_every: int
) -> None:
    """Random submits with random failure counts, interleaved with ticks.

    Each submission is (ID, failures before success, yields inside the handler). Submits run as
    concurrent tasks. At the end every event has succeeded exactly once, per ID in submission
    order, and no ID ever had two handlers running at once.
    """

    async def scenario() -> None:
        clock = FakeClock()
        recorder = Recorder()
        yields: dict[str, int] = {}

        async def handler(object_id: str, event: str) -> None:
            for _ in range(yields[event]):
                await asyncio.sleep(0)
            await recorder(object_id, event)

        dispatcher: EventDispatcher[str] = EventDispatcher(
            handler=handler, clock=clock, max_concurrent_retries=2
        )
        submitted: dict[str, list[str]] = defaultdict(list)
        tasks: list[Awaitable[Disposition]] = []
        for n, (object_id, failures, yield_count) in enumerate(submissions):
            event = f"{object_id}{n}"
            recorder.failures[event] = failures
            yields[event] = yield_count
            submitted[object_id].append(event)
            tasks.append(asyncio.create_task(dispatcher.submit(object_id, event)))
            if n % tick_every == 0:
                clock.advance(1)
                tasks.append(asyncio.create_task(dispatcher.tick()))  # type: ignore[arg-type]
        await asyncio.gather(*tasks)
        for _ in range(50):
            if not dispatcher.stats().ids_in_backoff:
                break
            clock.advance(300)
            await dispatcher.tick()
        assert dispatcher.stats().ids_in_backoff == 0
        for object_id, events in submitted.items():
            assert [ev for oid, ev in recorder.handled if oid == object_id] == events
        assert recorder.max_running_per_id == 1
        assert dispatcher._id_states == {}

    asyncio.run(scenario())
