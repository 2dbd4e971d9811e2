"""Coordinator: the training process's side of the engine, the I/O around the scheduler.

It owns the ring and the worker pool and drives the pure
:class:`~shmqueue.engine.scheduler.Scheduler` (which task goes to which worker and slots, which
ready patch the consumer gets next, the epochs' bookkeeping): it sends the scheduler's dispatches
through the pool, waits on the workers when the consumer needs a patch that is not ready, turns
the workers' messages into the scheduler's events, and raises errors that say where and what to
do. It has no thread of its own: it works inside :meth:`Coordinator.start_epoch` and
:meth:`Coordinator.take`, which the training loop's ``next()`` calls.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable
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
from ..plan import EpochPlan
from ..stats import QueueStats
from ..units import pretty_bytes
from . import forks
from .layout import SlotLayout
from .pool import WorkerExited, WorkerGone, WorkerPool, run_all
from .protocol import (
    TaskDone,
    TaskFailed,
    TaskMessage,
    WorkerMessage,
    WorkerReady,
    WorkerStartFailed,
)
from .ring import RingView, Segment, create_segment
from .scheduler import Dispatch, FailureAction, Scheduler, TakenPatch
from .slots import SlotState

__all__ = ["Coordinator", "TakenPatch"]

logger = logging.getLogger("shmqueue")

WAIT_SLICE = 30.0
READY_TIMEOUT = 300.0
_START_ADVICE = (
    " Under '{start_method}', workers import the script's modules again and unpickle the"
    " subjects, transform and sampler: define the classes and functions they use in a module"
    " (not in a notebook cell or an interactive session), start training under"
    " `if __name__ == \"__main__\":`, or use multiprocessing_context='fork'."
)


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
        self._scheduler = Scheduler(layout.max_length, num_workers, deterministic)
        self._slots = self._scheduler.slots  # read, for the fill statistics
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
        validation) is reported here, before any work is sent to it; so is a failure of
        ``plan``'s prefetched subjects.
        """
        failure = self._scheduler.start_epoch(plan, upcoming)  # abandons the epoch left behind
        # Then the reports and deaths that came meanwhile: a left epoch's failures are ignored
        # like its patches, and a death is reported before work is sent ("while idle").
        self._process(self._pool.wait(0))
        if failure is not None:
            raise self._subject_error(failure)
        self.stats.first_patch_seconds = 0.0
        self._dispatch()

    def take(self, count: int, consume: Callable[[TakenPatch], None]) -> int:
        """Pass up to ``count`` patches of the current epoch to ``consume``, one at a time.

        Each slot belongs to the consumer only during its ``consume`` call and goes back to the
        workers right after, so the consumer holds at most one slot: that keeps the deterministic
        schedule's guarantee (and refills sooner). Waits as needed; returns how many were passed,
        fewer than ``count`` only at the end of the epoch.
        """
        scheduler = self._scheduler
        self._process(self._pool.wait(0))
        passed = 0
        while passed < count and not scheduler.finished:
            taken = scheduler.next_patch()
            if taken is None:
                self._wait_for_progress()
                continue
            try:
                consume(taken)
            finally:
                scheduler.release(taken.slot)
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

    # Workers -----------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Send the tasks that the scheduler hands out now."""
        for dispatch in self._scheduler.dispatch():
            message = TaskMessage(dispatch.task, dispatch.generation, dispatch.slots)
            try:
                self._pool.send(dispatch.worker_id, message)
            except WorkerGone as gone:
                raise self._worker_died(gone.exited) from None
        self._update_fill()

    def _wait_for_progress(self) -> None:
        """Block until a worker reports (or dies); account the time as consumer wait."""
        stalled = self._scheduler.stall_error()
        if stalled is not None:
            raise stalled
        started = time.perf_counter()
        events = self._pool.wait(min(WAIT_SLICE, self.timeout) if self.timeout else WAIT_SLICE)
        waited = time.perf_counter() - started
        self.stats.consumer_wait_seconds += waited
        if self._scheduler.yielded == 0:
            self.stats.first_patch_seconds += waited
        if not events:
            self._silence += waited
            in_flight = [self._describe_task(task) for task in self._scheduler.in_flight()]
            if self.timeout and self._silence >= self.timeout:
                raise WorkerTimeoutError(
                    f"No worker reported for {round(self._silence, 1):g} s"
                    f" (timeout={self.timeout:g}) while"
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
        self.stats.subject_seconds.setdefault(done.worker_id, []).append(done.seconds)
        self.stats.worker_peak_rss[done.worker_id] = done.peak_rss
        self.stats.patches_produced += self._scheduler.task_done(done)

    def _task_failed(self, failed: TaskFailed) -> None:
        action = self._scheduler.task_failed(failed)
        if action is FailureAction.IGNORE:
            logger.warning("a task of an abandoned epoch failed: %s", failed.description)
        elif action is FailureAction.RAISE:
            raise self._subject_error(failed)

    def _subject_error(self, failed: TaskFailed) -> SubjectProcessingError:
        """The error of a failed task, caused by the worker's own exception and traceback."""
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
        return error

    def _worker_died(self, exited: WorkerExited) -> WorkerDiedError:
        tasks = [self._describe_task(task) for task in self._scheduler.in_flight(exited.worker_id)]
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

    def _describe_task(self, dispatch: Dispatch) -> str:
        epoch = self._scheduler.epoch_of(dispatch.generation)
        if epoch is None:
            return f"a subject of an abandoned epoch (generation {dispatch.generation})"
        index = dispatch.task.subject_index
        return f"{self.pipeline.subjects[index].describe(index)} of epoch {epoch}"

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
        self.stats.ready = self._slots.count(SlotState.READY)
        self.stats.in_workers = self._slots.count(SlotState.WORKER)
