"""Messages between the coordinator and its workers, and the protocol they follow.

Only small, fixed-size messages cross the pipes; patches go through the ring.

Start-up
  1. The coordinator creates the ring, a lifeline pipe (it keeps the only write end), and per
     worker a task pipe (coordinator -> worker) and a result pipe (worker -> coordinator).
     Under spawn and forkserver a worker's arguments (subjects, transform, sampler) are
     pickled; if that fails, start-up ends with a ``TypeError`` that says what to change.
  2. Each worker ignores SIGINT, uses one torch intra-op thread, maps the ring and sends
     :class:`WorkerReady`. When all are ready the coordinator seals the ring (the named backend
     unlinks its name, so a killed process group leaves nothing in /dev/shm).

Per subject (one message each way, never one per patch)
  3. The coordinator reserves ``task.num_patches`` free slots and sends :class:`TaskMessage`
     (task, epoch generation, slots). A worker holds at most ``PREFETCH_DEPTH`` such tasks.
  4. The worker loads, augments and samples the subject, writes patch ``k`` and its metadata
     row into ``slots[k]``, then sends :class:`TaskDone` with the augmented subject's
     :class:`SubjectState` (its images' affines, the metadata its transform changed); on an
     exception it sends :class:`TaskFailed` with the original exception (when picklable) and its
     traceback text, and goes on with its next task.
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
    """Worker -> coordinator: the ring is mapped."""

    worker_id: int


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


WorkerMessage = WorkerReady | TaskDone | TaskFailed
