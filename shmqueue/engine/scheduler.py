"""Scheduler: which task goes to which worker, and which ready patch the consumer gets next.

Pure: events in, decisions out, and no processes, pipes or clocks, so that a hypothesis state
machine drives it under any order of task completions (``tests/test_scheduler.py``). The
:class:`~shmqueue.engine.coordinator.Coordinator` does the I/O around it: it sends the
:class:`Dispatch` decisions to the workers, turns the workers' messages into events, and raises
the errors.

Events
  :meth:`Scheduler.start_epoch` (a plan to consume, and the next one to prefetch),
  :meth:`~Scheduler.task_done`, :meth:`~Scheduler.task_failed`, :meth:`~Scheduler.next_patch`
  (the consumer wants a patch) and :meth:`~Scheduler.release` (it is done with it).
Decisions
  :meth:`Scheduler.dispatch` (the tasks to send now), the :class:`TakenPatch` handed out (or
  ``None``: wait for a worker), what to do with a failed task (:class:`FailureAction`), the
  prefetched epoch's failure when that epoch starts, and :meth:`~Scheduler.stall_error`.

Which ready patch comes next:

* **free-running** (default): once the buffer is as full as it can get (or holds the epoch's
  remaining patches), a uniformly drawn ready patch, so mixing is TorchIO's but the buffer
  refills continuously instead of in stalls;
* **deterministic**: exactly the order of :func:`~shmqueue.plan.mixing_schedule`, waiting for the
  patch it names, so the stream is the same for any number of workers (and for the in-process
  path). Subjects are dispatched in plan order as soon as slots allow, which is never later than
  the virtual buffer admits them, so the wait always ends.

Workers never idle at epoch boundaries: the next epoch's plan (when its order is known in
advance) is dispatched as soon as the current epoch's tasks all are. Each epoch run carries a
generation number; results of an abandoned epoch free their slots on arrival. The scheduler owns
the :class:`~shmqueue.engine.slots.SlotTable`, so every slot it hands out has been checked free.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum

from ..plan import EpochPlan, SubjectTask, Take, mixing_schedule
from .protocol import PREFETCH_DEPTH, SubjectState, TaskDone, TaskFailed
from .slots import SlotTable

PatchRef = tuple[int, int]
"""A patch of an epoch: (its task's position, its number within the task)."""


@dataclass(frozen=True)
class TakenPatch:
    """A slot handed to the consumer, and what it holds."""

    slot: int
    task: SubjectTask
    patch: int
    state: SubjectState


@dataclass(frozen=True)
class Dispatch:
    """Send ``task`` of the epoch run ``generation`` to worker ``worker_id``, into ``slots``."""

    worker_id: int
    generation: int
    task: SubjectTask
    slots: tuple[int, ...]


class FailureAction(Enum):
    """What the coordinator does with a failed task."""

    IGNORE = "ignore"
    """The task's epoch was abandoned: its slots are free again and nobody waits for it."""
    RAISE = "raise"
    """The task belongs to the epoch being consumed: raise its error now."""
    DEFER = "defer"
    """The task belongs to the prefetched epoch: :meth:`Scheduler.start_epoch` returns it when
    that epoch starts (and a different next epoch never sees it)."""


class _EpochRun:
    """Bookkeeping of one epoch: what is dispatched, ready and yielded."""

    def __init__(self, plan: EpochPlan, generation: int, schedule_length: int | None) -> None:
        self.plan = plan
        self.generation = generation
        self.next_task = 0
        self.in_flight = 0
        self.yielded = 0
        self.started = False
        self.ready: dict[PatchRef, int] = {}
        self.states: dict[int, SubjectState] = {}  # by task position, once its patches are in
        self.failure: TaskFailed | None = None  # returned when the run becomes current
        self.ready_refs: list[PatchRef] = []  # free-running mode only
        self.chooser = None if plan.mixing_seed is None else random.Random(plan.mixing_seed)
        self.schedule: Iterator[Take] | None = None
        self.next_take: Take | None = None
        if schedule_length is not None:  # deterministic mode: follow the reference order
            self.schedule = (
                event
                for event in mixing_schedule(plan.tasks, schedule_length, plan.mixing_seed)
                if isinstance(event, Take)
            )

    @property
    def finished(self) -> bool:
        return self.yielded == self.plan.total_patches


class Scheduler:
    """Schedules the tasks of epoch plans on ``num_workers`` workers over ``max_length`` slots.

    Call :meth:`dispatch` after every event and send what it returns; a task counts as in flight
    from the moment it is returned.
    """

    def __init__(self, max_length: int, num_workers: int, deterministic: bool) -> None:
        self.slots = SlotTable(max_length)
        self.deterministic = deterministic
        self._runs: dict[int, _EpochRun] = {}  # by generation: the current and upcoming runs
        self._current: _EpochRun | None = None
        self._upcoming: _EpochRun | None = None
        self._generation = 0
        self._worker_tasks: list[dict[tuple[int, int], Dispatch]] = [{} for _ in range(num_workers)]

    # Events ------------------------------------------------------------------------------------

    def start_epoch(self, plan: EpochPlan, upcoming: EpochPlan | None) -> TaskFailed | None:
        """Make ``plan`` current (adopting its prefetched run) and prefetch ``upcoming``.

        The previous epoch is abandoned: its ready patches are freed unread, and its tasks still
        in flight free their slots when they arrive. So is a prefetched run that is not ``plan``.

        Returns:
            The first failure of ``plan``'s prefetched run, to raise instead of starting the
            epoch (nothing is prefetched then), or ``None``.
        """
        if self._upcoming is not None and self._upcoming.plan == plan:
            run = self._upcoming
        else:
            if self._upcoming is not None:
                self._discard(self._upcoming)
            run = self._new_run(plan)
        if self._current is not None:
            self._discard(self._current)
        self._current = run
        self._upcoming = None
        if run.failure is not None:
            return run.failure
        if upcoming is not None:
            self._upcoming = self._new_run(upcoming)
        return None

    def task_done(self, done: TaskDone) -> int:
        """A worker wrote every slot of its task; returns how many patches became ready.

        None do when the task's epoch was abandoned: its slots are free again.
        """
        dispatch = self._reported(done)
        run = self._runs.get(done.generation)
        if run is None:
            self.slots.abandon(dispatch.slots)
            return 0
        self.slots.fill(dispatch.slots)
        run.in_flight -= 1
        run.states[done.task.position] = done.state
        for patch, slot in enumerate(dispatch.slots):
            ref = (done.task.position, patch)
            run.ready[ref] = slot
            if run.schedule is None:
                run.ready_refs.append(ref)
        return len(dispatch.slots)

    def task_failed(self, failed: TaskFailed) -> FailureAction:
        """A worker's task raised: its slots are free again; says what to do with the error."""
        dispatch = self._reported(failed)
        self.slots.abandon(dispatch.slots)
        run = self._runs.get(failed.generation)
        if run is None:
            return FailureAction.IGNORE
        run.in_flight -= 1
        if run is self._upcoming:
            run.failure = run.failure or failed
            return FailureAction.DEFER
        return FailureAction.RAISE

    def next_patch(self) -> TakenPatch | None:
        """Hand the consumer the current epoch's next patch, or ``None``: wait for a worker.

        The slot is the consumer's until :meth:`release`.
        """
        run = self._current
        assert run is not None, "start_epoch first"
        ref = self._choose(run)
        if ref is None:
            return None
        slot = run.ready.pop(ref)
        self.slots.claim(slot)
        run.yielded += 1
        position, patch = ref
        return TakenPatch(slot, run.plan.tasks[position], patch, run.states[position])

    def release(self, slot: int) -> None:
        """The consumer is done with ``slot``: it is free for the workers again."""
        self.slots.release([slot])

    # Decisions ---------------------------------------------------------------------------------

    def dispatch(self) -> list[Dispatch]:
        """Tasks to send now: in plan order (the current epoch's, then the upcoming one's), each
        to the least loaded worker, while slots and worker queues (``PREFETCH_DEPTH``) allow."""
        dispatches: list[Dispatch] = []
        for run in (self._current, self._upcoming):
            if run is None:
                continue
            while run.next_task < len(run.plan.tasks):
                task = run.plan.tasks[run.next_task]
                worker_id = self._idlest_worker()
                if worker_id is None or self.slots.free_count < task.num_patches:
                    return dispatches
                slots = tuple(self.slots.reserve(task.num_patches))
                dispatch = Dispatch(worker_id, run.generation, task, slots)
                self._worker_tasks[worker_id][(run.generation, task.position)] = dispatch
                run.next_task += 1
                run.in_flight += 1
                dispatches.append(dispatch)
        return dispatches

    def stall_error(self) -> RuntimeError | None:
        """The error to raise instead of waiting for a worker when no task is in flight.

        A bug in the engine, never a user error: fail rather than hang.
        """
        if any(self._worker_tasks):
            return None
        run = self._current
        assert run is not None, "start_epoch first"
        return RuntimeError(
            f"shmqueue engine stalled: epoch {run.plan.epoch} needs patches but no task is in"
            f" flight ({self.slots.free_count} free slots, next task {run.next_task})."
        )

    # State -------------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        """Every patch of the current epoch has been handed out."""
        assert self._current is not None, "start_epoch first"
        return self._current.finished

    @property
    def yielded(self) -> int:
        """Patches of the current epoch handed out so far."""
        assert self._current is not None, "start_epoch first"
        return self._current.yielded

    def in_flight(self, worker_id: int | None = None) -> list[Dispatch]:
        """Tasks sent and not yet reported (of one worker, or all), oldest first per worker."""
        workers = self._worker_tasks if worker_id is None else [self._worker_tasks[worker_id]]
        return [dispatch for tasks in workers for dispatch in tasks.values()]

    def epoch_of(self, generation: int) -> int | None:
        """The epoch of the run ``generation``, or ``None`` if that run was abandoned."""
        run = self._runs.get(generation)
        return None if run is None else run.plan.epoch

    # Internals ---------------------------------------------------------------------------------

    def _choose(self, run: _EpochRun) -> PatchRef | None:
        """The next patch to yield, if it is ready."""
        if run.schedule is not None:
            if run.next_take is None:
                run.next_take = next(run.schedule)
            ref = (run.next_take.position, run.next_take.patch)
            if ref not in run.ready:
                return None
            run.next_take = None
            return ref
        if not run.started:
            if not self._buffer_full(run):
                return None
            run.started = True
        refs = run.ready_refs
        if not refs:
            return None
        if run.chooser is None:
            return refs.pop(0)
        index = run.chooser.randrange(len(refs))
        refs[index], refs[-1] = refs[-1], refs[index]
        return refs.pop()

    def _buffer_full(self, run: _EpochRun) -> bool:
        """No more of the run's subjects can join the buffer before patches leave it.

        Slots that an abandoned epoch's tasks still hold count as free: they come back when
        those tasks report, and the run's next subjects may take them.
        """
        if run.in_flight:
            return False
        if run.next_task == len(run.plan.tasks):
            return True
        returning = sum(
            len(dispatch.slots)
            for dispatch in self.in_flight()
            if dispatch.generation not in self._runs
        )
        return self.slots.free_count + returning < run.plan.tasks[run.next_task].num_patches

    def _reported(self, report: TaskDone | TaskFailed) -> Dispatch:
        """The dispatch that ``report`` answers; it is no longer in flight."""
        key = (report.generation, report.task.position)
        return self._worker_tasks[report.worker_id].pop(key)

    def _new_run(self, plan: EpochPlan) -> _EpochRun:
        self._generation += 1
        schedule_length = self.slots.capacity if self.deterministic else None
        run = _EpochRun(plan, self._generation, schedule_length)
        self._runs[run.generation] = run
        return run

    def _discard(self, run: _EpochRun) -> None:
        self.slots.discard(run.ready.values())
        run.ready.clear()
        run.ready_refs.clear()
        del self._runs[run.generation]

    def _idlest_worker(self) -> int | None:
        loads = [len(tasks) for tasks in self._worker_tasks]
        lightest = min(loads)
        return loads.index(lightest) if lightest < PREFETCH_DEPTH else None
