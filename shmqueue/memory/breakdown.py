"""The estimate and its table: a queue configuration's memory, term by term.

TorchIO estimates a queue as ``4 B x channels x patch voxels x max_length``. The real peak also
holds the subjects in flight in the workers (raw and converted volumes, decompression buffers,
transform intermediates), the batches, and an interpreter with torch per process.
:class:`MemoryEstimate` holds all of them, for the whole process tree, each page once: the
anonymous memory of the training process and of every worker, the shared libraries' pages once,
and the ring. ``str()`` renders it as a table, ``to_dict()`` as JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..engine.layout import SlotLayout
from ..units import pretty_bytes


def total_bytes(terms: Any) -> int:
    """The sum of a dataclass's integer fields: the bytes of its terms."""
    return sum(
        value
        for value in (getattr(terms, field.name) for field in dataclasses.fields(terms))
        if isinstance(value, int) and not isinstance(value, bool)
    )


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
            of a ``.nii``, or the buffer nibabel, SimpleITK or a ``reader=`` reads other formats
            into.
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
            keeps ``RETAINED_BATCHES`` of them, see :mod:`~shmqueue.memory.constants`);
            in-process, ``RETAINED_BATCHES`` that the heap keeps (only batch tensors under
            32 MiB, which glibc serves from its heap).
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
            (:data:`~shmqueue.memory.constants.FORK_COPY_ON_WRITE`).
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
        cache_disk: with a cache (``cache_dir``), the bytes its entries take on disk, predicted
            from the headers (0 without one). Disk, not memory: on later epochs the workers map
            these volumes from the page cache, file-backed and shared, where without the cache
            they load them into their own memory; the first epoch, which fills the cache, is the
            peak the terms above describe.
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
    cache_disk: int = 0

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
            "cache_disk": self.cache_disk,
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
    if estimate.cache_disk:
        yield row("cache of preprocessed subjects, on disk (not memory)", estimate.cache_disk)
