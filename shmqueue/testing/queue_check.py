"""check_queue: run epochs of a queue and verify contracts 1, 2, 3, 4 and 6 of DESIGN.md.

The oracle is the epoch's plan (:meth:`~shmqueue.Queue.plan`) replayed in this process through
:class:`~shmqueue.pipeline.SubjectPipeline`, the code the ``num_workers=0`` path runs: every
planned patch is recomputed as the region of the transformed subject at its location, in the
queue's layout dtypes. Yielded patches are matched to planned ones by content
(:mod:`shmqueue.testing.records`), so the queue needs no provenance tag and batches are checked
the same way as patch Subjects.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..batch import BatchImage
from ..image import shift_affine
from ..pipeline import SubjectPipeline
from ..plan import EpochPlan, SubjectTask, Take, mixing_schedule
from ..queue import Queue
from .checks import check_sampler, check_transform
from .records import (
    PatchKey,
    PatchRecord,
    batch_records,
    describe_affine_difference,
    describe_difference,
)
from .report import Contract, QueueReport, Report
from .ring_watch import RingWatch, storage_span

QueueFactory = Callable[[], Queue]


@dataclass
class _PlannedPatch:
    """Patch ``number`` of ``task``, as the in-process path makes it."""

    task: SubjectTask
    number: int
    record: PatchRecord
    subject: str


@dataclass
class _Unit:
    """What one step of iteration hands over: a patch or a batch, and its tensors."""

    kind: str
    records: list[PatchRecord]
    tensors: list[torch.Tensor]


def check_queue(
    queue_or_factory: Queue | QueueFactory, epochs: int = 2, *, batch_size: int | None = None
) -> QueueReport:
    """Run ``epochs`` epochs of a queue and check that it keeps its contracts.

    For each epoch, from the queue's current one on:

    * **epoch completeness (1):** every task of ``queue.plan(epoch)`` yields exactly its planned
      patches, and nothing else is yielded;
    * **fidelity (2):** each patch equals, bit for bit and for every image and dtype, the region
      of the transformed subject at the patch's location, with the subject's metadata and the
      patch's affine, as recomputed here through :class:`~shmqueue.pipeline.SubjectPipeline`;
    * **bounded buffer (3):** ``queue.stats()`` never reports more than ``max_length`` patches
      ready or in workers; the engine's ring is one mapping of ``layout.ring_bytes``, reused;
    * **slot discipline (4):** no planned patch is yielded twice; yielded tensors share storage
      neither with each other nor with the ring;
    * **reproducibility (6):** the multiset of patches is the planned one, which the
      ``num_workers=0`` path yields, whatever ``num_workers``; with ``deterministic=True`` or
      without workers, the order is the reference order of ``num_workers=0``
      (:func:`~shmqueue.plan.mixing_schedule`); running the same seed again gives the same
      patches (a second queue from the factory, or the first epoch again on a queue).

    The checker holds an epoch's patches and their recomputation in memory: use it on small
    configurations (tests), not on a full training set.

    Args:
        queue_or_factory: a :class:`~shmqueue.Queue`, or a callable returning a new one (then
            each queue is closed after use, and reproducibility is checked on a second queue
            built with the same factory). A queue passed in stays open, its epoch counter moved
            past the checked epochs.
        epochs: how many epochs to run (>= 1).
        batch_size: None iterates patch Subjects (``for patch in queue``); an int reads each
            epoch through ``queue.batches(batch_size)``, the path of
            :class:`~shmqueue.SubjectsLoader`, and checks every row.

    Returns:
        A :class:`~shmqueue.testing.QueueReport`: ``ok``, the ``failures`` (each naming the
        contract, the epoch, the subject and what differed); ``str(report)`` renders it and
        ``report.raise_for_failures()`` raises ``AssertionError`` with that text.

    Raises:
        ValueError: ``epochs`` or ``batch_size`` is not positive.
        Exception: whatever the queue or the pipeline raises (a worker's error, bad input).

    Example:
        >>> import torch, shmqueue as sq
        >>> from shmqueue.testing import check_queue
        >>> subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 12, 12, 12)), name=f"s{i}")
        ...             for i in range(3)]
        >>> report = check_queue(lambda: sq.Queue(subjects, sq.UniformSampler(None, 4),
        ...                      max_length=4, patches_per_volume=2, seed=0))
        >>> report.ok, report.patches
        (True, 12)
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be None or >= 1, got {batch_size}")
    if isinstance(queue_or_factory, Queue):
        return _check(queue_or_factory, None, epochs, batch_size)
    queue = queue_or_factory()
    try:
        return _check(queue, queue_or_factory, epochs, batch_size)
    finally:
        queue.close()


def _check(
    queue: Queue, factory: QueueFactory | None, epochs: int, batch_size: int | None
) -> QueueReport:
    report = QueueReport(target=repr(queue))
    report.checked = [str(contract) for contract in _QUEUE_CONTRACTS]
    first = queue.epoch
    watch = RingWatch(queue, report)
    keys = {}
    for epoch in range(first, first + epochs):
        keys[epoch] = _check_epoch(queue, epoch, batch_size, report, watch)
        report.epochs.append(epoch)
        report.patches += len(keys[epoch])
    if factory is not None:
        queue.close()  # one queue's workers at a time
        _check_second_queue(factory, queue, keys, batch_size, report)
    else:
        again = _check_epoch(queue, first, batch_size, report, watch)
        _compare_runs(queue, first, keys[first], again, "the same epoch run again", report)
        queue.set_epoch(first + epochs)
    report.failures = list(dict.fromkeys(report.failures))  # a second run repeats the first's
    _diagnose(queue, report)
    return report


def _diagnose(queue: Queue, report: QueueReport) -> None:
    """When patches differ from their recomputation, look for the cause in the components."""
    if not report.contracts() & {Contract.FIDELITY, Contract.REPRODUCIBILITY}:
        return
    subject = queue.subjects[0]
    component_reports: list[tuple[str, Report]] = [
        ("sampler", check_sampler(queue.sampler, subject, queue.patches_per_volume, seeds=(0,)))
    ]
    if queue.transform is not None:
        component_reports.insert(
            0, ("transform", check_transform(queue.transform, subject, seeds=(0,)))
        )
    for name, component in component_reports:
        report.notes.extend(
            f"likely cause: the queue's {name} fails a check on subject 0: {failure}"
            for failure in component.failures
            if failure.contract is not Contract.PICKLABLE  # matters only to spawn workers
        )


_QUEUE_CONTRACTS = (
    Contract.COMPLETENESS,
    Contract.FIDELITY,
    Contract.BOUNDED_BUFFER,
    Contract.SLOT_DISCIPLINE,
    Contract.REPRODUCIBILITY,
)


def _check_second_queue(
    factory: QueueFactory,
    queue: Queue,
    keys: dict[int, list[PatchKey]],
    batch_size: int | None,
    report: QueueReport,
) -> None:
    """Run the same epochs on a second queue from the factory; same seed, same patches."""
    second = factory()
    try:
        if second.seed != queue.seed:
            report.notes.append(
                "the factory builds queues with different seeds (pass seed=...), so the same"
                " seed was not run twice"
            )
            return
        watch = RingWatch(second, report)
        for epoch, first_keys in keys.items():
            again = _check_epoch(second, epoch, batch_size, report, watch)
            _compare_runs(
                queue, epoch, first_keys, again, "a second queue with the same seed", report
            )
    finally:
        second.close()


def _compare_runs(
    queue: Queue,
    epoch: int,
    first: list[PatchKey],
    second: list[PatchKey],
    what: str,
    report: QueueReport,
) -> None:
    if Counter(first) != Counter(second):
        differ = sum((Counter(first) - Counter(second)).values())
        report.fail(
            Contract.REPRODUCIBILITY,
            f"{what} yielded a different multiset of patches: {differ} of {len(first)} patches"
            f" of the first run are missing from the second",
            epoch,
        )
    elif _order_is_defined(queue) and first != second:
        step = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
        report.fail(
            Contract.REPRODUCIBILITY,
            f"{what} yielded the same patches in another order (first difference at patch"
            f" {step}), although the order is defined (deterministic=True or num_workers=0)",
            epoch,
        )


def _order_is_defined(queue: Queue) -> bool:
    return queue.deterministic or queue.num_workers == 0


def _planned_patches(queue: Queue, plan: EpochPlan) -> list[_PlannedPatch]:
    """Every patch of the plan, recomputed in this process as the in-process path makes it."""
    pipeline = SubjectPipeline(
        queue.subjects, queue.transform, queue.sampler, queue.layout.images, queue.patch_evaluation
    )
    dtypes = {field.name: field.dtype for field in queue.layout.fields}
    planned = []
    for task in plan.tasks:
        subject, locations = pipeline.run(task)
        description = queue.subjects[task.subject_index].describe(task.subject_index)
        if task.occurrence:
            description += f" (occurrence {task.occurrence})"
        images = subject.images
        for number, location in enumerate(locations):
            # read as the workers read it: a deferred image computes only the patch's voxels
            record = PatchRecord.build(
                location,
                {
                    name: images[name].voxels_at(location.index, location.size).to(dtype, copy=True)
                    for name, dtype in dtypes.items()
                },
                {name: shift_affine(images[name].affine, location.index) for name in dtypes},
                subject.metadata,
            )
            planned.append(_PlannedPatch(task, number, record, description))
    return planned


def _units(queue: Queue, batch_size: int | None) -> Iterator[_Unit]:
    if batch_size is None:
        for patch in queue:
            record = PatchRecord.from_patch(patch)
            yield _Unit("patch", [record], list(record.data.values()))
    else:
        for batch in queue.batches(batch_size):
            records = list(batch_records(batch))
            tensors = [value.data for value in batch.values() if isinstance(value, BatchImage)]
            yield _Unit("batch", records, tensors)


def _check_epoch(
    queue: Queue, epoch: int, batch_size: int | None, report: QueueReport, watch: RingWatch
) -> list[PatchKey]:
    """Run one epoch, check it, and return the keys of its patches in yielded order."""
    queue.set_epoch(epoch)
    plan = queue.plan(epoch)
    planned = _planned_patches(queue, plan)
    if plan.total_patches != len(queue):
        report.fail(
            Contract.COMPLETENESS,
            f"len(queue) is {len(queue)} but the epoch's plan has {plan.total_patches} patches",
            epoch,
        )
    limit = plan.total_patches + queue.max_length
    yielded: list[PatchRecord] = []
    storages: dict[int, int] = {}  # storage address -> index of the unit that owns it
    for unit_index, unit in enumerate(_units(queue, batch_size)):
        if unit_index == 0:
            watch.observe(epoch)
        _check_buffer(queue, epoch, report)
        _check_storage(unit, unit_index, storages, watch, epoch, report)
        yielded.extend(unit.records)
        if len(yielded) > limit:
            report.fail(
                Contract.COMPLETENESS,
                f"the epoch kept going past {limit} patches; its plan has {plan.total_patches}",
                epoch,
            )
            break
    sound = _match(yielded, planned, epoch, report)
    if sound and _order_is_defined(queue):
        _check_order(yielded, planned, plan, queue, epoch, report)
    return [record.key for record in yielded]


def _check_buffer(queue: Queue, epoch: int, report: QueueReport) -> None:
    stats = queue.stats()
    if stats.ready + stats.in_workers > queue.max_length or stats.max_length != queue.max_length:
        report.fail(
            Contract.BOUNDED_BUFFER,
            f"queue.stats() reports {stats.ready} patches ready and {stats.in_workers} in"
            f" workers (max_length {stats.max_length}); the queue's max_length is"
            f" {queue.max_length}",
            epoch,
        )


def _check_storage(
    unit: _Unit,
    unit_index: int,
    storages: dict[int, int],
    watch: RingWatch,
    epoch: int,
    report: QueueReport,
) -> None:
    """Yielded tensors own their memory: no sharing with each other, none with the ring."""
    described = f"{unit.records[0].describe()} (yielded {unit.kind} {unit_index})"
    for tensor in unit.tensors:
        if watch.holds(tensor):
            report.fail(
                Contract.SLOT_DISCIPLINE,
                f"{described} points into the shared-memory ring instead of owning a copy",
                epoch,
            )
            continue
        start, _ = storage_span(tensor)
        if start in storages:
            report.fail(
                Contract.SLOT_DISCIPLINE,
                f"{described} shares its storage with yielded {unit.kind} {storages[start]}",
                epoch,
            )
        storages[start] = unit_index


def _match(
    yielded: list[PatchRecord], planned: list[_PlannedPatch], epoch: int, report: QueueReport
) -> bool:
    """Pair yielded patches with planned ones; report what is missing, extra or different.

    Returns:
        True if the epoch yielded exactly the planned multiset of patches.
    """
    failures = len(report.failures)
    pool: dict[PatchKey, list[int]] = defaultdict(list)
    for index, patch in enumerate(planned):
        pool[patch.record.key].append(index)
    remaining = set(range(len(planned)))
    unmatched = []
    for record in yielded:
        candidates = pool.get(record.key)
        if candidates:
            index = candidates.pop(0)
            remaining.discard(index)
            differences = describe_affine_difference(record, planned[index].record)
            if differences:
                report.fail(
                    Contract.FIDELITY,
                    f"patch {planned[index].number} ({record.describe()}):"
                    f" {'; '.join(differences)}",
                    epoch,
                    planned[index].subject,
                )
        elif candidates is not None:
            twice = next(patch for patch in planned if patch.record.key == record.key)
            report.fail(
                Contract.SLOT_DISCIPLINE,
                f"patch {twice.number} ({record.describe()}) was yielded more often than planned"
                " (a slot read twice?)",
                epoch,
                twice.subject,
            )
        else:
            unmatched.append(record)
    for record in unmatched:
        closest = _closest(record, planned, remaining)
        if closest is None:
            report.fail(
                Contract.COMPLETENESS,
                f"yielded {record.describe()}, which matches no planned patch of the epoch",
                epoch,
            )
            continue
        remaining.discard(closest)
        report.fail(
            Contract.FIDELITY,
            f"patch {planned[closest].number} differs from the region of the transformed"
            f" subject: {describe_difference(record, planned[closest].record)}",
            epoch,
            planned[closest].subject,
        )
    missing: dict[int, list[_PlannedPatch]] = defaultdict(list)
    for index in sorted(remaining):
        missing[planned[index].task.position].append(planned[index])
    for patches in missing.values():
        task = patches[0].task
        report.fail(
            Contract.COMPLETENESS,
            f"yielded {task.num_patches - len(patches)} of its {task.num_patches} planned patches;"
            f" missing patch(es) {[patch.number for patch in patches]} at"
            f" {[patch.record.location.index for patch in patches]}",
            epoch,
            patches[0].subject,
        )
    return len(report.failures) == failures


def _closest(record: PatchRecord, planned: list[_PlannedPatch], remaining: set[int]) -> int | None:
    """The unmatched planned patch that agrees with ``record`` on two of location, metadata and
    voxels: the one it was most likely meant to be."""
    best, best_score = None, 1
    for index in sorted(remaining):
        key = planned[index].record.key
        score = (
            (key.location == record.key.location)
            + (key.metadata == record.key.metadata)
            + (key.images == record.key.images)
        )
        if score > best_score:
            best, best_score = index, score
    return best


def _check_order(
    yielded: list[PatchRecord],
    planned: list[_PlannedPatch],
    plan: EpochPlan,
    queue: Queue,
    epoch: int,
    report: QueueReport,
) -> None:
    """The order is the reference mixing schedule's, as ``num_workers=0`` yields it."""
    first_of_task: dict[int, int] = {}
    for index, patch in enumerate(planned):
        first_of_task.setdefault(patch.task.position, index)
    takes = (
        event
        for event in mixing_schedule(plan.tasks, queue.max_length, plan.mixing_seed)
        if isinstance(event, Take)
    )
    for step, (record, take) in enumerate(zip(yielded, takes)):
        reference = planned[first_of_task[take.position] + take.patch]
        if record.key != reference.record.key:
            report.fail(
                Contract.REPRODUCIBILITY,
                f"patch {step} of the epoch is {record.describe()}, but the reference order"
                f" (num_workers=0, which deterministic=True must follow) has patch"
                f" {reference.number} of {reference.subject} there",
                epoch,
            )
            return
