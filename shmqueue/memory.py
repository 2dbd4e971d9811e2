"""Memory estimation: what a queue configuration costs, term by term, before anything runs.

TorchIO estimates a queue as ``4 B x channels x patch voxels x max_length``. The real peak also
holds the subjects in flight in the workers (raw and converted volumes, decompression buffers,
transform intermediates), the batches, and an interpreter with torch per process. This module
models all of them from the images' headers alone (no voxel is read), takes the ring's size from
the same :class:`~shmqueue.engine.layout.SlotLayout` the engine allocates (so the two cannot
disagree), and checks a plan against the machine before anything is allocated (:func:`preflight`;
contract 9 of DESIGN.md).

What is counted is the memory of the whole process tree, each page once: the anonymous memory of
the training process and of every worker, the shared libraries' pages once, and the ring.

The per-process constants below were measured on the reference machine (Linux 6.18, x86-64,
Python 3.11.7, torch 2.13.0+cpu, numpy 2.4.6, nibabel 5.4.2) by ``benchmarks/memory_accuracy.py``,
which also checks the whole model against measured peaks. On another stack, ``measure=True``
replaces the per-worker data model with a measurement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.context import BaseContext
from typing import Any

import torch

from .arguments import check_count
from .engine.backends import resolve_backend, resolve_context
from .engine.layout import SlotLayout
from .errors import ImageFileError, InvalidImageError, MemoryBudgetError, SubjectError
from .machine import MemoryCapacity, memory_capacity
from .sampling.base import PatchSampler
from .sampling.uniform import UniformSampler
from .subject import Subject
from .subject_memory import (
    HEAP_BLOCK_LIMIT,
    MEASURED_SUBJECTS,
    ImageInfo,
    Moment,
    image_info,
    measure_pipeline,
    peak_subject,
    total_bytes,
)
from .transforms import SubjectTransform
from .units import pretty_bytes
from .volumes import SMALLEST_POOLED

MiB = 2**20

# Constants, measured as the module docstring says ------------------------------------------------

PROCESS_BASELINE = 155 * MiB
"""Anonymous memory of an interpreter that imported shmqueue (torch, numpy, nibabel) and has run
the pipeline: a spawned worker, or the training process, besides the data it holds. Measured
149-150 MiB idle, 155-157 MiB once it has loaded and transformed subjects."""

SHARED_LIBRARIES = 88 * MiB
"""Resident pages of the shared libraries (libtorch and the rest), counted once per rank: every
process of the tree maps the same pages. Measured 83-87 MiB."""

FORK_WORKER_BASELINE = 8 * MiB
"""What a forked worker adds: its own small allocations and the inherited pages it writes to.
Measured 5.4 MiB per worker."""

FORK_COPY_ON_WRITE = 42 * MiB
"""Under fork, pages the training process and its workers shared that one of them rewrites: a
full garbage collection in the training process rewrites every page holding Python objects
(measured: 42 MiB copied), once per rank. A worker that made a full collection itself would copy
as much again; its short-lived objects make that rare (``gc.freeze()`` before forking would rule
it out)."""

RESOURCE_TRACKER = 7 * MiB
"""multiprocessing's resource tracker, which the spawn and forkserver start methods start.
Measured 6.3 MiB."""

IMAGE_OBJECT_BYTES = 2048
"""An Image object with its cached header (path, affine, dtype), in a process's subject list."""

SUBJECT_PLAN_BYTES = 1024
"""Bookkeeping per subject in the training process: the current and next epoch's tasks."""

PATCH_OBJECT_BYTES = 4096
"""A patch image's objects besides its voxels (in-process path): Image, affine, location."""

RETAINED_BATCHES = 6
"""Freed batches the training process's heap keeps, beyond the two alive. glibc serves blocks
under its mmap threshold (which rises to 32 MiB after the first large free) from its heap, where
small allocations made between batches split the holes that freed batches leave. With a training
step that allocates little on the CPU the heap kept 2.5 to 4.5 batches (benchmark configurations);
6 leaves a margin. A step that allocates many small objects between batches can make it keep
more: up to 11 batches were measured over six epochs with a loop that parsed text each batch."""


# The estimate ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerPeak:
    """Peak memory of one worker, while it processes its most expensive subject.

    The terms are what is alive at that moment and add up to :attr:`total`. A worker processes
    one subject at a time, and the tasks queued to it are messages: prefetching costs nothing.
    For ``num_workers=0`` the pipeline runs in the training process, which already holds the
    baseline and the subject list (both 0 here).

    Attributes:
        baseline: the process itself (interpreter, torch, numpy, nibabel), by start method.
        subject_list: the worker's copy of the subject list (paths and headers; also the voxels
            of in-memory images, except under fork, where they stay shared).
        raw: volumes in their stored dtype: the inflated bytes of a ``.nii.gz``, the memory map
            of a ``.nii``, or nibabel's read buffer for other formats.
        decompression: the pieces in flight (1 MiB read, 1 MiB inflated) while a ``.nii.gz`` is
            inflated.
        loaded: volumes in their loaded dtype (float32 for scalar images, the label dtype).
        conversion: temporaries of intensity scaling (``scl_slope``/``scl_inter``) and of
            checking that float label maps hold whole numbers.
        transform: transform intermediates (e.g. Noise allocates one float32 volume per scalar
            image, Flip one copy of every image); a step's input is freed when it returns.
        sampler: the sampler's working memory (probability maps, padding).
        allocator: memory the process keeps for reuse: while it loads, the last subject's
            volumes in the volume pool (:mod:`shmqueue.volumes`); while the transform and sampler
            run, loading's temporaries in the heap (blocks under 32 MiB, given back before the
            next subject).
        measured: with ``measure=True``, the measured peak above the process baseline, which
            replaces the modelled terms ``raw`` to ``allocator`` (then 0).
        subject: the subject that gives the peak.
        phase: what the worker is doing at the peak.
    """

    baseline: int
    subject_list: int
    raw: int
    decompression: int
    loaded: int
    conversion: int
    transform: int
    sampler: int
    allocator: int
    measured: int
    subject: str
    phase: str

    @property
    def total(self) -> int:
        """Bytes of one worker at its peak."""
        return total_bytes(self)


@dataclass(frozen=True)
class ConsumerMemory:
    """What the training loop's side holds.

    Attributes:
        batches: batch tensors alive at once: the one the training step holds and the one being
            filled (the loader prepares nothing further ahead).
        pinned: page-locked batches for ``pin_memory`` (CUDA's host allocator rounds each up to a
            power of two and caches it).
        allocator: freed batches kept for reuse: with workers, one per image in the queue's
            volume pool (:mod:`shmqueue.volumes`; batches under 1 MiB come from the heap, which
            keeps :data:`RETAINED_BATCHES`); in-process, :data:`RETAINED_BATCHES` that the heap
            keeps (only batch tensors under 32 MiB, which glibc serves from its heap).
        buffered_patches: ``num_workers=0`` only: the patch Subjects of the buffer (up to
            ``max_length``, or the epoch's patches if fewer) and of the batch being assembled.
            With workers they are in the ring.
    """

    batches: int
    pinned: int
    allocator: int
    buffered_patches: int

    @property
    def total(self) -> int:
        return total_bytes(self)


@dataclass(frozen=True)
class CoordinatorMemory:
    """The training process's own share, besides the consumer's.

    Attributes:
        baseline: the interpreter with torch, numpy, nibabel and shmqueue.
        shared_libraries: the libraries' resident pages, shared by every process (counted once).
        helpers: multiprocessing's helper processes: the resource tracker (spawn, forkserver)
            and the fork server, which imports the main module (forkserver).
        copy_on_write: under fork, shared pages that get copied when rewritten
            (:data:`FORK_COPY_ON_WRITE`).
        subjects: the subject list with its cached headers, the voxels of in-memory images,
            and the epoch plans.
    """

    baseline: int
    shared_libraries: int
    helpers: int
    copy_on_write: int
    subjects: int

    @property
    def total(self) -> int:
        return total_bytes(self)


@dataclass(frozen=True)
class MemoryEstimate:
    """A queue configuration's memory, term by term; ``str()`` is a table, ``to_dict()`` JSON.

    ``total_per_rank = ring + pipelines x worker.total + consumer.total + coordinator.total``,
    where ``pipelines`` is ``num_workers`` (1 for the in-process path); ``total_per_node`` is
    ``ranks_per_node x total_per_rank``.

    Attributes:
        ring: bytes of the shared-memory ring, exactly what the engine allocates
            (``layout.ring_bytes``; 0 for ``num_workers=0``, which has no ring).
        worker: one worker's peak (:class:`WorkerPeak`).
        consumer: batches and the in-process buffer (:class:`ConsumerMemory`).
        coordinator: the training process's own share (:class:`CoordinatorMemory`).
        layout: the ring's slot layout (patch size, images, ``max_length``).
        num_subjects, patches_per_volume, num_workers, batch_size, ranks_per_node, pin_memory,
        start_method: the configuration.
    """

    ring: int
    worker: WorkerPeak
    consumer: ConsumerMemory
    coordinator: CoordinatorMemory
    layout: SlotLayout
    num_subjects: int
    patches_per_volume: int
    num_workers: int
    batch_size: int
    ranks_per_node: int
    pin_memory: bool
    start_method: str

    @property
    def max_length(self) -> int:
        return self.layout.max_length

    @property
    def pipelines(self) -> int:
        """Processes running the subject pipeline: the workers, or the training process."""
        return max(self.num_workers, 1)

    @property
    def workers(self) -> int:
        """Bytes of all workers (or of the in-process pipeline) at their peaks."""
        return self.pipelines * self.worker.total

    @property
    def total_per_rank(self) -> int:
        """Bytes of one training process with its workers and ring."""
        return self.ring + self.workers + self.consumer.total + self.coordinator.total

    @property
    def total_per_node(self) -> int:
        """Bytes of ``ranks_per_node`` training processes, each with its workers and ring."""
        return self.ranks_per_node * self.total_per_rank

    def to_dict(self) -> dict[str, Any]:
        """The estimate as a JSON-serialisable dict (sizes in bytes), totals included."""
        return {
            "config": {
                "num_subjects": self.num_subjects,
                "patch_size": list(self.layout.patch_size),
                "images": {
                    field.name: {"channels": field.channels, "dtype": str(field.dtype)}
                    for field in self.layout.fields
                },
                "max_length": self.max_length,
                "slot_bytes": self.layout.slot_bytes,
                "patches_per_volume": self.patches_per_volume,
                "num_workers": self.num_workers,
                "batch_size": self.batch_size,
                "ranks_per_node": self.ranks_per_node,
                "pin_memory": self.pin_memory,
                "start_method": self.start_method,
            },
            "ring": self.ring,
            "worker": {**dataclasses.asdict(self.worker), "total": self.worker.total},
            "workers": self.workers,
            "consumer": {**dataclasses.asdict(self.consumer), "total": self.consumer.total},
            "coordinator": {
                **dataclasses.asdict(self.coordinator),
                "total": self.coordinator.total,
            },
            "total_per_rank": self.total_per_rank,
            "total_per_node": self.total_per_node,
        }

    def __str__(self) -> str:
        return "\n".join(_table(self))


def _table(estimate: MemoryEstimate) -> Iterator[str]:
    """The lines of ``str(estimate)``: one row per term, details indented under their total."""
    patch = "x".join(map(str, estimate.layout.patch_size))
    if estimate.num_workers:
        running = f"{estimate.num_workers} worker(s) ({estimate.start_method})"
    else:
        running = "no workers (in-process)"
    yield (
        f"Memory estimate: {estimate.num_subjects} subject(s), patch {patch}, max_length"
        f" {estimate.max_length}, {running}, batch {estimate.batch_size}"
    )

    def row(label: str, size: int, indent: int = 2) -> str:
        return f"{' ' * indent}{label:<{60 - indent}}{pretty_bytes(size):>12}"

    def details(terms: Sequence[tuple[str, int]]) -> Iterator[str]:
        return (row(label, size, 6) for label, size in terms if size)

    layout = estimate.layout
    if estimate.num_workers:
        slots = f"{layout.max_length} slots x {pretty_bytes(layout.slot_bytes)}"
        yield row(f"ring of patch slots ({slots})", estimate.ring)
    worker = estimate.worker
    where = "per worker" if estimate.num_workers else "subject pipeline"
    yield row(f"{where}, at its peak: {worker.phase}", worker.total)
    yield from details(
        [
            ("process baseline", worker.baseline),
            ("subject list", worker.subject_list),
            ("raw volumes (read buffer + reordered copy)", worker.raw),
            ("decompression (.nii.gz)", worker.decompression),
            ("loaded volumes (float32 / label dtype)", worker.loaded),
            ("intensity scaling / label checks", worker.conversion),
            ("transform intermediates", worker.transform),
            ("sampler (probability map, padding)", worker.sampler),
            ("memory kept for reuse (volume pool, heap)", worker.allocator),
            ("measured peak of load + transform + sample", worker.measured),
        ]
    )
    yield f"      of {worker.subject}"
    if estimate.num_workers:
        yield "      prefetched subjects: none (tasks queued to a worker are messages)"
        yield row(f"{estimate.num_workers} worker(s)", estimate.workers)
    yield row("training loop", estimate.consumer.total)
    yield from details(
        [
            (f"batches (2 x {estimate.batch_size} patches)", estimate.consumer.batches),
            ("pinned batches (pin_memory)", estimate.consumer.pinned),
            ("freed batches the heap keeps", estimate.consumer.allocator),
            ("patch Subjects (buffer + batch)", estimate.consumer.buffered_patches),
        ]
    )
    coordinator = estimate.coordinator
    yield row("training process", coordinator.total)
    yield from details(
        [
            ("process baseline", coordinator.baseline),
            ("shared libraries (once for all processes)", coordinator.shared_libraries),
            ("multiprocessing helpers", coordinator.helpers),
            ("pages shared with forked workers, copied on write", coordinator.copy_on_write),
            ("subjects, headers, epoch plans", coordinator.subjects),
        ]
    )
    yield "  " + "-" * 70
    yield row("total per rank", estimate.total_per_rank)
    if estimate.ranks_per_node > 1:
        yield row(f"total per node ({estimate.ranks_per_node} ranks)", estimate.total_per_node)


def _layout_images(subjects: Sequence[Subject]) -> dict[str, tuple[int, torch.dtype]]:
    """The ring's images as the queue lays them out: the first subject's, dtypes promoted."""
    images = {name: (image.num_channels, image.dtype) for name, image in subjects[0].images.items()}
    for index, subject in enumerate(subjects):
        found = {name: image.num_channels for name, image in subject.images.items()}
        if found != {name: channels for name, (channels, _) in images.items()}:
            raise SubjectError(
                f"subjects[{index}]: {subject.describe()} does not have the images of subjects[0]"
                f" ({', '.join(images)}) with the same channels. Every subject needs the same"
                " images to be batched."
            )
        for name, image in subject.images.items():
            channels, dtype = images[name]
            images[name] = (channels, torch.promote_types(dtype, image.dtype))
    return images


# Estimation -----------------------------------------------------------------------------------


def _next_power_of_two(size: int) -> int:
    return 1 << max(0, size - 1).bit_length()


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
) -> MemoryEstimate:
    """Estimate a queue configuration's memory, term by term, from the images' headers.

    The estimate covers the whole process tree: the ring (exactly what the engine allocates),
    every worker at its peak (process baseline, its copy of the subject list, and for the most
    expensive subject its raw and loaded volumes, decompression buffers, transform and sampler
    working memory), the training loop's batches, and the training process itself. No voxel is
    read (unless ``measure=True``), so it takes about a millisecond per file.

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
            them; derived from the subjects' headers when omitted.
        multiprocessing_context: the queue's start method (``"fork"``, ``"spawn"``,
            ``"forkserver"``) or context; the platform's default when omitted. Spawned workers
            import torch themselves; forked ones share the training process's pages.

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
    start_method = resolve_context(multiprocessing_context).get_start_method()

    infos: list[tuple[ImageInfo, ...]] = []
    for index, subject in enumerate(subjects):
        if not isinstance(subject, Subject):
            raise TypeError(f"subjects[{index}] is a {type(subject).__name__}, not a Subject")
        try:
            sampler.check_fits(subject)  # reads the headers; checks that the images agree
            infos.append(tuple(image_info(name, image) for name, image in subject.images.items()))
        except (SubjectError, ImageFileError, InvalidImageError) as error:
            raise type(error)(f"subjects[{index}]: {error}") from error
    layout = SlotLayout.build(
        sampler.patch_size,
        dict(images) if images is not None else _layout_images(subjects),
        max_length,
    )

    peak_index, peak = peak_subject(subjects, infos, transform, sampler)
    in_memory = sum(info.loaded_bytes for row in infos for info in row if info.in_memory)
    image_objects = sum(len(row) for row in infos) * IMAGE_OBJECT_BYTES
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
        measured = measure_pipeline(
            subjects, infos, transform, sampler, layout.images, patches_per_volume, start_method
        )
        peak_description = f"the largest {min(MEASURED_SUBJECTS, len(subjects))} subject(s)"
    else:
        data, measured = peak, 0
        peak_description = subjects[peak_index].describe(peak_index)
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

    patch_bytes = sum(field.nbytes for field in layout.fields)
    batch_bytes = batch_size * patch_bytes
    pinned = 2 * _next_power_of_two(batch_bytes) if pin_memory else 0
    heap_batch = sum(
        batch_size * field.nbytes
        for field in layout.fields
        if batch_size * field.nbytes < HEAP_BLOCK_LIMIT
    )
    if num_workers:
        # The engine fills batches straight from the ring, into pinned memory if asked, else into
        # the queue's volume pool: one freed batch waits there for the next, outside the heap.
        pageable = 0 if pin_memory else 2 * batch_bytes
        freed = sum(
            size if size >= SMALLEST_POOLED else RETAINED_BATCHES * size
            for size in (batch_size * field.nbytes for field in layout.fields)
        )
        consumer = ConsumerMemory(pageable, pinned, 0 if pin_memory else freed, 0)
    else:
        epoch_patches = sum(
            patches_per_volume if limit is None else min(patches_per_volume, limit)
            for limit in (sampler.max_patches(subject.spatial_shape) for subject in subjects)
        )
        patch_objects = len(layout.fields) * PATCH_OBJECT_BYTES
        held = min(max_length, epoch_patches) + batch_size
        buffered = held * (patch_bytes + patch_objects)
        consumer = ConsumerMemory(2 * batch_bytes, pinned, RETAINED_BATCHES * heap_batch, buffered)
    helpers = 0
    if num_workers and not forked:
        helpers = RESOURCE_TRACKER + (PROCESS_BASELINE if start_method == "forkserver" else 0)
    coordinator = CoordinatorMemory(
        baseline=PROCESS_BASELINE,
        shared_libraries=SHARED_LIBRARIES,
        helpers=helpers,
        copy_on_write=FORK_COPY_ON_WRITE if num_workers and forked else 0,
        subjects=image_objects + in_memory + len(subjects) * SUBJECT_PLAN_BYTES,
    )
    return MemoryEstimate(
        ring=layout.ring_bytes if num_workers else 0,
        worker=worker,
        consumer=consumer,
        coordinator=coordinator,
        layout=layout,
        num_subjects=len(subjects),
        patches_per_volume=patches_per_volume,
        num_workers=num_workers,
        batch_size=batch_size,
        ranks_per_node=ranks_per_node,
        pin_memory=pin_memory,
        start_method=start_method,
    )


# Preflight ------------------------------------------------------------------------------------


def _largest_fitting(budget: int, upper: int, cost: Any) -> int:
    """The largest ``max_length`` in ``[0, upper]`` with ``cost(max_length) <= budget``."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def budget_problems(
    estimate: MemoryEstimate,
    backend: str = "auto",
    capacity: MemoryCapacity | None = None,
    check_ram: bool = True,
    resident: int = 0,
    per_node: bool = False,
) -> list[str]:
    """What in a plan does not fit this machine, each with what to change; empty if it fits.

    Args:
        estimate: the plan.
        backend: the ring's backend (``"auto"``, ``"memfd"``, ``"named"``).
        capacity: the machine's capacity; read now when omitted.
        check_ram: also compare the total with the available memory. The ring is always checked
            against its backend's capacity, which cannot give more than it has.
        resident: bytes of the estimate that are already allocated (the running training
            process's baseline and subjects).
        per_node: check all ``ranks_per_node`` ranks together, rather than one rank.

    Returns:
        One message per problem, naming the numbers and what to change.
    """
    capacity = capacity or memory_capacity()
    ranks = estimate.ranks_per_node if per_node else 1
    layout = estimate.layout
    problems = []

    def ring_bytes(max_length: int) -> int:
        return ranks * dataclasses.replace(layout, max_length=max_length).ring_bytes

    if estimate.num_workers:
        named = resolve_backend(backend) == "named"
        room, where = capacity.available, f"memory has {pretty_bytes(capacity.available)}"
        where += f" available ({capacity.description})"
        if named and capacity.shm_free is not None and capacity.shm_free < room:
            room, where = capacity.shm_free, f"/dev/shm has {pretty_bytes(capacity.shm_free)} free"
        if ring_bytes(layout.max_length) > room:
            fits = _largest_fitting(room, layout.max_length, ring_bytes)
            advice = (
                "In a container, raise --shm-size (e.g. docker run --shm-size=8g), or use"
                " backend='memfd' (the default on Linux), which /dev/shm's size does not bound."
                if named
                else "In a container, raise its memory limit (e.g. docker run --memory=16g)."
            )
            problems.append(
                f"The ring of patch slots needs {pretty_bytes(ring_bytes(layout.max_length))}"
                f" but {where}. Lower max_length to at most {fits} (now {layout.max_length}), or"
                f" the patch size. {advice}"
            )
    total = (estimate.total_per_node if per_node else estimate.total_per_rank) - resident
    if check_ram and total > capacity.available:
        consumer = estimate.consumer
        per_patch = sum(field.nbytes + PATCH_OBJECT_BYTES for field in layout.fields)
        buffered = consumer.buffered_patches // per_patch - estimate.batch_size  # <= max_length

        def cost(max_length: int) -> int:
            if estimate.num_workers:
                return total - ring_bytes(layout.max_length) + ring_bytes(max_length)
            return total - ranks * per_patch * (buffered - min(max_length, buffered))

        changes = []
        fits = _largest_fitting(capacity.available, layout.max_length, cost)
        if fits >= estimate.patches_per_volume:
            changes.append(f"max_length to at most {fits} (now {layout.max_length})")
        if estimate.num_workers:
            spare = capacity.available - (total - ranks * estimate.workers)
            workers = spare // (ranks * estimate.worker.total)
            if workers >= 1:
                changes.append(f"num_workers to at most {workers} (now {estimate.num_workers})")
        scope = f"{ranks} ranks" if ranks > 1 else "the queue"
        advice = (
            f"Lower {', or '.join(changes)}, or the patch size"
            if changes
            else "Even the smallest max_length and fewer workers would not fit: free memory"
        )
        # The largest subject sets every worker's peak: name it and its files, since a header
        # that claims a huge volume (or a wrong one) is where such a plan usually comes from.
        peak = (
            f" Each subject-processing process peaks at {pretty_bytes(estimate.worker.total)},"
            f" set by {estimate.worker.subject}."
        )
        problems.append(
            f"The plan needs {pretty_bytes(total)} for {scope} but"
            f" {pretty_bytes(capacity.available)} is available ({capacity.description})."
            f"{peak} {advice}; in a container, raise its memory limit."
        )
    return problems


def preflight(
    estimate: MemoryEstimate,
    backend: str = "auto",
    check_memory: bool = True,
    resident: int = 0,
    capacity: MemoryCapacity | None = None,
) -> None:
    """Raise :class:`~shmqueue.MemoryBudgetError` if a plan cannot fit, before any allocation.

    Args:
        estimate: the plan of one rank.
        backend: the ring's backend.
        check_memory: also compare the total with the available memory; ``False`` keeps only
            the ring's check against its backend's capacity.
        resident: bytes of the estimate already allocated (see :func:`budget_problems`).
        capacity: the machine's capacity; read now when omitted.

    Raises:
        MemoryBudgetError: the ring exceeds its backend's capacity, or the total the available
            memory. Its ``estimate`` attribute holds the breakdown.
    """
    problems = budget_problems(estimate, backend, capacity, check_memory, resident)
    if problems:
        if check_memory:
            problems.append(
                "If you know better (e.g. memory is about to be freed), pass check_memory=False"
                " to skip the check of the total."
            )
        raise MemoryBudgetError(" ".join(problems) + f"\n\n{estimate}", estimate=estimate)
