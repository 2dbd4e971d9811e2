"""Messages between the coordinator and its workers, and the protocol they follow.

Only small, fixed-size messages cross the pipes; patches go through the ring.

Start-up
  1. The coordinator creates the ring, a lifeline pipe (it keeps the only write end), and per
     worker a task pipe (coordinator -> worker) and a result pipe (worker -> coordinator).
  2. Each worker ignores SIGINT, uses one torch intra-op thread, maps the ring and sends
     :class:`WorkerReady`. When all are ready the coordinator seals the ring (the named backend
     unlinks its name, so a killed process group leaves nothing in /dev/shm).

Per subject (one message each way, never one per patch)
  3. The coordinator reserves ``task.num_patches`` free slots and sends :class:`TaskMessage`
     (task, epoch generation, slots). A worker holds at most ``PREFETCH_DEPTH`` such tasks.
  4. The worker loads, augments and samples the subject, writes patch ``k`` and its metadata
     row into ``slots[k]``, then sends :class:`TaskDone`; on an exception it sends
     :class:`TaskFailed` with the original exception (when picklable) and its traceback text,
     and goes on with its next task.
  5. The coordinator marks the slots ready (or frees them if the generation is stale).

Shutdown (:meth:`~shmqueue.engine.pool.WorkerPool.close`; safe twice, also from a finalizer)
  6. Send :class:`Shutdown` to every worker and close the lifeline; a worker exits on either.
  7. Join each worker for ``JOIN_TIMEOUT`` seconds; SIGTERM the rest, then SIGKILL.
  8. Close the pipes, drop the ring's views, close the segment.

Failure
  * A worker that exits unasked (its sentinel fires) is reported as
    :class:`~shmqueue.errors.WorkerDiedError` with its exit code or signal; the coordinator
    notices at once because it waits on sentinels and result pipes together.
  * If the coordinator dies, the lifeline's EOF wakes every worker, which exits.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..plan import SubjectTask

PREFETCH_DEPTH = 2
JOIN_TIMEOUT = 5.0


@dataclass(frozen=True)
class TaskMessage:
    """Coordinator -> worker: process ``task`` into ``slots`` (one slot per patch)."""

    task: SubjectTask
    generation: int
    slots: tuple[int, ...]


@dataclass(frozen=True)
class Shutdown:
    """Coordinator -> worker: exit after the current task."""


@dataclass(frozen=True)
class WorkerReady:
    """Worker -> coordinator: the ring is mapped."""

    worker_id: int


@dataclass(frozen=True)
class TaskDone:
    """Worker -> coordinator: every slot of the task is written."""

    worker_id: int
    generation: int
    task: SubjectTask
    seconds: float
    peak_rss: int


@dataclass(frozen=True)
class TaskFailed:
    """Worker -> coordinator: the task raised; the slots hold nothing."""

    worker_id: int
    generation: int
    task: SubjectTask
    exception: BaseException | None
    description: str
    traceback_text: str


WorkerMessage = WorkerReady | TaskDone | TaskFailed
