"""Queue: the public face of shmqueue, TorchIO's ``Queue`` API over a shared-memory engine.

With ``num_workers=0`` everything runs in the training process, following the reference mixing
schedule literally (see :mod:`shmqueue.plan`); this path is the reference the engine is checked
against. With ``num_workers > 0`` a :class:`~shmqueue.engine.coordinator.Coordinator` runs worker
processes that write patches into a shared-memory ring; :meth:`Queue.batches` (what
:class:`~shmqueue.SubjectsLoader` iterates) copies each batch straight out of the ring.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
import warnings
from collections.abc import Iterator, Sequence
from multiprocessing.context import BaseContext
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from .arguments import check_count
from .batch import Batch, collate_subjects
from .distributed import check_subject_sampler, predictable_sampler, warn_equalized
from .engine.backends import resolve_backend, resolve_context
from .engine.coordinator import Coordinator, TakenPatch
from .engine.layout import MetadataField, SlotLayout
from .engine.ring import RingView
from .errors import (
    ConcurrentIterationError,
    ForeignProcessError,
    ImageFileError,
    InvalidImageError,
    QueueClosedError,
    ShmqueueError,
    SubjectError,
    SubjectProcessingError,
)
from .image import shift_affine
from .memory import MemoryEstimate, estimate_memory, preflight
from .pipeline import SubjectPipeline
from .plan import (
    EQUALIZE_POLICIES,
    Admit,
    EpochPlan,
    common_patch_total,
    make_epoch_plan,
    mixing_schedule,
    subject_order,
)
from .sampling.base import PATCH_LOCATION_KEY, PatchLocation, PatchSampler, extract_patch
from .stats import QueueStats
from .subject import Subject
from .transforms import SubjectTransform
from .units import pretty_bytes
from .volumes import VolumePool

logger = logging.getLogger("shmqueue")


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

    Args:
        subjects: the subjects (a sequence of :class:`~shmqueue.Subject`).
        patch_sampler: where patches come from, e.g. :class:`~shmqueue.UniformSampler`.
        max_length: buffer capacity in patches (>= ``patches_per_volume``). Larger mixes more
            and uses more shared memory.
        patches_per_volume: patches drawn from each subject per epoch.
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
        subjects: Sequence[Subject],
        patch_sampler: PatchSampler,
        *,
        max_length: int = 300,
        patches_per_volume: int = 10,
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
        timeout: float = 0.0,
    ) -> None:
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
        self._patch_counts, self.layout = self._inspect_subjects()
        self._check_memory = check_memory
        self._memory = self.estimate_memory()  # checked now, and again when the ring is made
        self._preflight()
        self._pipeline = SubjectPipeline(subjects, transform, patch_sampler, self.layout.images)
        self._epoch = 0
        # The newest iteration's plan; an iterator with another plan was superseded.
        self._live_plan: EpochPlan | None = None
        self._coordinator: Coordinator | None = None
        self._closed_reason: str | None = None
        self._in_process_stats = QueueStats(max_length=self.max_length)
        # Batch tensors: reused once the training loop lets go of them (see shmqueue.volumes).
        self._batch_volumes = VolumePool()

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
        if all(count == self.patches_per_volume for count in self._patch_counts):
            return self.num_subjects * self.patches_per_volume
        indices = (
            self.subject_sampler if self.subject_sampler is not None else range(len(self.subjects))
        )
        return sum(self._patch_counts[int(index)] for index in indices)

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
        if self._coordinator is None:
            return []
        return [pid for pid in self._coordinator.worker_pids if pid is not None]

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
        return estimate_memory(
            self.subjects,
            self.sampler,
            max_length=self.max_length,
            num_workers=self.num_workers,
            batch_size=batch_size,
            transform=self.transform,
            ranks_per_node=ranks_per_node,
            pin_memory=pin_memory,
            patches_per_volume=self.patches_per_volume,
            measure=measure,
            images=self.layout.images,
            multiprocessing_context=self._context,
        )

    def stats(self) -> QueueStats:
        """Buffer fill, patches produced and consumed, consumer waits, per-worker timings."""
        if self._coordinator is not None:
            return self._coordinator.stats
        return self._in_process_stats

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
        if self.num_workers == 0:
            for patch in self._in_process_patches(plan):
                yield patch
                self._check_live(plan)
            return
        coordinator = self._start_engine(plan)
        patches: list[Subject] = []
        while self._guarded(
            coordinator.take, 1, lambda taken: patches.append(self._patch_from_slot(taken))
        ):
            yield patches.pop()
            self._check_live(plan)

    def batches(
        self, batch_size: int, drop_last: bool = False, pin_memory: bool = False
    ) -> Iterator[Batch]:
        """One epoch of batches, each copied once from the ring into (optionally pinned) tensors."""
        check_count("batch_size", batch_size)
        if self.num_workers == 0:
            chunk: list[Subject] = []
            for patch in self:
                chunk.append(patch)
                if len(chunk) == batch_size:
                    yield _pinned(collate_subjects(chunk), pin_memory)
                    chunk = []
            if chunk and not drop_last:
                yield _pinned(collate_subjects(chunk), pin_memory)
            return
        plan = self._begin_epoch()
        coordinator = self._start_engine(plan)
        pin = pin_memory and _can_pin()
        while True:
            builder = _BatchBuilder(self, coordinator.ring, batch_size, pin)
            count = self._guarded(coordinator.take, batch_size, builder.add)
            if count == 0 or (drop_last and count < batch_size):
                return
            yield builder.build()
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

    def _inspect_subjects(self) -> tuple[list[int], SlotLayout]:
        """Validate every subject from its headers and lay out the ring; reads no voxels."""
        images: dict[str, tuple[int, torch.dtype]] = {}
        counts = []
        for index, subject in enumerate(self.subjects):
            if not isinstance(subject, Subject):
                raise TypeError(f"subjects[{index}] is a {type(subject).__name__}, not a Subject")
            try:
                shape = subject.spatial_shape
                self.sampler.check_fits(subject)
                spec = {
                    name: (image.num_channels, image.dtype)
                    for name, image in subject.images.items()
                }
            except (SubjectError, ImageFileError, InvalidImageError) as error:
                raise type(error)(f"subjects[{index}]: {error}") from error
            if not images:
                images = spec
            elif {name: c for name, (c, _) in spec.items()} != {
                name: c for name, (c, _) in images.items()
            }:
                raise SubjectError(
                    f"subjects[{index}]: {subject.describe()} has images"
                    f" {_describe_spec(spec)} but subjects[0] has {_describe_spec(images)}."
                    " Every subject needs the same images with the same channels to be batched."
                )
            else:
                images = {
                    name: (channels, torch.promote_types(dtype, spec[name][1]))
                    for name, (channels, dtype) in images.items()
                }
            limit = self.sampler.max_patches(shape)
            counts.append(
                self.patches_per_volume if limit is None else min(self.patches_per_volume, limit)
            )
        layout = SlotLayout.build(self.sampler.patch_size, images, self.max_length)
        return counts, layout

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
            totals = sharded.patch_totals(sampler_epoch, self._patch_counts)
            target = common_patch_total(totals, self.equalize)
        return make_epoch_plan(
            epoch, order, self._patch_counts, self.seed, self.shuffle_patches, target
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

    def _start_engine(self, plan: EpochPlan) -> Coordinator:
        if self._coordinator is None:
            self._preflight()  # memory may have gone since construction, e.g. to another queue
            self._coordinator = Coordinator(
                self._pipeline,
                self.layout,
                self.num_workers,
                self._context,
                self.backend,
                self.deterministic,
                self.timeout,
            )
        # The next epoch can be prefetched only if its order is ours to know in advance.
        sharded = predictable_sampler(self.subject_sampler)
        predictable = self.subject_sampler is None or sharded is not None
        upcoming = self._plan(self._epoch, upcoming=True) if predictable else None
        self._guarded(self._coordinator.start_epoch, plan, upcoming)
        return self._coordinator

    def _guarded(self, call: Any, *args: Any) -> Any:
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
        if self._coordinator is not None:
            self._coordinator.close()

    def _in_process_patches(self, plan: EpochPlan) -> Iterator[Subject]:
        stats = self._in_process_stats
        patches: dict[tuple[int, int], Subject] = {}  # (position, patch): buffered, not yielded
        for event in mixing_schedule(plan.tasks, self.max_length, plan.mixing_seed):
            if isinstance(event, Admit):
                task = plan.tasks[event.position]
                started = time.perf_counter()
                try:
                    subject, locations = self._pipeline.run(task)
                except Exception as error:
                    description = self.subjects[task.subject_index].describe(task.subject_index)
                    raise SubjectProcessingError(
                        f"Processing {description} in epoch {task.epoch} failed in the training"
                        f" process: {type(error).__name__}: {error}"
                    ) from error
                for number, location in enumerate(locations):
                    patches[event.position, number] = self._with_layout_dtypes(
                        extract_patch(subject, location)
                    )
                del subject  # hold one subject at a time, not the last one while loading the next
                elapsed = time.perf_counter() - started
                stats.subject_seconds.setdefault(0, []).append(elapsed)
                stats.consumer_wait_seconds += elapsed
                stats.patches_produced += len(locations)
                stats.ready += len(locations)
                continue
            patch = patches.pop((event.position, event.patch))
            stats.patches_consumed += 1
            stats.ready -= 1
            yield patch

    def _with_layout_dtypes(self, patch: Subject) -> Subject:
        """The patch in the ring's dtypes, as a worker's copy into a slot casts it (the pipeline
        has checked that the images fit: a dtype the ring's holds, or a float rounded)."""
        for field in self.layout.fields:
            image = patch[field.name]
            if image.data.dtype != field.dtype:
                patch[field.name] = image.with_data(image.data.to(field.dtype))
        return patch

    def _slot_location(self, taken: TakenPatch) -> PatchLocation:
        assert self._coordinator is not None
        row = self._coordinator.ring.metadata[taken.slot]
        expected = (taken.task.epoch, taken.task.position, taken.task.subject_index, taken.patch)
        found = tuple(int(value) for value in row[: MetadataField.INDEX_I])
        if found != expected:
            raise RuntimeError(f"slot {taken.slot} holds {found}, expected {expected}")
        index = tuple(int(value) for value in row[MetadataField.INDEX_I :])
        return PatchLocation((index[0], index[1], index[2]), self.layout.patch_size)

    def _patch_from_slot(self, taken: TakenPatch) -> Subject:
        assert self._coordinator is not None
        location = self._slot_location(taken)
        subject = self.subjects[taken.task.subject_index]
        images = {
            field.name: subject[field.name].as_patch(
                _copy_out(self._coordinator.ring.patches[field.name][taken.slot]),
                location.index,
                taken.state.affines[field.name],
            )
            for field in self.layout.fields
        }
        metadata = taken.state.metadata(subject)
        return Subject({**metadata, **images, PATCH_LOCATION_KEY: location})


class _BatchBuilder:
    """Fills batch tensors row by row, straight from ring slots (the one copy per patch)."""

    def __init__(self, queue: Queue, ring: RingView, batch_size: int, pin: bool) -> None:
        self.queue = queue
        self.ring = ring
        self.layout = queue.layout
        fields = self.layout.fields
        shapes = {field: (batch_size, *self.layout.patch_shape(field)) for field in fields}
        self.data = {
            field.name: torch.empty(shape, dtype=field.dtype, pin_memory=True)
            if pin
            else queue._batch_volumes.empty(shape, field.dtype)
            for field, shape in shapes.items()
        }
        self.taken: list[TakenPatch] = []
        self.locations: list[PatchLocation] = []

    def add(self, taken: TakenPatch) -> None:
        row = len(self.taken)
        for name, stacked in self.data.items():
            # numpy copies in this thread (see _copy_out)
            np.copyto(stacked[row].numpy(), self.ring.patches[name][taken.slot].numpy())
        self.locations.append(self.queue._slot_location(taken))
        self.taken.append(taken)

    def build(self) -> Batch:
        count = len(self.taken)
        names = list(self.data)
        sources = [self.queue.subjects[taken.task.subject_index] for taken in self.taken]
        return Batch.build(
            data={name: stacked[:count] for name, stacked in self.data.items()},
            affines={
                name: [
                    shift_affine(taken.state.affines[name], location.index)
                    for taken, location in zip(self.taken, self.locations)
                ]
                for name in names
            },
            paths={name: [source[name].path for source in sources] for name in names},
            metadata=[taken.state.metadata(source) for taken, source in zip(self.taken, sources)],
            locations=self.locations,
        )


def _copy_out(patch: torch.Tensor) -> torch.Tensor:
    """A copy of a slot's patch. numpy copies in this thread; torch would split a patch copy
    across its intra-op threads, which stalls the training process while workers use the cores.
    """
    return torch.from_numpy(patch.numpy().copy())


def _describe_spec(spec: dict[str, tuple[int, torch.dtype]]) -> str:
    return "{" + ", ".join(f"{name}: {c} channel(s)" for name, (c, _) in spec.items()) + "}"


_pin_warned = False


def _can_pin() -> bool:
    global _pin_warned
    if torch.cuda.is_available():
        return True
    if not _pin_warned:
        warnings.warn(
            "pin_memory=True but no GPU is available: batches are not pinned", stacklevel=3
        )
        _pin_warned = True
    return False


def _pinned(batch: Batch, pin_memory: bool) -> Batch:
    if not (pin_memory and _can_pin()):
        return batch
    for value in batch.values():
        if isinstance(value, dict) and "data" in value:
            value["data"] = value["data"].pin_memory()
    return batch
