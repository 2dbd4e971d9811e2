"""The scheduler as a state machine: hypothesis completes tasks in any order, without processes.

The machine plays the workers and the consumer around :class:`Scheduler`: it completes or fails
any task in flight (hypothesis picks which), takes and releases patches, and starts epochs at
any time, adopting the prefetched plan or abandoning it and the epoch in progress. Its model is
only what it saw: the dispatches in flight, the ready patches, the slot the consumer holds. It
checks contracts 1, 3, 4, 5 and 6 of DESIGN.md:

* slots are conserved (free + worker + ready + consumer == max_length), no slot is handed out
  while another party owns it, and no worker holds more than ``PREFETCH_DEPTH`` tasks;
* each epoch's tasks are dispatched once each, in plan order, and as soon as a worker and the
  slots allow; the prefetched epoch's only after all of the current one's;
* every epoch that ends has yielded exactly its plan's patches (contract 1);
* deterministic mode yields exactly the Take order of :func:`~shmqueue.plan.mixing_schedule`,
  whatever the completion order and number of workers (contract 6);
* free-running mode yields nothing before the buffer is as full as it can get, and then holds
  what the reference's buffer holds at its first Take; without shuffling, the oldest ready patch;
* the consumer never waits with no task in flight.
"""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from shmqueue.engine.protocol import PREFETCH_DEPTH, SubjectState, TaskDone, TaskFailed
from shmqueue.engine.scheduler import Dispatch, FailureAction, Scheduler, TakenPatch
from shmqueue.engine.slots import SlotState
from shmqueue.plan import Admit, EpochPlan, Take, make_epoch_plan, mixing_schedule

MAX_TASKS = 5
TaskKey = tuple[int, int]  # (generation, position), as the scheduler's dispatches name a task


def reference_takes(plan: EpochPlan, max_length: int) -> list[tuple[int, int]]:
    """The (position, patch) order of the reference mixing schedule."""
    return [
        (event.position, event.patch)
        for event in mixing_schedule(plan.tasks, max_length, plan.mixing_seed)
        if isinstance(event, Take)
    ]


def reference_first_fill(plan: EpochPlan, max_length: int) -> int:
    """How many patches the reference's buffer holds when it yields its first one."""
    admitted = 0
    for event in mixing_schedule(plan.tasks, max_length, plan.mixing_seed):
        if isinstance(event, Take):
            break
        assert isinstance(event, Admit)
        admitted += plan.tasks[event.position].num_patches
    return admitted


def plan_patches(plan: EpochPlan) -> Counter[tuple[int, int]]:
    return Counter(
        (task.position, patch) for task in plan.tasks for patch in range(task.num_patches)
    )


def report_failure(dispatch: Dispatch) -> TaskFailed:
    traceback_text = "Traceback (most recent call last):\nValueError: corrupt header\n"
    description = f"subject {dispatch.task.subject_index}"
    return TaskFailed(
        dispatch.worker_id, dispatch.generation, dispatch.task, None, description, traceback_text
    )


class SchedulerMachine(RuleBasedStateMachine):
    """Workers and a consumer around one scheduler, acting in any order hypothesis picks."""

    @initialize(
        max_length=st.integers(1, 8),
        num_workers=st.integers(1, 4),
        deterministic=st.booleans(),
        shuffle=st.booleans(),
    )
    def build(self, max_length: int, num_workers: int, deterministic: bool, shuffle: bool) -> None:
        self.max_length = max_length
        self.num_workers = num_workers
        self.deterministic = deterministic
        self.shuffle = shuffle
        self.scheduler = Scheduler(max_length, num_workers, deterministic)
        self.epochs_planned = 0  # every plan gets an epoch of its own, so the epoch names the run
        self.current: EpochPlan | None = None
        self.upcoming: EpochPlan | None = None
        self.broken = False  # a task of the current epoch failed: the engine would shut down
        self.in_flight: dict[TaskKey, Dispatch] = {}
        self.dispatched: dict[int, int] = {}  # epoch -> tasks dispatched so far
        self.ready: dict[int, tuple[int, int, int]] = {}  # slot -> (epoch, position, patch)
        self.states: dict[tuple[int, int], SubjectState] = {}  # (epoch, position) -> its state
        self.held: TakenPatch | None = None
        self.yielded: list[tuple[int, int]] = []  # (position, patch) of the current epoch
        self.deferred: dict[int, TaskFailed] = {}  # epoch -> its prefetched run's first failure

    # The model -----------------------------------------------------------------------------------

    def _new_plan(self, data: st.DataObject) -> EpochPlan:
        counts = data.draw(
            st.lists(st.integers(0, self.max_length), max_size=MAX_TASKS), label="patch counts"
        )
        epoch = self.epochs_planned
        self.epochs_planned += 1
        return make_epoch_plan(epoch, range(len(counts)), counts, 7, self.shuffle)

    def _live(self) -> dict[int, EpochPlan]:
        return {plan.epoch: plan for plan in (self.current, self.upcoming) if plan is not None}

    def _owned(self) -> list[int]:
        """Every slot that some party owns, per the model (a slot twice means a double owner)."""
        slots = [slot for dispatch in self.in_flight.values() for slot in dispatch.slots]
        slots += list(self.ready)
        return slots if self.held is None else [*slots, self.held.slot]

    def _can_take(self) -> bool:
        current = self.current
        return (
            current is not None
            and self.held is None
            and not self.broken
            and len(self.yielded) < current.total_patches
        )

    # Steps (the rules' bodies, also used by drain_the_epoch) -------------------------------------

    def _dispatch(self) -> None:
        """Take the scheduler's dispatches and check them; none must be left that could go."""
        live = self._live()
        for dispatch in self.scheduler.dispatch():
            task = dispatch.task
            assert 0 <= dispatch.worker_id < self.num_workers
            assert len(dispatch.slots) == task.num_patches
            assert not set(dispatch.slots) & set(self._owned()), "a slot was handed out twice"
            assert task.epoch in live, "a task of an abandoned epoch was dispatched"
            done = self.dispatched.setdefault(task.epoch, 0)
            assert task == live[task.epoch].tasks[done], "tasks are dispatched once, in plan order"
            if self.current is not None and task.epoch != self.current.epoch:
                current_done = self.dispatched.get(self.current.epoch, 0)
                assert current_done == len(self.current.tasks), "prefetched before the current"
            self.dispatched[task.epoch] = done + 1
            self.in_flight[(dispatch.generation, task.position)] = dispatch
        loads = Counter(dispatch.worker_id for dispatch in self.in_flight.values())
        idle_worker = any(loads[worker] < PREFETCH_DEPTH for worker in range(self.num_workers))
        free = self.max_length - len(self._owned())
        for plan in live.values():  # the current plan first
            done = self.dispatched.get(plan.epoch, 0)
            if done < len(plan.tasks):
                assert not idle_worker or free < plan.tasks[done].num_patches, "a task was held"
                break

    def _start_epoch(self, data: st.DataObject) -> None:
        adopt = self.upcoming is not None and data.draw(st.booleans(), label="adopt")
        plan = self.upcoming if adopt and self.upcoming else self._new_plan(data)
        upcoming = self._new_plan(data) if data.draw(st.booleans(), label="prefetch") else None
        failure = self.scheduler.start_epoch(plan, upcoming)
        assert failure is (self.deferred.get(plan.epoch) if adopt else None)
        # The previous epoch's ready patches and a prefetched run that was not adopted are freed.
        self.ready = {slot: ref for slot, ref in self.ready.items() if ref[0] == plan.epoch}
        self.current, self.upcoming = plan, upcoming if failure is None else None
        self.yielded = []
        self.broken = failure is not None
        if failure is None:  # the coordinator raises the failure instead of going on
            self._dispatch()

    def _complete(self, key: TaskKey) -> None:
        dispatch = self.in_flight.pop(key)
        task = dispatch.task
        state = SubjectState({}, {"epoch": task.epoch, "position": task.position}, ())
        done = TaskDone(dispatch.worker_id, dispatch.generation, task, state, 0.0, 0)
        made_ready = self.scheduler.task_done(done)
        if task.epoch not in self._live():
            assert made_ready == 0, "a stale task's patches were kept"
        else:
            assert made_ready == task.num_patches
            for patch, slot in enumerate(dispatch.slots):
                self.ready[slot] = (task.epoch, task.position, patch)
            self.states[(task.epoch, task.position)] = state
        self._dispatch()

    def _fail(self, key: TaskKey) -> None:
        dispatch = self.in_flight.pop(key)
        failed = report_failure(dispatch)
        action = self.scheduler.task_failed(failed)
        epoch = dispatch.task.epoch
        if self.current is not None and epoch == self.current.epoch:
            assert action is FailureAction.RAISE
            self.broken = True
            return  # the coordinator raises: nothing more is dispatched
        if self.upcoming is not None and epoch == self.upcoming.epoch:
            assert action is FailureAction.DEFER
            self.deferred.setdefault(epoch, failed)
        else:
            assert action is FailureAction.IGNORE
        self._dispatch()

    def _take(self) -> bool:
        """Ask for the next patch; returns whether one came."""
        plan = self.current
        assert plan is not None
        first = not self.yielded
        taken = self.scheduler.next_patch()
        if taken is None:
            assert self.in_flight, "the consumer waits, but no task is in flight"
            assert self.scheduler.stall_error() is None
            return False
        if first and not self.deterministic:
            self._check_the_buffer_is_full(plan)
        ref = (taken.task.position, taken.patch)
        if not self.deterministic and plan.mixing_seed is None:
            oldest = next(slot for slot, owner in self.ready.items() if owner[0] == plan.epoch)
            assert taken.slot == oldest, "without shuffling, the oldest ready patch comes first"
        assert taken.task == plan.tasks[taken.task.position]
        assert self.ready.pop(taken.slot, None) == (plan.epoch, *ref), (
            "the slot holds another patch"
        )
        assert taken.state is self.states[(plan.epoch, taken.task.position)]
        self.yielded.append(ref)
        self.held = taken
        if self.deterministic:
            reference = reference_takes(plan, self.max_length)
            assert self.yielded == reference[: len(self.yielded)], "left the reference order"
        if len(self.yielded) == plan.total_patches:  # contract 1: the epoch's patches, once each
            assert Counter(self.yielded) == plan_patches(plan)
            assert self.scheduler.finished
        return True

    def _check_the_buffer_is_full(self, plan: EpochPlan) -> None:
        """Free-running: the first patch comes once no more of the epoch's subjects fit."""
        assert all(d.task.epoch != plan.epoch for d in self.in_flight.values()), "still loading"
        done = self.dispatched.get(plan.epoch, 0)
        free = self.max_length - len(self._owned())
        assert done == len(plan.tasks) or free < plan.tasks[done].num_patches, "not yet full"
        buffered = sum(1 for ref in self.ready.values() if ref[0] == plan.epoch)
        if buffered == len(self._owned()):  # no other epoch holds slots: all went to this one
            assert buffered == reference_first_fill(plan, self.max_length)

    def _release(self) -> None:
        assert self.held is not None
        self.scheduler.release(self.held.slot)
        self.held = None
        self._dispatch()

    # Rules ----------------------------------------------------------------------------------------

    @precondition(lambda self: self.held is None)
    @rule(data=st.data())
    def start_epoch(self, data: st.DataObject) -> None:
        """Start an epoch: the prefetched one, or another (abandoning it and the current one)."""
        self._start_epoch(data)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def complete_a_task(self, data: st.DataObject) -> None:
        self._complete(data.draw(st.sampled_from(sorted(self.in_flight)), label="completes"))

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def fail_a_task(self, data: st.DataObject) -> None:
        self._fail(data.draw(st.sampled_from(sorted(self.in_flight)), label="fails"))

    @precondition(lambda self: self._can_take())
    @rule()
    def take(self) -> None:
        self._take()

    @precondition(lambda self: self.held is not None)
    @rule()
    def release(self) -> None:
        self._release()

    @precondition(lambda self: self._can_take() or self.held is not None)
    @rule(data=st.data())
    def drain_the_epoch(self, data: st.DataObject) -> None:
        """Consume the rest of the epoch as the coordinator does, completing tasks in any order."""
        if self.held is not None:
            self._release()
        while self._can_take():
            if self._take():
                self._release()
            else:  # wait: some worker, hypothesis picks which, reports
                self._complete(data.draw(st.sampled_from(sorted(self.in_flight)), label="waits"))
            self.slots_are_conserved()

    # Invariants -----------------------------------------------------------------------------------

    @invariant()
    def slots_are_conserved(self) -> None:
        table = self.scheduler.slots
        counts = {state: table.count(state) for state in SlotState}
        assert sum(counts.values()) == table.capacity == self.max_length
        owned = self._owned()
        assert len(owned) == len(set(owned)), "a slot has two owners"
        assert len(owned) <= self.max_length
        assert counts[SlotState.READY] == len(self.ready)
        assert counts[SlotState.CONSUMER] == (self.held is not None)
        for slot in self.ready:
            assert table.state(slot) is SlotState.READY
        for dispatch in self.in_flight.values():
            assert all(table.state(slot) is SlotState.WORKER for slot in dispatch.slots)
        assert counts[SlotState.WORKER] == len(owned) - len(self.ready) - counts[SlotState.CONSUMER]

    @invariant()
    def workers_hold_at_most_prefetch_depth(self) -> None:
        assert Counter(self.scheduler.in_flight()) == Counter(self.in_flight.values())
        loads = Counter(dispatch.worker_id for dispatch in self.in_flight.values())
        assert all(load <= PREFETCH_DEPTH for load in loads.values())

    @invariant()
    def the_epoch_yields_only_its_plan(self) -> None:
        if self.current is None:
            return
        assert Counter(self.yielded) <= plan_patches(self.current), "a patch twice, or a stranger"
        if not self.broken:
            assert self.scheduler.yielded == len(self.yielded)
            assert self.scheduler.finished == (len(self.yielded) == self.current.total_patches)


TestScheduler = SchedulerMachine.TestCase
TestScheduler.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


def test_a_consumer_left_waiting_with_nothing_in_flight_is_an_engine_bug() -> None:
    scheduler = Scheduler(max_length=4, num_workers=1, deterministic=False)
    plan = make_epoch_plan(3, range(2), [2, 2], seed=0, shuffle_patches=True)
    assert scheduler.start_epoch(plan, None) is None
    assert scheduler.next_patch() is None  # nothing dispatched yet
    error = scheduler.stall_error()
    assert error is not None
    assert "epoch 3 needs patches but no task is in flight (4 free slots, next task 0)" in str(
        error
    )
    assert len(scheduler.dispatch()) == 2
    assert scheduler.stall_error() is None


def test_a_failed_prefetched_subject_is_reported_when_its_epoch_starts() -> None:
    scheduler = Scheduler(max_length=4, num_workers=2, deterministic=True)
    first = make_epoch_plan(0, range(1), [2], seed=0, shuffle_patches=False)
    second = make_epoch_plan(1, range(1), [2], seed=0, shuffle_patches=False)
    scheduler.start_epoch(first, second)
    current, prefetched = scheduler.dispatch()
    assert prefetched.task.epoch == 1
    failed = report_failure(prefetched)
    assert scheduler.task_failed(failed) is FailureAction.DEFER
    assert scheduler.slots.free_count == 2, "the failed task's slots are free at once"
    with pytest.raises(KeyError):
        scheduler.task_failed(failed)  # reported once only
    assert scheduler.start_epoch(second, None) is failed
    assert scheduler.epoch_of(current.generation) is None  # the first epoch is abandoned
