"""Queue: the public face of shmqueue, TorchIO's ``Queue`` API over a shared-memory engine.

With ``num_workers=0`` everything runs in the training process, following the reference mixing
schedule literally (see :mod:`shmqueue.plan`); this path is the reference the engine is checked
against. With ``num_workers > 0`` a :class:`~shmqueue.engine.coordinator.Coordinator` runs worker
processes that write patches into a shared-memory ring; :meth:`Queue.batches` (what
:class:`~shmqueue.SubjectsLoader` iterates) copies each batch straight out of the ring.

This module is the API and the lifecycle: checking arguments, planning epochs, one live iteration
at a time, starting and shutting down. The patches come from a
:class:`~shmqueue.source.PatchSource`: :mod:`shmqueue.in_process` or the engine's consumer side
(:mod:`shmqueue.engine.consumer`).
"""

from __future__ import annotations

import logging
import os
import secrets
import weakref
from collections.abc import Callable, Iterator, Sequence
from multiprocessing.context import BaseContext
from typing import Any, ParamSpec, TypeVar

from torch.utils.data import IterableDataset, get_worker_info

from .arguments import check_count
from .batch import Batch
from .cache import VolumeCache
from .catalog import Catalog
from .compat import queue_call_form
from .dataset import SubjectsDataset
from .distributed import check_subject_sampler, predictable_sampler, warn_equalized
from .engine.backends import resolve_backend, resolve_context
from .engine.consumer import EngineSource
from .engine.coordinator import Coordinator
from .errors import (
    ConcurrentIterationError,
    ForeignProcessError,
    QueueClosedError,
    ShmqueueError,
)
from .image import PathLike
from .in_process import InProcessSource
from .memory import MemoryEstimate, preflight
from .memory.estimate import estimate_catalog
from .pipeline import SubjectPipeline
from .plan import (
    EQUALIZE_POLICIES,
    EpochPlan,
    common_patch_total,
    make_epoch_plan,
    subject_order,
)
from .sampling.base import PatchSampler
from .source import PatchSource
from .stats import QueueStats
from .subject import Subject
from .transforms import SubjectTransform
from .units import pretty_bytes

logger = logging.getLogger("shmqueue")

_Params = ParamSpec("_Params")
_Result = TypeVar("_Result")


class Queue(IterableDataset[Subject]):
    """A buffer of patches from subjects, filled by worker processes through shared memory.

    Iterating the queue yields one epoch of patch Subjects; :class:`~shmqueue.SubjectsLoader`
    turns it into batches with a single copy per patch. Each epoch yields exactly
    ``patches_per_volume`` patches of every subject of the epoch (fewer only for finite samplers
    such as the grid), mixed through a buffer of ``max_length`` patches.

    One iteration runs at a time: starting another (a second loader, or ``iter(queue)`` beside
    :meth:`batches`) makes the unfinished one raise :class:`~shmqueue.ConcurrentIterationError`
    on its next step, rather than split the epoch. The memory check (``check_memory``) runs at
    construction and again when the first iteration starts the workers, against the memory
    available then.

    TorchIO 1.x's call form works too: ``Queue(subjects_dataset, max_length,
    samples_per_volume, sampler, num_workers=...)``, told apart by the int in second place.

    Args:
        subjects: the subjects (a sequence of :class:`~shmqueue.Subject`), or a
            :class:`~shmqueue.SubjectsDataset`, whose transform the queue then applies (in its
            workers, seeded as ``transform`` is).
        patch_sampler: where patches come from, e.g. :class:`~shmqueue.UniformSampler`
            (``sampler=`` in TorchIO 1.x).
        max_length: buffer capacity in patches (>= ``patches_per_volume``). Larger mixes more
            and uses more shared memory. Default 300.
        patches_per_volume: patches drawn from each subject per epoch (``samples_per_volume=``
            in TorchIO 1.x). Default 10.
        num_workers: worker processes; 0 runs everything in the training process.
        shuffle_subjects: shuffle the subject order every epoch (must be False with a
            ``subject_sampler``, which decides the order).
        shuffle_patches: yield buffered patches in random order (else oldest first).
        transform: applied to each loaded subject before sampling.
        subject_sampler: a sized iterable of subject indices (e.g. ``DistributedSampler``).
            With torch's ``DistributedSampler`` or :class:`~shmqueue.DistributedSubjectSampler`
            every rank yields the same number of patches (see ``equalize``) and the next
            epoch is prefetched; call :meth:`set_epoch` before each epoch.
        seed: makes augmentation, patch positions and orders reproducible: they derive from
            ``(seed, epoch, subject index)`` only, not from the number of workers.
        deterministic: with workers, yield patches in exactly the order of ``num_workers=0``
            (waiting for a specific patch when needed) instead of whichever is ready.
        multiprocessing_context: start method (``"fork"``, ``"spawn"``, ``"forkserver"``) or a
            context; default as torch's DataLoader (the platform's default).
        backend: shared memory for the ring: ``"auto"`` (memfd on Linux), ``"memfd"`` or
            ``"named"`` (/dev/shm).
        equalize: with a distributed ``subject_sampler``, how ranks whose subjects give
            fewer or more patches than others' (finite samplers such as the grid) reach a
            common count: ``"pad"`` repeats patches of the rank's last subjects, ``"trim"``
            drops the last ones; either warns with the number (see :mod:`shmqueue.distributed`).
        check_memory: before anything is allocated, compare the estimated total (see
            :meth:`estimate_memory`; batches of 16 assumed) with the available memory and raise
            :class:`~shmqueue.MemoryBudgetError` if it cannot fit. ``False`` skips that check;
            the ring is always checked against its backend's capacity.
        patch_evaluation: evaluate the augmentations (:class:`~shmqueue.Augmentation`) after
            the transform's last step that needs the whole volume at the patches' voxels only,
            with the same result as on the whole volume (see :mod:`shmqueue.augmentation`);
            False evaluates them on the whole volume, as TorchIO does.
        cache_dir: keep each subject on disk after loading and after the transform's
            deterministic steps that come before its first random one
            (:func:`~shmqueue.cache.cached_prefix`), and read it from there, memory-mapped,
            whenever it is needed again: a directory, or a :class:`~shmqueue.VolumeCache` for
            its options (a content hash, a bound on its size). An entry is rebuilt when a file
            or a cached step changes; patches are the same as without the cache. See
            docs/preprocessing.md. None (the default) loads and preprocesses every time.
        timeout: seconds the training loop may wait with no worker reporting before
            :class:`~shmqueue.WorkerTimeoutError` names the subjects in flight (as torch's
            DataLoader ``timeout``); 0, the default, waits as long as it takes (with a warning
            every 30 s).

    Example:
        >>> import torch, shmqueue as sq
        >>> subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 32, 32, 32)))] * 4
        >>> sampler = sq.UniformSampler(subjects[0], patch_size=16)
        >>> queue = sq.Queue(subjects, sampler, max_length=8, patches_per_volume=2, seed=0)
        >>> len(queue), sum(1 for _ in queue)
        (8, 8)
    """

    def __init__(
        self,
        subjects: Sequence[Subject] | SubjectsDataset,
        patch_sampler: PatchSampler | int | None = None,
        *torchio1_arguments: Any,
        max_length: int | None = None,
        patches_per_volume: int | None = None,
        samples_per_volume: int | None = None,
        sampler: PatchSampler | None = None,
        num_workers: int = 0,
        shuffle_subjects: bool = True,
        shuffle_patches: bool = True,
        transform: SubjectTransform | None = None,
        subject_sampler: Any = None,
        seed: int | None = None,
        deterministic: bool = False,
        multiprocessing_context: str | BaseContext | None = None,
        backend: str = "auto",
        equalize: str = "pad",
        check_memory: bool = True,
        patch_evaluation: bool = True,
        cache_dir: PathLike | VolumeCache | None = None,
        timeout: float = 0.0,
    ) -> None:
        patch_sampler, max_length, patches_per_volume = queue_call_form(
            patch_sampler,
            torchio1_arguments,
            max_length=max_length,
            patches_per_volume=patches_per_volume,
            samples_per_volume=samples_per_volume,
            sampler=sampler,
        )
        if isinstance(subjects, SubjectsDataset):
            if transform is not None and subjects.transform is not None:
                raise ValueError(
                    "Both the SubjectsDataset and the Queue have a transform: give it to one of"
                    " them (the queue applies the dataset's in its workers)."
                )
            transform = subjects.transform if transform is None else transform
            subjects = subjects.subjects
        self.max_length = check_count("max_length", max_length)
        self.patches_per_volume = check_count("patches_per_volume", patches_per_volume)
        if self.max_length < self.patches_per_volume:
            raise ValueError(
                f"max_length ({max_length}) must be at least patches_per_volume"
                f" ({patches_per_volume}): the buffer takes in all patches of a subject at once."
                " Raise max_length (a multiple of patches_per_volume mixes best)."
            )
        check_count("num_workers", num_workers, minimum=0)
        if subject_sampler is not None and shuffle_subjects:
            raise ValueError(
                "shuffle_subjects=True cannot be combined with a subject_sampler, which decides"
                " the order itself: pass shuffle_subjects=False (and shuffle=True to the sampler)."
            )
        if subject_sampler is not None:
            check_subject_sampler(subject_sampler, len(subjects))
        if equalize not in EQUALIZE_POLICIES:
            raise ValueError(f"equalize must be one of {EQUALIZE_POLICIES}, got {equalize!r}")
        if not isinstance(patch_sampler, PatchSampler):
            raise TypeError(
                f"patch_sampler must be a shmqueue sampler (e.g. UniformSampler), got"
                f" {type(patch_sampler).__name__}"
            )
        if len(subjects) == 0:
            raise ValueError("The queue needs at least one subject")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout < 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self.timeout = float(timeout)
        self._owner_pid = os.getpid()
        self.subjects = subjects
        self.sampler = patch_sampler
        self.transform = transform
        self.num_workers = num_workers
        self.shuffle_subjects = shuffle_subjects
        self.shuffle_patches = shuffle_patches
        self.subject_sampler = subject_sampler
        self.equalize = equalize
        self.seed = secrets.randbits(63) if seed is None else int(seed)
        self.deterministic = deterministic
        self.backend = resolve_backend(backend)
        self._context = resolve_context(multiprocessing_context)
        # One pass over the headers: every subject predicted through the transform's
        # deterministic prefix and checked, its patches counted, the ring laid out; the planner,
        # the estimator and the testing harness read this catalog.
        self.catalog = Catalog.build(
            subjects, patch_sampler, self.max_length, patches_per_volume, transform
        )
        self.layout = self.catalog.layout
        self._check_memory = check_memory
        self.patch_evaluation = patch_evaluation
        self.cache = (
            cache_dir
            if isinstance(cache_dir, VolumeCache) or cache_dir is None
            else VolumeCache(cache_dir)
        )
        self._memory = self.estimate_memory()  # checked now, and again when the ring is made
        if self.cache is not None:
            self.cache.warn_if_short_of_disk(self._memory.cache_disk)
        self._preflight()
        self._pipeline = SubjectPipeline(
            subjects, transform, patch_sampler, self.layout.images, patch_evaluation, self.cache
        )
        self._epoch = 0
        # The newest iteration's plan; an iterator with another plan was superseded.
        self._live_plan: EpochPlan | None = None
        self._closed_reason: str | None = None
        self._source: PatchSource = (
            InProcessSource(self._pipeline, self.layout)
            if num_workers == 0
            else EngineSource(
                subjects,
                self.layout,
                start=_weak(self._start_engine),
                upcoming=_weak(self._upcoming_plan),
                guard=_weak(self._guarded),
            )
        )

    # TorchIO's properties -----------------------------------------------------------------------

    @property
    def num_subjects(self) -> int:
        """Subjects per epoch: ``len(subject_sampler)`` if given, else all."""
        if self.subject_sampler is not None:
            return len(self.subject_sampler)
        return len(self.subjects)

    @property
    def patches_per_epoch(self) -> int:
        """Patches yielded per epoch (``num_subjects * patches_per_volume`` for random samplers)."""
        if predictable_sampler(self.subject_sampler) is not None:  # equalised across ranks
            return self._plan(self._epoch).total_patches
        if all(count == self.patches_per_volume for count in self.catalog.patch_counts):
            return self.num_subjects * self.patches_per_volume
        indices = (
            self.subject_sampler if self.subject_sampler is not None else range(len(self.subjects))
        )
        return sum(self.catalog.patch_counts[int(index)] for index in indices)

    def __len__(self) -> int:
        return self.patches_per_epoch

    @property
    def max_memory(self) -> int:
        """Bytes of the patch buffer: ``max_length`` slots of every image's patch."""
        return self.layout.patch_bytes

    @property
    def max_memory_pretty(self) -> str:
        return pretty_bytes(self.max_memory)

    @property
    def worker_pids(self) -> list[int]:
        """The worker processes' ids; empty until the first iteration starts the engine."""
        engine = self._source.engine
        if engine is None:
            return []
        return [pid for pid in engine.worker_pids if pid is not None]

    @property
    def engine(self) -> Coordinator | None:
        """The engine that runs this queue's workers and ring, for inspection (read-only).

        None until the first iteration starts it, and always with ``num_workers=0``. Tests and
        :mod:`shmqueue.testing` look at its ring and workers through this; iterate the queue,
        never the engine.
        """
        return self._source.engine

    @property
    def epoch(self) -> int:
        """The epoch the next iteration will run."""
        return self._epoch

    def set_epoch(self, epoch: int) -> None:
        """Run ``epoch`` next, and forward it to the subject sampler (e.g. DistributedSampler)."""
        self._epoch = epoch
        if hasattr(self.subject_sampler, "set_epoch"):
            self.subject_sampler.set_epoch(epoch)

    def estimate_memory(
        self,
        batch_size: int = 16,
        pin_memory: bool = False,
        ranks_per_node: int = 1,
        measure: bool = False,
    ) -> MemoryEstimate:
        """This queue's memory, term by term (:func:`shmqueue.estimate_memory` for its config).

        :attr:`max_memory` counts only the patch buffer; this adds the subjects in flight in the
        workers, transform intermediates, batches and the processes themselves.

        Args:
            batch_size: the loader's batch size.
            pin_memory: whether the loader pins batches.
            ranks_per_node: training processes per machine, each with a queue like this one.
            measure: measure the pipeline on the largest subjects instead of modelling it.

        Returns:
            The :class:`~shmqueue.MemoryEstimate`; ``print()`` it for a table.

        Example:
            >>> import torch, shmqueue as sq
            >>> subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 32, 32, 32)))] * 4
            >>> queue = sq.Queue(subjects, sq.UniformSampler(None, 16), max_length=8,
            ...                  patches_per_volume=2)
            >>> queue.estimate_memory(batch_size=4).total_per_rank > queue.max_memory
            True
        """
        return estimate_catalog(
            self.catalog,
            self.subjects,
            self.sampler,
            self.transform,
            num_workers=self.num_workers,
            batch_size=batch_size,
            ranks_per_node=ranks_per_node,
            pin_memory=pin_memory,
            measure=measure,
            multiprocessing_context=self._context,
            patch_evaluation=self.patch_evaluation,
            cached=self.cache is not None,
        )

    def stats(self) -> QueueStats:
        """Buffer fill, patches produced and consumed, consumer waits, per-worker timings."""
        return self._source.stats

    def plan(self, epoch: int) -> EpochPlan:
        """The plan of ``epoch``: its subjects in order, their patch counts and seeds.

        The patches of an epoch are exactly those of its plan's tasks (contract 1), and each
        task's augmentation and patch positions follow from its seed alone (contract 6), so this
        is what :func:`shmqueue.testing.check_queue` checks an epoch against. Asking does not
        change the queue. With a ``subject_sampler`` the order is the sampler's current one, so
        call :meth:`set_epoch` first, as before iterating.

        Args:
            epoch: the epoch to plan.

        Returns:
            The :class:`~shmqueue.plan.EpochPlan`: ``plan.tasks`` lists each subject's
            ``subject_index``, ``occurrence``, ``num_patches`` and ``seed``.

        Example:
            >>> import torch, shmqueue as sq
            >>> subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)))] * 3
            >>> queue = sq.Queue(subjects, sq.UniformSampler(None, 4), max_length=4,
            ...                  patches_per_volume=2, shuffle_subjects=False, seed=0)
            >>> [(task.subject_index, task.num_patches) for task in queue.plan(0).tasks]
            [(0, 2), (1, 2), (2, 2)]
        """
        return self._plan(epoch)

    # Iteration ------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Subject]:
        """One epoch of patch Subjects (copies; nothing points into shared memory)."""
        plan = self._begin_epoch()
        for patch in self._source.patches(plan):
            yield patch
            self._check_live(plan)

    def batches(
        self, batch_size: int, drop_last: bool = False, pin_memory: bool = False
    ) -> Iterator[Batch]:
        """One epoch of batches, each copied once from the ring into (optionally pinned) tensors."""
        check_count("batch_size", batch_size)
        plan = self._begin_epoch()
        for batch in self._source.batches(plan, batch_size, drop_last, pin_memory):
            yield batch
            self._check_live(plan)

    # Lifecycle ------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers and free shared memory. Safe to call twice."""
        self._shut_down("the queue was closed")

    def __enter__(self) -> Queue:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __reduce__(self) -> Any:
        raise TypeError(
            "A shmqueue Queue cannot be pickled or sent to another process. Give num_workers to"
            " the Queue itself and iterate it with SubjectsLoader (or a DataLoader with"
            " num_workers=0)."
        )

    def __repr__(self) -> str:
        return (
            f"Queue(num_subjects={self.num_subjects}, max_length={self.max_length},"
            f" patches_per_volume={self.patches_per_volume}, num_workers={self.num_workers},"
            f" max_memory={self.max_memory_pretty})"
        )

    # Internals ------------------------------------------------------------------------------------

    def _preflight(self) -> None:
        """Contract 9: a plan that cannot fit fails before anything is allocated.

        Checked at construction and again right before the engine makes its ring and workers,
        against the memory available then: queues built together (training and validation) may
        each fit alone but not together. The estimate is the construction's; only the machine's
        capacity is read anew.
        """
        # This process, its subjects and the libraries exist already; helpers and copies do not.
        coordinator = self._memory.coordinator
        resident = coordinator.total - coordinator.helpers - coordinator.copy_on_write
        preflight(self._memory, self.backend, self._check_memory, resident=resident)

    def _plan(self, epoch: int, upcoming: bool = False) -> EpochPlan:
        sharded = predictable_sampler(self.subject_sampler)
        target = None
        if sharded is None:
            order = subject_order(
                len(self.subjects), epoch, self.seed, self.shuffle_subjects, self.subject_sampler
            )
        else:
            # Every rank's order is a pure function of the sampler's epoch (``upcoming``: the
            # next one, for prefetching), so every rank equalises its patches without talking.
            sampler_epoch = sharded.epoch + 1 if upcoming else sharded.epoch
            order = sharded.indices_for(sampler_epoch, sharded.rank)
            totals = sharded.patch_totals(sampler_epoch, self.catalog.patch_counts)
            target = common_patch_total(totals, self.equalize)
        return make_epoch_plan(
            epoch, order, self.catalog.patch_counts, self.seed, self.shuffle_patches, target
        )

    def _begin_epoch(self) -> EpochPlan:
        self._check_process()
        if self._closed_reason is not None:
            raise QueueClosedError(f"The queue cannot be iterated: {self._closed_reason}.")
        plan = self._plan(self._epoch)
        sharded = predictable_sampler(self.subject_sampler)
        if sharded is not None:
            warn_equalized(plan, sharded)
        self._epoch += 1
        self._live_plan = plan
        return plan

    def _check_process(self) -> None:
        """Only the process that built the queue may run its engine (DESIGN.md, contract 7)."""
        if get_worker_info() is not None:
            raise ForeignProcessError(
                "A shmqueue Queue is being iterated inside a torch DataLoader worker: each worker"
                " would run its own copy of the queue (and its own worker processes). Iterate it"
                " with shmqueue.SubjectsLoader(queue, batch_size=...), or a DataLoader with"
                " num_workers=0, and set the loading processes with Queue(num_workers=...)."
            )
        if os.getpid() != self._owner_pid:
            raise ForeignProcessError(
                f"This Queue was built in process {self._owner_pid} and cannot be used in process"
                f" {os.getpid()} (a fork of it): only the process that built a queue runs its"
                " workers. Build the queue in the process that iterates it."
            )

    def _check_live(self, plan: EpochPlan) -> None:
        """Contract 1: an iterator resumed after a newer iteration began raises, never shares.

        The queue runs one epoch at a time, so two live iterators would split an epoch's patches
        between them (or cut one short). Called each time an iterator resumes, before it takes
        anything; an iterator that is abandoned, never resumed, raises nothing.
        """
        if self._closed_reason is not None:  # closed meanwhile (also with num_workers=0)
            raise QueueClosedError(f"The queue cannot be iterated: {self._closed_reason}.")
        live = self._live_plan
        if live is plan:
            return
        assert live is not None  # set by _begin_epoch before any iterator resumes
        raise ConcurrentIterationError(
            f"This iterator over the queue was iterating epoch {plan.epoch}, but a newer"
            f" iteration of the same queue started epoch {live.epoch}: two iterators over one queue"
            " would split the epoch's patches between them. Finish (or delete) the first"
            " iterator before starting another and iterate the queue through one"
            " SubjectsLoader, or build a second Queue for a second stream of patches (e.g."
            " validation)."
        )

    def _start_engine(self) -> Coordinator:
        """Make the engine, its ring and its workers (at the first iteration that needs them).

        If that fails (memory gone since construction, e.g. to another queue; a transform that
        cannot reach spawn workers), the epoch just begun did not run: the next iteration runs
        it again, so the stream still follows ``num_workers=0``'s.
        """
        try:
            self._preflight()
            return Coordinator(
                self._pipeline,
                self.layout,
                self.num_workers,
                self._context,
                self.backend,
                self.deterministic,
                self.timeout,
            )
        except BaseException:
            if self._live_plan is not None:
                self._epoch = self._live_plan.epoch
                self._live_plan = None
            raise

    def _upcoming_plan(self) -> EpochPlan | None:
        """The plan after the one just begun, for the engine to prefetch: None unless its order
        is ours to know in advance."""
        sharded = predictable_sampler(self.subject_sampler)
        predictable = self.subject_sampler is None or sharded is not None
        return self._plan(self._epoch, upcoming=True) if predictable else None

    def _guarded(self, call: Callable[..., _Result], *args: Any) -> _Result:
        """Run an engine call; any failure leaves the engine shut down, never half-running.

        An iteration begun before :meth:`close` (or a failure) ends here with
        :class:`QueueClosedError` instead of reaching the stopped engine.
        """
        if self._closed_reason is not None:
            raise QueueClosedError(f"The queue cannot be iterated: {self._closed_reason}.")
        try:
            return call(*args)
        except BaseException as error:
            if self._closed_reason is not None and not isinstance(
                error, (ShmqueueError, KeyboardInterrupt)
            ):
                # close() ran during the call (a signal handler, another thread): the engine's
                # pipes went away under it, which is the closing, not a failure of its own.
                raise QueueClosedError(
                    f"The queue cannot be iterated: {self._closed_reason}."
                ) from error
            self._shut_down(f"it was shut down after {type(error).__name__}: {error}")
            raise

    def _shut_down(self, reason: str) -> None:
        if self._closed_reason is None:
            self._closed_reason = reason
        self._source.close()


def _weak(method: Callable[_Params, _Result]) -> Callable[_Params, _Result]:
    """``method`` of a queue, for its source, without keeping the queue alive.

    A queue dropped without :meth:`Queue.close` must stop its workers when its last reference
    goes, not at some later garbage collection: a source holding the queue's own methods would
    make a reference cycle. The queue outlives every call: its iterators hold it.
    """
    reference = weakref.WeakMethod(method)

    def call(*args: _Params.args, **kwargs: _Params.kwargs) -> _Result:
        bound = reference()
        assert bound is not None, "a queue's source outlived the queue"
        return bound(*args, **kwargs)

    return call
