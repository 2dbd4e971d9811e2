"""Estimating a queue configuration's memory: the terms of :class:`MemoryEstimate`.

:func:`estimate_memory` reads the subjects' headers into a :class:`~shmqueue.catalog.Catalog`
(a queue passes its own to :func:`estimate_catalog`), takes the ring's size from the catalog's
:class:`~shmqueue.engine.layout.SlotLayout`, the one the engine allocates (so the two cannot
disagree), one worker's peak from the per-worker model (:mod:`shmqueue.memory.worker_model`,
which asks the transform and the sampler) or a measurement (:mod:`shmqueue.memory.measure`),
and adds the training loop's batches and the training process itself. No voxel is read unless
``measure=True``, or unless a deterministic step cannot describe its output: then the first
subject is probed once (:mod:`shmqueue.probe`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from multiprocessing.context import BaseContext

import torch

from ..arguments import check_count
from ..cache import VolumeCache
from ..catalog import Catalog
from ..engine.backends import resolve_context
from ..engine.layout import SlotLayout
from ..image import PathLike
from ..sampling.base import PatchSampler
from ..sampling.uniform import UniformSampler
from ..subject import Subject
from ..transforms import SubjectTransform
from ..volumes import SMALLEST_POOLED
from .breakdown import ConsumerMemory, CoordinatorMemory, MemoryEstimate, WorkerPeak
from .constants import (
    FORK_COPY_ON_WRITE,
    FORK_WORKER_BASELINE,
    HEAP_BLOCK_LIMIT,
    IMAGE_OBJECT_BYTES,
    PATCH_OBJECT_BYTES,
    PROCESS_BASELINE,
    RESOURCE_TRACKER,
    RETAINED_BATCHES,
    SHARED_LIBRARIES,
    SUBJECT_PLAN_BYTES,
)
from .measure import MEASURED_SUBJECTS, measure_pipeline
from .worker_model import Moment, peak_subject


def estimate_memory(
    subjects: Sequence[Subject],
    patch_size_or_sampler: int | Sequence[int] | PatchSampler,
    max_length: int = 300,
    num_workers: int = 0,
    batch_size: int = 16,
    transform: SubjectTransform | None = None,
    ranks_per_node: int = 1,
    pin_memory: bool = False,
    patches_per_volume: int = 10,
    measure: bool = False,
    images: Mapping[str, tuple[int, torch.dtype]] | None = None,
    multiprocessing_context: str | BaseContext | None = None,
    patch_evaluation: bool = True,
    cache_dir: PathLike | VolumeCache | None = None,
) -> MemoryEstimate:
    """Estimate a queue configuration's memory, term by term, from the images' headers.

    The estimate covers the whole process tree: the ring (exactly what the engine allocates),
    every worker at its peak (process baseline, its copy of the subject list, and for the most
    expensive subject its raw and loaded volumes, decompression buffers, transform and sampler
    working memory), the training loop's batches, and the training process itself. No voxel is
    read (unless ``measure=True``, or a deterministic step cannot describe its output and the
    first subject is probed once: :mod:`shmqueue.probe`), so it takes about a millisecond per
    file.

    Args:
        subjects: the subjects, as given to :class:`~shmqueue.Queue`.
        patch_size_or_sampler: the queue's patch sampler, or a patch size (an int or three) for
            a :class:`~shmqueue.UniformSampler`.
        max_length: the buffer's capacity in patches.
        num_workers: worker processes (0: everything runs in the training process).
        batch_size: the loader's batch size.
        transform: the queue's transform.
        ranks_per_node: training processes per machine (distributed training), each with its own
            queue, workers and ring.
        pin_memory: whether the loader pins batches.
        patches_per_volume: patches drawn per subject (``measure=True`` draws as many).
        measure: run load + transform + sample on the largest few subjects in a fresh process and
            use its measured peak for the per-worker data terms instead of the model. Takes
            seconds and reads those subjects' voxels.
        images: the ring's images as ``{name: (channels, dtype)}``, as a queue's layout holds
            them; derived from the subjects' headers and the transform when omitted.
        multiprocessing_context: the queue's start method (``"fork"``, ``"spawn"``,
            ``"forkserver"``) or context; the platform's default when omitted. Spawned workers
            import torch themselves; forked ones share the training process's pages.
        patch_evaluation: as the queue's: the trailing augmentations are computed at the
            patches (and, for an image the sampler reads whole, slab by slab) instead of making
            new volumes.
        cache_dir: the queue's ``cache_dir``, if any: the estimate then predicts the disk its
            entries take (:attr:`MemoryEstimate.cache_disk`); the memory terms are those of the
            first epoch, which fills it.

    Returns:
        The :class:`MemoryEstimate`; ``print()`` it for a table.

    Raises:
        ValueError: an argument is out of range, or there are no subjects.
        SubjectError: a subject's images disagree or differ from the first subject's (the
            message names the subject); :class:`~shmqueue.PatchSizeError` if the patch does not
            fit a subject.
        ImageFileError: a header cannot be read (the message names the file).
        WorkerDiedError: with ``measure=True``, the measuring process died (e.g. killed for lack
            of memory: one subject alone does not fit).

    Example:
        >>> import torch, shmqueue as sq
        >>> subjects = [sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 64, 64, 64)))] * 8
        >>> estimate = sq.estimate_memory(subjects, 32, max_length=40, num_workers=2,
        ...                               patches_per_volume=5, multiprocessing_context="fork")
        >>> estimate.ring == estimate.layout.ring_bytes >= 40 * 32**3 * 4
        True
        >>> estimate.total_per_rank == (estimate.ring + 2 * estimate.worker.total
        ...                             + estimate.consumer.total + estimate.coordinator.total)
        True
    """
    for name, value in (
        ("max_length", max_length),
        ("batch_size", batch_size),
        ("ranks_per_node", ranks_per_node),
        ("patches_per_volume", patches_per_volume),
    ):
        check_count(name, value)
    check_count("num_workers", num_workers, minimum=0)
    if len(subjects) == 0:
        raise ValueError("estimate_memory needs at least one subject")
    sampler = (
        patch_size_or_sampler
        if isinstance(patch_size_or_sampler, PatchSampler)
        else UniformSampler(None, patch_size_or_sampler)
    )
    catalog = Catalog.build(subjects, sampler, max_length, patches_per_volume, transform)
    if images is not None:
        layout = SlotLayout.build(sampler.patch_size, dict(images), max_length)
        catalog = dataclasses.replace(catalog, layout=layout)
    return estimate_catalog(
        catalog,
        subjects,
        sampler,
        transform,
        num_workers=num_workers,
        batch_size=batch_size,
        ranks_per_node=ranks_per_node,
        pin_memory=pin_memory,
        measure=measure,
        multiprocessing_context=multiprocessing_context,
        patch_evaluation=patch_evaluation,
        cached=cache_dir is not None,
    )


def estimate_catalog(
    catalog: Catalog,
    subjects: Sequence[Subject],
    sampler: PatchSampler,
    transform: SubjectTransform | None,
    *,
    num_workers: int,
    batch_size: int,
    ranks_per_node: int,
    pin_memory: bool,
    measure: bool,
    multiprocessing_context: str | BaseContext | None,
    patch_evaluation: bool = True,
    cached: bool = False,
) -> MemoryEstimate:
    """The estimate of :func:`estimate_memory` for subjects already read into ``catalog``
    (with the catalog's ``max_length`` and ``patches_per_volume``): what a queue asks of it."""
    start_method = resolve_context(multiprocessing_context).get_start_method()
    layout = catalog.layout
    images = [image for subject in catalog.subjects for image in subject.images]
    in_memory = sum(image.loaded_bytes for image in images if image.in_memory)
    image_objects = len(images) * IMAGE_OBJECT_BYTES
    forked = start_method == "fork"
    if num_workers == 0:
        baseline = subject_list = 0
    else:
        # Forkserver workers fork from a server that may not have imported torch: count them
        # as spawned.
        baseline = FORK_WORKER_BASELINE if forked else PROCESS_BASELINE
        subject_list = image_objects + (0 if forked else in_memory)
    if measure:
        data = Moment("measured")
        measured = measure_pipeline(subjects, catalog, transform, sampler, start_method)
        peak_description = f"the largest {min(MEASURED_SUBJECTS, len(subjects))} subject(s)"
    else:
        peak_index, data = peak_subject(catalog, transform, sampler, patch_evaluation)
        measured = 0
        peak_description = catalog.subjects[peak_index].description
    worker = WorkerPeak(
        baseline=baseline,
        subject_list=subject_list,
        raw=data.raw,
        decompression=data.decompression,
        loaded=data.loaded,
        conversion=data.conversion,
        transform=data.transform,
        sampler=data.sampler,
        allocator=data.allocator,
        measured=measured,
        subject=peak_description,
        phase=data.phase,
    )
    helpers = 0
    if num_workers and not forked:
        helpers = RESOURCE_TRACKER + (PROCESS_BASELINE if start_method == "forkserver" else 0)
    coordinator = CoordinatorMemory(
        baseline=PROCESS_BASELINE,
        shared_libraries=SHARED_LIBRARIES,
        helpers=helpers,
        copy_on_write=FORK_COPY_ON_WRITE if num_workers and forked else 0,
        subjects=image_objects + in_memory + len(catalog.subjects) * SUBJECT_PLAN_BYTES,
    )
    return MemoryEstimate(
        ring=layout.ring_bytes if num_workers else 0,
        worker=worker,
        consumer=_consumer(catalog, num_workers, batch_size, pin_memory),
        coordinator=coordinator,
        layout=layout,
        num_subjects=len(catalog.subjects),
        patches_per_volume=catalog.patches_per_volume,
        num_workers=num_workers,
        batch_size=batch_size,
        ranks_per_node=ranks_per_node,
        pin_memory=pin_memory,
        start_method=start_method,
        cache_disk=_cache_disk(catalog) if cached else 0,
    )


NPY_HEADER = 128
"""Bytes of a ``.npy`` array's header, as the cache writes one per image."""


def _cache_disk(catalog: Catalog) -> int:
    """The bytes of the cache's entries: each subject's images as the transform's deterministic
    steps make them (what the cache stores), a ``.npy`` header each."""
    return sum(
        spec.nbytes + NPY_HEADER
        for subject in catalog.subjects
        for spec in subject.transformed.values()
    )


def _consumer(
    catalog: Catalog, num_workers: int, batch_size: int, pin_memory: bool
) -> ConsumerMemory:
    """The training loop's batches, and without workers the buffered patch Subjects."""
    layout = catalog.layout
    patch_bytes = sum(field.nbytes for field in layout.fields)
    batch_bytes = batch_size * patch_bytes
    pinned = 2 * _next_power_of_two(batch_bytes) if pin_memory else 0
    if num_workers:
        # The engine fills batches straight from the ring, into pinned memory if asked, else into
        # the queue's volume pool: one freed batch waits there for the next, outside the heap.
        pageable = 0 if pin_memory else 2 * batch_bytes
        freed = sum(
            size if size >= SMALLEST_POOLED else RETAINED_BATCHES * size
            for size in (batch_size * field.nbytes for field in layout.fields)
        )
        return ConsumerMemory(pageable, pinned, 0 if pin_memory else freed, 0)
    heap_batch = sum(
        batch_size * field.nbytes
        for field in layout.fields
        if batch_size * field.nbytes < HEAP_BLOCK_LIMIT
    )
    patch_objects = len(layout.fields) * PATCH_OBJECT_BYTES
    held = min(layout.max_length, sum(catalog.patch_counts)) + batch_size
    buffered = held * (patch_bytes + patch_objects)
    return ConsumerMemory(2 * batch_bytes, pinned, RETAINED_BATCHES * heap_batch, buffered)


def _next_power_of_two(size: int) -> int:
    return 1 << max(0, size - 1).bit_length()
