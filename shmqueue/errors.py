"""The exception types of shmqueue.

Every error a user can meet has its own type, and its message names the subject, the file, the
worker or the signal involved and says what to do. All derive from :class:`ShmqueueError`; the
input errors also derive from the builtin type a caller would expect (``ValueError``, ``OSError``,
``FileNotFoundError``) so generic handlers keep working.
"""

from __future__ import annotations

from typing import Any


class ShmqueueError(Exception):
    """Base class of every exception raised by shmqueue."""


class ImageFileError(ShmqueueError, OSError):
    """An image file cannot be read: unsupported format, corrupt or truncated."""


class ImageFileNotFoundError(ImageFileError, FileNotFoundError):
    """An image's path does not exist."""


class ImageChangedError(ImageFileError):
    """An image file's header no longer matches the one read when the queue was built."""


class ImageMemoryError(ShmqueueError, MemoryError):
    """An image's voxels could not be read for lack of memory; the message gives the figures."""


class InvalidImageError(ShmqueueError, ValueError):
    """An image has the wrong dimensionality, dtype or values for what is asked of it."""


class SubjectError(ShmqueueError, ValueError):
    """A subject is inconsistent, e.g. its images have different spatial shapes."""


class PatchSizeError(SubjectError):
    """The patch does not fit in a subject's volume."""


class SamplingError(SubjectError):
    """A sampler cannot draw patches from a subject (empty probability map, absent labels)."""


class TransformOutputError(SubjectError):
    """A transform's output does not fit the ring: an image added, removed, or changed in
    channels or dtype. The message names the transform, the image and both descriptions."""


class QueueClosedError(ShmqueueError, RuntimeError):
    """The queue was closed (or broken by an earlier failure) and cannot produce patches."""


class ConcurrentIterationError(ShmqueueError, RuntimeError):
    """An iterator over a queue was superseded by a newer one: two at once would split the epoch."""


class ForeignProcessError(ShmqueueError, RuntimeError):
    """A queue was used in a process other than the one that built it (a fork, a DataLoader
    worker); only the building process may run its engine."""


class SubjectProcessingError(ShmqueueError):
    """Loading, transforming or sampling one subject failed.

    The message names the subject, its files, the epoch and where it ran (a worker or the
    training process). ``__cause__`` is the original exception; for a worker, the original's own
    ``__cause__`` holds the worker's traceback as text.
    """


class WorkerDiedError(ShmqueueError):
    """A worker process exited without being asked to, e.g. killed by a signal."""


class WorkerStartError(ShmqueueError, RuntimeError):
    """A worker could not start: it failed to map the ring or to unpickle the subjects,
    transform and sampler (under spawn or forkserver). The worker's traceback is the cause."""


class WorkerTimeoutError(ShmqueueError, TimeoutError):
    """No worker reported within the queue's ``timeout`` while the consumer waited for patches."""


class RingAllocationError(ShmqueueError, MemoryError):
    """The shared-memory ring could not be reserved (no space in /dev/shm or in RAM)."""


class MemoryBudgetError(ShmqueueError, MemoryError):
    """A queue's plan cannot fit this machine's memory; raised before anything is allocated.

    The message says which budget is exceeded (the ring's backend, or the available memory) and
    what to change (``max_length``, ``num_workers``, the patch size, a container's memory or
    ``--shm-size``), followed by the breakdown, which :attr:`estimate` also holds.

    Attributes:
        estimate: the plan's :class:`~shmqueue.MemoryEstimate`. Typed ``Any`` because this
            module, the bottom of the package, imports nothing from it.
    """

    def __init__(self, message: str, estimate: Any) -> None:
        super().__init__(message)
        self.estimate = estimate

    def __reduce__(self) -> tuple[type[MemoryBudgetError], tuple[str, Any]]:
        return (type(self), (str(self), self.estimate))


class CacheError(ShmqueueError, OSError):
    """The cache of preprocessed subjects cannot be used: its directory cannot be created or
    written, or an entry cannot be stored. The message names the directory and the fix."""


class CacheKeyError(ShmqueueError, TypeError):
    """A cached transform step (or the subject) holds a value the cache's key cannot see into,
    so an entry could not be told from a stale one; the message names the step and the value."""


class RemoteTraceback(Exception):
    """Carries a worker's formatted traceback so that it prints as the cause of its exception."""

    def __init__(self, traceback_text: str) -> None:
        super().__init__(traceback_text)
        self.traceback_text = traceback_text

    def __str__(self) -> str:
        return f'\n"""\n{self.traceback_text}"""'
