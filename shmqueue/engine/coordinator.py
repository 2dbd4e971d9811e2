"""Coordinator: the training process's side of the engine.

It owns the ring and the slot table, hands subject tasks and free slots to workers, keeps each
epoch's bookkeeping and chooses which ready patch the consumer gets next:

* **free-running** (default): once the buffer is as full as it can get (or holds the epoch's
  remaining patches), a uniformly drawn ready patch, so mixing is TorchIO's but the buffer
  refills continuously instead of in stalls;
* **deterministic**: exactly the order of :func:`~shmqueue.plan.mixing_schedule`, waiting for the
  patch it names, so the stream is the same for any number of workers (and for the in-process
  path). Subjects are dispatched in plan order as soon as slots allow, which is never later than
  the virtual buffer admits them, so the wait always ends.

Workers never idle at epoch boundaries: the next epoch's plan (when its order is known in
advance) is dispatched as soon as the current epoch's tasks all are. Each epoch run carries a
generation number; results of an abandoned epoch free their slots on arrival.
"""

from __future__ import annotations

import logging
import os
import random
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.context import BaseContext

import psutil

from ..errors import (
    RemoteTraceback,
    SubjectProcessingError,
    WorkerDiedError,
    WorkerStartError,
    WorkerTimeoutError,
)
from ..pipeline import SubjectPipeline
from ..plan import EpochPlan, SubjectTask, Take, mixing_schedule
from ..stats import QueueStats
from ..units import pretty_bytes
from . import forks
from .layout import SlotLayout
from .pool import WorkerExited, WorkerGone, WorkerPool, run_all
from .protocol import (
    PREFETCH_DEPTH,
    SubjectState,
    TaskDone,
    TaskFailed,
    TaskMessage,
    WorkerMessage,
    WorkerReady,
    WorkerStartFailed,
)
from .ring import RingView, Segment, create_segment
from .slots import SlotTable

logger = logging.getLogger("shmqueue")

WAIT_SLICE = 30.0
READY_TIMEOUT = 300.0
_START_ADVICE = (
    " Under '{start_method}', workers import the script's modules again and unpickle the"
    " subjects, transform and sampler: define the classes and functions they use in a module"
    " (not in a notebook cell or an interactive session), start training under"
    " `if __name__ == \"__main__\":`, or use multiprocessing_context='fork'."
)

PatchKey = tuple[int, int]  # (task position, patch number)


@dataclass(frozen=True)
class TakenPatch:
    """A slot handed to the consumer, and what it holds."""

    slot: int
    task: SubjectTask
    patch: int
    state: SubjectState


class _EpochRun:
    """Bookkeeping of one epoch in the engine."""

    def __init__(self, plan: EpochPlan, generation: int, schedule_length: int | None) -> None:
        self.plan = plan
        self.generation = generation
        self.next_task = 0
        self.in_flight = 0
        self.yielded = 0
        self.started = False
        self.ready: dict[PatchKey, int] = {}
        self.states: dict[int, SubjectState] = {}  # by task position, once its patches are in
        self.failure: SubjectProcessingError | None = None  # raised when the run becomes current
        self.ready_keys: list[PatchKey] = []  # free-running mode only
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


class _EngineResources:
    """What must be released however the coordinator ends (close, GC, exit, error).

    Every release runs even if an earlier one fails. Only the process that built the engine
    releases it; a forked copy detaches instead (:mod:`shmqueue.engine.forks`): it drops its
    copies of the ring's mapping and descriptor, and never touches the workers.
    """

    def __init__(self) -> None:
        self.owner = os.getpid()
        self.segment: Segment | None = None
        self.ring: RingView | None = None
        self.pool: WorkerPool | None = None
        forks.register(self)

    def close(self) -> None:
        forks.unregister(self)
        if os.getpid() != self.owner:
            return
        pool, ring, segment = self.pool, self.ring, self.segment
        self.pool = self.ring = self.segment = None
        steps: list[Callable[[], None]] = []
        if pool is not None:
            steps.append(pool.close)
        if ring is not None:
            steps.append(ring.release)
        if segment is not None:
            steps.append(segment.close)
        run_all(steps)

    def detach_in_child(self) -> None:
        if self.pool is not None:
            self.pool.detach_in_child()
        if self.ring is not None:
            self.ring.release()
        if self.segment is not None:
            self.segment.close()  # this copy's mapping and descriptor only
        self.pool = self.ring = self.segment = None


class Coordinator:
    """Runs ``num_workers`` workers over a ring laid out as ``layout``."""

    def __init__(
        self,
        pipeline: SubjectPipeline,
        layout: SlotLayout,
        num_workers: int,
        context: BaseContext,
        backend: str,
        deterministic: bool,
        timeout: float = 0.0,
    ) -> None:
        self.layout = layout
        self.timeout = timeout
        self.deterministic = deterministic
        self.pipeline = pipeline
        self.stats = QueueStats(max_length=layout.max_length)
        self._slots = SlotTable(layout.max_length)
        self._runs: dict[int, _EpochRun] = {}
        self._current: _EpochRun | None = None
        self._upcoming: _EpochRun | None = None
        self._generation = 0
        self._worker_tasks: list[dict[tuple[int, int], tuple[int, ...]]] = [
            {} for _ in range(num_workers)
        ]
        self._silence = 0.0  # seconds the consumer has waited without any worker reporting
        self._resources = _EngineResources()
        self._finalizer = weakref.finalize(self, self._resources.close)
        try:
            self._resources.segment = create_segment(backend, layout.ring_bytes)
            self.ring = self._resources.ring = RingView(self._resources.segment.buffer, layout)
            self._pool = self._resources.pool = WorkerPool(
                num_workers, context, pipeline, self._resources.segment, layout
            )
            self._await_workers(num_workers, context.get_start_method())
            self._resources.segment.seal()
        except BaseException:
            self.close()
            raise
        logger.debug(
            "started %d %s workers (pids %s) over a %s ring of %d slots",
            num_workers,
            context.get_start_method(),
            self._pool.pids,
            pretty_bytes(layout.ring_bytes),
            layout.max_length,
        )

    # Public ------------------------------------------------------------------------------------

    def start_epoch(self, plan: EpochPlan, upcoming: EpochPlan | None) -> None:
        """Make ``plan`` current (adopting its prefetched run) and prefetch ``upcoming``.

        A worker that died while idle (between epochs, e.g. killed for memory during
        validation) is reported here, before any work is sent to it.
        """
        for exited in self._pool.exited():
            raise self._worker_died(exited)
        if self._upcoming is not None and self._upcoming.plan == plan:
            run = self._upcoming
        else:
            if self._upcoming is not None:
                self._discard(self._upcoming)
            run = self._new_run(plan)
        if self._current is not None:
            self._discard(self._current)
        self._current = run
        if run.failure is not None:
            raise run.failure
        self._upcoming = None if upcoming is None else self._new_run(upcoming)
        self.stats.first_patch_seconds = 0.0
        self._dispatch()

    def take(self, count: int, consume: Callable[[TakenPatch], None]) -> int:
        """Pass up to ``count`` patches of the current epoch to ``consume``, one at a time.

        Each slot belongs to the consumer only during its ``consume`` call and goes back to the
        workers right after, so the consumer holds at most one slot: that keeps the deterministic
        schedule's guarantee (and refills sooner). Waits as needed; returns how many were passed,
        fewer than ``count`` only at the end of the epoch.
        """
        run = self._current
        assert run is not None, "start_epoch first"
        self._process(self._pool.wait(0))
        passed = 0
        while passed < count and not run.finished:
            key = self._choose(run)
            if key is None:
                self._wait_for_progress(run)
                continue
            slot = run.ready.pop(key)
            self._slots.claim(slot)
            run.yielded += 1
            try:
                consume(TakenPatch(slot, run.plan.tasks[key[0]], key[1], run.states[key[0]]))
            finally:
                self._slots.release([slot])
            passed += 1
            self._dispatch()
        self.stats.patches_consumed += passed
        self._update_fill()
        return passed

    def close(self) -> None:
        """Stop the workers and free the ring (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    @property
    def worker_pids(self) -> list[int | None]:
        return self._pool.pids

    # Choosing ----------------------------------------------------------------------------------

    def _choose(self, run: _EpochRun) -> PatchKey | None:
        """The key of the next patch to yield, if it is ready."""
        if run.schedule is not None:
            if run.next_take is None:
                run.next_take = next(run.schedule)
            key = (run.next_take.position, run.next_take.patch)
            if key not in run.ready:
                return None
            run.next_take = None
            return key
        if not run.started:
            if not self._buffer_full(run):
                return None
            run.started = True
        keys = run.ready_keys
        if not keys:
            return None
        if run.chooser is None:
            return keys.pop(0)
        index = run.chooser.randrange(len(keys))
        keys[index], keys[-1] = keys[-1], keys[index]
        return keys.pop()

    def _buffer_full(self, run: _EpochRun) -> bool:
        """No more of the run's subjects can join the buffer before patches leave it."""
        if run.in_flight:
            return False
        if run.next_task == len(run.plan.tasks):
            return True
        return self._slots.free_count < run.plan.tasks[run.next_task].num_patches

    # Workers -----------------------------------------------------------------------------------

    def _new_run(self, plan: EpochPlan) -> _EpochRun:
        self._generation += 1
        schedule_length = self.layout.max_length if self.deterministic else None
        run = _EpochRun(plan, self._generation, schedule_length)
        self._runs[run.generation] = run
        return run

    def _discard(self, run: _EpochRun) -> None:
        self._slots.discard(run.ready.values())
        run.ready.clear()
        run.ready_keys.clear()
        del self._runs[run.generation]

    def _dispatch(self) -> None:
        """Hand tasks to workers in plan order while slots and worker queues allow."""
        for run in (self._current, self._upcoming):
            if run is None:
                continue
            while run.next_task < len(run.plan.tasks):
                task = run.plan.tasks[run.next_task]
                worker_id = self._idlest_worker()
                if worker_id is None or self._slots.free_count < task.num_patches:
                    return
                slots = tuple(self._slots.reserve(task.num_patches))
                self._worker_tasks[worker_id][(run.generation, task.position)] = slots
                try:
                    self._pool.send(worker_id, TaskMessage(task, run.generation, slots))
                except WorkerGone as gone:
                    raise self._worker_died(gone.exited) from None
                run.next_task += 1
                run.in_flight += 1
        self._update_fill()

    def _idlest_worker(self) -> int | None:
        loads = [len(tasks) for tasks in self._worker_tasks]
        lightest = min(loads)
        return loads.index(lightest) if lightest < PREFETCH_DEPTH else None

    def _wait_for_progress(self, run: _EpochRun) -> None:
        """Block until a worker reports (or dies); account the time as consumer wait."""
        if not any(self._worker_tasks):
            raise RuntimeError(  # a bug in the engine, never a user error: fail, do not hang
                f"shmqueue engine stalled: epoch {run.plan.epoch} needs patches but no task is in"
                f" flight ({self._slots.free_count} free slots, next task {run.next_task})."
            )
        started = time.perf_counter()
        events = self._pool.wait(min(WAIT_SLICE, self.timeout) if self.timeout else WAIT_SLICE)
        waited = time.perf_counter() - started
        self.stats.consumer_wait_seconds += waited
        if run.yielded == 0:
            self.stats.first_patch_seconds += waited
        if not events:
            self._silence += waited
            in_flight = [self._describe_task(*key) for tasks in self._worker_tasks for key in tasks]
            if self.timeout and self._silence >= self.timeout:
                raise WorkerTimeoutError(
                    f"No worker reported for {self._silence:.0f} s (timeout={self.timeout:g}) while"
                    f" processing {', '.join(in_flight)}. A transform may be stuck (a deadlock in"
                    " a library, a network file system that hangs); raise timeout= if subjects"
                    " really take this long, or run the subject with num_workers=0 to debug."
                )
            logger.warning("waited %.0f s for workers still processing %s", waited, in_flight)
        else:
            self._silence = 0.0
        self._process(events)

    def _process(self, events: list[WorkerMessage | WorkerExited]) -> None:
        for event in events:
            if isinstance(event, TaskDone):
                self._task_done(event)
            elif isinstance(event, TaskFailed):
                self._task_failed(event)
            elif isinstance(event, WorkerExited):
                raise self._worker_died(event)
        if events:
            self._dispatch()

    def _task_done(self, done: TaskDone) -> None:
        slots = self._worker_tasks[done.worker_id].pop((done.generation, done.task.position))
        self.stats.subject_seconds.setdefault(done.worker_id, []).append(done.seconds)
        self.stats.worker_peak_rss[done.worker_id] = done.peak_rss
        run = self._runs.get(done.generation)
        if run is None:
            self._slots.abandon(slots)
            return
        self._slots.fill(slots)
        run.in_flight -= 1
        run.states[done.task.position] = done.state
        self.stats.patches_produced += len(slots)
        for patch, slot in enumerate(slots):
            key = (done.task.position, patch)
            run.ready[key] = slot
            if run.schedule is None:
                run.ready_keys.append(key)

    def _task_failed(self, failed: TaskFailed) -> None:
        slots = self._worker_tasks[failed.worker_id].pop((failed.generation, failed.task.position))
        self._slots.abandon(slots)
        run = self._runs.get(failed.generation)
        if run is None:
            logger.warning("a task of an abandoned epoch failed: %s", failed.description)
            return
        run.in_flight -= 1
        remote = RemoteTraceback(failed.traceback_text)
        cause: BaseException = remote
        summary = failed.traceback_text.strip().splitlines()[-1].rstrip(".")
        if failed.exception is not None:
            failed.exception.__cause__ = remote
            cause = failed.exception
        error = SubjectProcessingError(
            f"Worker {failed.worker_id} failed on {failed.description} in epoch"
            f" {failed.task.epoch}: {summary}. The worker's traceback is shown above."
        )
        error.__cause__ = cause
        if run is self._upcoming:  # a prefetched epoch: its failure belongs to that epoch
            run.failure = run.failure or error
            return
        raise error

    def _worker_died(self, exited: WorkerExited) -> WorkerDiedError:
        tasks = [self._describe_task(*key) for key in self._worker_tasks[exited.worker_id]]
        doing = f"while processing {tasks[0]}" if tasks else "while idle"
        memory = psutil.virtual_memory()
        peak = self.stats.worker_peak_rss.get(exited.worker_id)
        return WorkerDiedError(
            f"Worker {exited.worker_id} (pid {exited.pid}) {exited.describe()} {doing}. Memory"
            f" now: {pretty_bytes(memory.available)} available of {pretty_bytes(memory.total)};"
            f" the worker's peak so far: {pretty_bytes(peak) if peak else 'unknown'}. If memory"
            " is short, lower num_workers, max_length or the patch size (see"
            " queue.estimate_memory()) and check `dmesg` for the kernel's message."
        )

    def _describe_task(self, generation: int, position: int) -> str:
        run = self._runs.get(generation)
        if run is None:
            return f"a subject of an abandoned epoch (generation {generation})"
        index = run.plan.tasks[position].subject_index
        return f"{self.pipeline.subjects[index].describe(index)} of epoch {run.plan.epoch}"

    def _await_workers(self, num_workers: int, start_method: str) -> None:
        ready: set[int] = set()
        deadline = time.monotonic() + READY_TIMEOUT
        while len(ready) < num_workers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WorkerDiedError(
                    f"Only {len(ready)} of {num_workers} workers started within"
                    f" {READY_TIMEOUT:.0f} s. The machine may be overloaded."
                )
            for event in self._pool.wait(remaining):
                if isinstance(event, WorkerReady):
                    ready.add(event.worker_id)
                    self.stats.worker_descriptors[event.worker_id] = event.descriptors
                elif isinstance(event, WorkerStartFailed):
                    raise self._start_failed(event, start_method)
                elif isinstance(event, WorkerExited):
                    raise WorkerDiedError(
                        f"Worker {event.worker_id} (pid {event.pid}) {event.describe()} during"
                        f" start-up.{_START_ADVICE.format(start_method=start_method)} Its own"
                        " error, if any, is printed above (the worker's stderr)."
                    )

    def _start_failed(self, failed: WorkerStartFailed, start_method: str) -> WorkerStartError:
        summary = failed.traceback_text.strip().splitlines()[-1].rstrip(".")
        error = WorkerStartError(
            f"Worker {failed.worker_id} could not start under the '{start_method}' start"
            f" method: {summary}.{_START_ADVICE.format(start_method=start_method)}"
        )
        remote = RemoteTraceback(failed.traceback_text)
        if failed.exception is not None:
            failed.exception.__cause__ = remote
        error.__cause__ = failed.exception or remote
        return error

    def _update_fill(self) -> None:
        self.stats.ready = sum(len(run.ready) for run in self._runs.values())
        self.stats.in_workers = sum(
            len(slots) for tasks in self._worker_tasks for slots in tasks.values()
        )
