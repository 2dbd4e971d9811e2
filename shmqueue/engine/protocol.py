"""Messages between the coordinator and its workers, and the protocol they follow.

Only small, fixed-size messages cross the pipes; patches go through the ring. The coordinator
has no thread of its own: it works inside the consumer's calls (``start_epoch`` and ``take``,
from the training loop's ``next()``), so every step below on its side happens there. What to
send and which slots to use are decided by the pure :class:`~shmqueue.engine.scheduler.Scheduler`;
the coordinator does the sending, the waiting and the raising.

Start-up (:class:`~shmqueue.engine.pool.WorkerPool`)
  1. The coordinator creates the ring (a reserved memfd, or a /dev/shm segment unlinked at once),
     a lifeline pipe (it keeps the only write end) and, per worker, a task pipe (coordinator ->
     worker) and a result pipe (worker -> coordinator). Each worker gets its own duplicate of
     the ring's descriptor. Under spawn and forkserver the pipeline (subjects, transform,
     sampler) is pickled once, in the training process: a failure there is a ``TypeError`` that
     says what to change.
  2. Each worker ignores SIGINT, arranges to die with the training process (the parent-death
     signal, and a thread that waits on the training process's pidfd and on the lifeline and
     ends the process at once), uses one torch intra-op thread, maps the ring, closes its
     descriptor, unpickles the pipeline, and sends :class:`WorkerReady` with a census of its
     descriptors, or :class:`WorkerStartFailed` with its traceback. When all are ready the
     coordinator closes its own descriptor of the ring (its mapping keeps the memory).

Per subject (one message each way, never one per patch)
  3. Before an epoch's first dispatch, the coordinator reports any worker that died while idle.
     The scheduler reserves ``task.num_patches`` free slots, and the coordinator sends
     :class:`TaskMessage` (task, epoch generation, slots); a failed send is reported as the
     worker's death. A worker holds at most ``PREFETCH_DEPTH`` such tasks.
  4. The worker loads, augments and samples the subject, writes patch ``k`` and its metadata
     row into ``slots[k]``, then sends :class:`TaskDone` with the augmented subject's
     :class:`SubjectState` (its images' affines, the metadata its transform changed); on an
     exception it sends :class:`TaskFailed` with the original exception (when picklable) and its
     traceback text, and goes on with its next task.
  5. The scheduler marks the slots ready (or frees them if the generation is stale).
  6. While the consumer waits, the coordinator blocks on the result pipes and the workers'
     sentinels together; with a ``timeout``, silence that long raises WorkerTimeoutError.

Shutdown (:meth:`~shmqueue.engine.pool.WorkerPool.close`; safe twice, also from a finalizer or a
signal handler; every step runs even if an earlier one fails)
  7. Send :class:`Shutdown` to every worker and close the lifeline; a worker exits on either
     (the lifeline's EOF ends it at once, also mid-subject).
  8. Join the workers for ``SHUTDOWN_GRACE`` seconds; SIGTERM the rest and join for
     ``JOIN_TIMEOUT``; SIGKILL any still left and join again.
  9. Close the pipes and the process handles; then the coordinator drops the ring's views and
     unmaps it.

Failure
  * A worker that exits unasked (its sentinel fires) is reported as
    :class:`~shmqueue.errors.WorkerDiedError` with its exit code or signal; the coordinator
    notices at once because it waits on sentinels and result pipes together.
  * If the training process dies, its workers exit within moments (step 2), whatever other
    process holds descriptors: forks of the training process close theirs
    (:mod:`shmqueue.engine.forks`).
  * Only the process that built the engine acts on it; in a fork, the engine is detached.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..plan import SubjectTask
from ..subject import Subject

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
    """Worker -> coordinator: the ring is mapped and the pipeline loaded.

    ``descriptors`` counts the worker's open descriptors by kind, so that tests (and users
    chasing a leak) can see that a worker holds only its own pipes, whatever the start method
    and however many queues the training process has made.
    """

    worker_id: int
    descriptors: dict[str, int]


@dataclass(frozen=True)
class WorkerStartFailed:
    """Worker -> coordinator: mapping the ring or unpickling the pipeline failed."""

    worker_id: int
    exception: BaseException | None
    traceback_text: str


@dataclass(frozen=True)
class SubjectState:
    """What the consumer needs of an augmented subject besides its patches.

    The images' affines after the transform and the sampler's ``prepare`` (a padded grid moves
    the origin), and the metadata entries the transform added, replaced or removed, so that a
    patch from a worker carries exactly what the in-process path's patch carries.
    """

    affines: dict[str, np.ndarray]
    changed_metadata: dict[str, Any]
    removed_metadata: tuple[str, ...]

    @classmethod
    def of(cls, original: Subject, augmented: Subject) -> SubjectState:
        before, after = original.metadata, augmented.metadata
        return cls(
            affines={name: image.affine for name, image in augmented.images.items()},
            changed_metadata={
                key: value
                for key, value in after.items()
                if key not in before or before[key] is not value
            },
            removed_metadata=tuple(key for key in before if key not in after),
        )

    def metadata(self, original: Subject) -> dict[str, Any]:
        """The augmented subject's metadata, rebuilt from the original's."""
        kept = {k: v for k, v in original.metadata.items() if k not in self.removed_metadata}
        return {**kept, **self.changed_metadata}


@dataclass(frozen=True)
class TaskDone:
    """Worker -> coordinator: every slot of the task is written."""

    worker_id: int
    generation: int
    task: SubjectTask
    state: SubjectState
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


WorkerMessage = WorkerReady | WorkerStartFailed | TaskDone | TaskFailed
