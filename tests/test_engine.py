"""The engine with real worker processes, checked against the in-process path (num_workers=0).

Contracts 1, 2, 3, 5 and 6 of DESIGN.md: every epoch yields exactly ``patches_per_volume``
patches of every subject and nothing else; each patch is, bit for bit, the patch the in-process
path yields for the same (epoch, subject, location); the ring never holds more than
``max_length`` patches; the next epoch is prefetched; ``deterministic=True`` gives the same
stream for any number of workers. The in-process path follows the reference mixing schedule
literally, so it is the oracle.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Iterable, Iterator
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import psutil
import pytest
import torch

import shmqueue as sq
from shmqueue.engine.coordinator import Coordinator
from shmqueue.engine.ring import Segment
from shmqueue.engine.slots import SlotState

START_METHODS = ("fork", "spawn", "forkserver")
# A training script's forkserver preloads its __main__, which imports torch and shmqueue; under
# pytest __main__ is pytest's, so preload shmqueue as a real script would (no effect if the
# forkserver already runs).
multiprocessing.get_context("forkserver").set_forkserver_preload(["shmqueue"])
PATCHES_PER_VOLUME = 4
MAX_LENGTH = 8  # two subjects: the buffer turns over several times per epoch
NUM_SUBJECTS = 6  # conftest's nifti_subjects: 40x36x32 int16 T1s and uint8 label maps
PATCHES_PER_EPOCH = NUM_SUBJECTS * PATCHES_PER_VOLUME
SEED = 1234
TRANSFORM = sq.Compose([sq.Flip(axes=(0,), p=0.5), sq.Noise(std=5.0)])


class PatchRecord(NamedTuple):
    """Everything a yielded patch carries, as comparable values (tensors as raw bytes)."""

    epoch: int
    subject: str
    age: int
    index: tuple[int, int, int]
    t1: bytes
    seg: bytes
    t1_affine: bytes
    seg_path: str


def make_queue(subjects: list[sq.Subject], num_workers: int, **options: Any) -> sq.Queue:
    settings: dict[str, Any] = {
        "max_length": MAX_LENGTH,
        "patches_per_volume": PATCHES_PER_VOLUME,
        "transform": TRANSFORM,
        "seed": SEED,
        "multiprocessing_context": "fork",
    }
    settings.update(options)
    return sq.Queue(subjects, sq.UniformSampler(None, 8), num_workers=num_workers, **settings)


def record(epoch: int, patch: sq.Subject) -> PatchRecord:
    return PatchRecord(
        epoch,
        patch["name"],
        patch["age"],
        patch["patch_location"].index,
        patch.t1.data.numpy().tobytes(),
        patch.seg.data.numpy().tobytes(),
        patch.t1.affine.tobytes(),
        str(patch.seg.path),
    )


def batch_records(epoch: int, batch: sq.Batch) -> Iterator[PatchRecord]:
    for row, location in enumerate(batch.patch_location):
        yield PatchRecord(
            epoch,
            batch["name"][row],
            batch["age"][row],
            location.index,
            batch.t1.data[row].numpy().tobytes(),
            batch.seg.data[row].numpy().tobytes(),
            batch.t1.affine[row].numpy().tobytes(),
            batch.seg.path[row],
        )


def stream(queue: sq.Queue, epochs: int) -> list[PatchRecord]:
    """The records of ``epochs`` whole epochs, in the order yielded."""
    return [record(epoch, patch) for epoch in range(epochs) for patch in queue]


def reference(subjects: list[sq.Subject], epochs: int, **options: Any) -> list[PatchRecord]:
    """The in-process path's stream: the oracle."""
    with make_queue(subjects, 0, **options) as queue:
        return stream(queue, epochs)


def coordinator_of(queue: sq.Queue) -> Coordinator:
    assert queue.engine is not None, "the engine starts with the first iteration"
    return queue.engine


def assert_complete(records: Iterable[PatchRecord], epochs: Iterable[int]) -> None:
    """Contract 1: in each of ``epochs``, exactly patches_per_volume patches of every subject."""
    counts = Counter((item.epoch, item.subject) for item in records)
    expected = {
        (epoch, f"sub-{index:02d}"): PATCHES_PER_VOLUME
        for epoch in epochs
        for index in range(NUM_SUBJECTS)
    }
    assert counts == expected


# Completeness and fidelity, for every start method and worker count -------------------------------


@pytest.mark.timeout(300)
@pytest.mark.parametrize("num_workers", [1, 2, 4])
@pytest.mark.parametrize("start_method", START_METHODS)
def test_epochs_are_complete_and_bit_identical_to_the_in_process_path(
    nifti_subjects: list[sq.Subject], start_method: str, num_workers: int
) -> None:
    expected = reference(nifti_subjects, epochs=2)
    with make_queue(nifti_subjects, num_workers, multiprocessing_context=start_method) as queue:
        records = stream(queue, epochs=2)
    assert_complete(records, range(2))
    assert len(records) == 2 * len(queue) == 2 * PATCHES_PER_EPOCH
    assert Counter(records) == Counter(expected)  # multisets: the order is the workers'


def test_batches_hold_the_same_patches_as_the_in_process_path(
    nifti_subjects: list[sq.Subject],
) -> None:
    expected = reference(nifti_subjects, epochs=2)
    with make_queue(nifti_subjects, 2) as queue:
        loader = sq.SubjectsLoader(queue, batch_size=5)
        records = []
        for epoch in range(2):
            sizes = []
            for batch in loader:
                sizes.append(batch.t1.data.shape[0])
                assert batch.seg.data.dtype == torch.uint8
                records.extend(batch_records(epoch, batch))
            assert sizes == [5] * 4 + [4]
    assert Counter(records) == Counter(expected)


def test_the_named_backend_works_end_to_end(nifti_subjects: list[sq.Subject]) -> None:
    expected = reference(nifti_subjects, epochs=2)
    with make_queue(nifti_subjects, 2, backend="named") as queue:
        records = []
        for epoch in range(2):
            for patch in queue:
                records.append(record(epoch, patch))
                if len(records) == 1:  # the workers have mapped the ring: its name is gone
                    prefix = f"shmqueue-{os.getpid()}-"
                    assert not [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]
                    for pid in coordinator_of(queue).worker_pids:
                        maps = Path(f"/proc/{pid}/maps").read_text()
                        assert f"/dev/shm/{prefix}" in maps and "(deleted)" in maps
    assert Counter(records) == Counter(expected)


REALISTIC = sq.Compose(
    [
        sq.ZNormalization(),
        sq.Contrast(p=0.5),
        sq.OneOf(
            {
                sq.Affine(scales=(0.8, 1.2), degrees=15, translation=2): 3,
                sq.ElasticDeformation(num_control_points=5, max_displacement=3): 1,
            }
        ),
        sq.BiasField(coefficients=0.3),
        sq.Gamma(log_gamma=(-0.2, 0.2), p=0.5),
        sq.Blur(std=(0.5, 1.0), p=0.5),
        sq.Noise(std=(0.0, 0.1)),
        sq.Brightness(p=0.5),
        sq.Flip(axes=(0, 1, 2), flip_probability=0.5),
    ]
)
"""Augmentation as people train with it, evaluated by the workers at the patches only."""


@pytest.mark.timeout(300)
@pytest.mark.parametrize("start_method", ["fork", "spawn"])
def test_realistic_augmentation_at_the_patches_is_bit_identical_to_the_in_process_path(
    nifti_subjects: list[sq.Subject], start_method: str
) -> None:
    sampler = sq.LabelSampler(None, 8, label_name="seg", label_probabilities={0: 1, 1: 1, 2: 1})
    options: dict[str, Any] = {"transform": REALISTIC, "patch_sampler": sampler}

    def realistic(num_workers: int, **more: Any) -> list[PatchRecord]:
        settings = {**options, "multiprocessing_context": start_method, **more}
        with sq.Queue(
            nifti_subjects,
            num_workers=num_workers,
            max_length=MAX_LENGTH,
            patches_per_volume=PATCHES_PER_VOLUME,
            seed=SEED,
            **settings,
        ) as queue:
            return stream(queue, epochs=2)

    expected = realistic(0)
    records = realistic(2)
    assert_complete(records, range(2))
    assert Counter(records) == Counter(expected)  # contract 2, with every augmentation deferred
    assert realistic(2, deterministic=True) == expected  # contract 6: the same stream


# Reproducibility ----------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_deterministic_streams_do_not_depend_on_num_workers(
    nifti_subjects: list[sq.Subject],
) -> None:
    streams = {}
    for num_workers in (0, 1, 2, 4):
        with make_queue(nifti_subjects, num_workers, deterministic=True) as queue:
            streams[num_workers] = stream(queue, epochs=2)
    assert_complete(streams[0], range(2))
    for num_workers in (1, 2, 4):
        assert streams[num_workers] == streams[0], f"num_workers={num_workers} differs"


# The buffer ---------------------------------------------------------------------------------------


def test_the_buffer_never_holds_more_than_max_length(nifti_subjects: list[sq.Subject]) -> None:
    with make_queue(nifti_subjects, 2) as queue:
        segments = set()
        samples = 0
        for epoch in range(3):
            iterator: Iterable[Any] = queue if epoch < 2 else sq.SubjectsLoader(queue, 5)
            for _ in iterator:
                coordinator = coordinator_of(queue)
                table = coordinator._slots
                stats = queue.stats()
                assert table.capacity == MAX_LENGTH
                assert sum(table.count(state) for state in SlotState) == MAX_LENGTH
                assert table.count(SlotState.CONSUMER) == 0  # the consumer only holds copies
                assert stats.ready == table.count(SlotState.READY)
                assert stats.in_workers == table.count(SlotState.WORKER)
                assert stats.ready + stats.in_workers <= MAX_LENGTH
                assert 0.0 <= stats.fill <= 1.0
                segment = coordinator._resources.segment
                assert isinstance(segment, Segment)
                segments.add(id(segment))
                samples += 1
        layout = queue.layout
        assert samples == 2 * PATCHES_PER_EPOCH + 5
        assert len(segments) == 1, "the ring is allocated once and reused"
        assert layout.max_length == MAX_LENGTH
        assert queue.max_memory == layout.patch_bytes == MAX_LENGTH * layout.slot_bytes
        assert len(segment.buffer) == layout.ring_bytes
        assert segment.fd == -1, "once the workers mapped the ring, its descriptor is closed"


def _ring_span(queue: sq.Queue) -> range:
    metadata = coordinator_of(queue).ring.metadata  # starts the ring
    start = metadata.ctypes.data
    return range(start, start + queue.layout.ring_bytes)


def test_iterating_the_queue_yields_copies(nifti_subjects: list[sq.Subject]) -> None:
    expected = reference(nifti_subjects, epochs=2)
    with make_queue(nifti_subjects, 2) as queue:
        kept: list[tuple[sq.Subject, PatchRecord]] = []
        for epoch in range(2):
            for number, patch in enumerate(queue):
                span = _ring_span(queue)
                for image in patch.images.values():
                    assert image.data.untyped_storage().data_ptr() not in span
                kept.append((patch, record(epoch, patch)))
                if number % 2:
                    patch.t1.data.fill_(-7.0)  # the user's own tensor: nobody else sees this
                    patch.seg.data.zero_()
        for batch in sq.SubjectsLoader(queue, 4):
            assert batch.t1.data.untyped_storage().data_ptr() not in _ring_span(queue)
    assert Counter(item for _, item in kept) == Counter(expected)
    for number, (patch, item) in enumerate(kept):
        if not number % 2:  # later patches reused the slots: this one must not have changed
            assert record(item.epoch, patch) == item


# Epochs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("deterministic", [False, True])
def test_an_abandoned_epoch_is_followed_by_a_complete_one(
    nifti_subjects: list[sq.Subject], deterministic: bool
) -> None:
    expected = reference(nifti_subjects, epochs=3, deterministic=deterministic)
    with make_queue(nifti_subjects, 2, deterministic=deterministic) as queue:
        for number, _ in enumerate(queue):
            if number == 2:
                break  # in the middle of epoch 0, with tasks in flight and patches buffered
        records = [record(epoch, patch) for epoch in (1, 2) for patch in queue]
        table = coordinator_of(queue)._slots
        # Only the prefetched epoch 3 may hold slots now; nothing of the abandoned one remains.
        assert table.count(SlotState.CONSUMER) == 0
        assert queue.stats().ready == table.count(SlotState.READY)
    assert_complete(records, (1, 2))
    later = [item for item in expected if item.epoch]
    if deterministic:
        assert records == later
    else:
        assert Counter(records) == Counter(later)


def _wait_for_a_report(queue: sq.Queue) -> None:
    """Block until some worker has a report waiting (read by the queue's next step)."""
    results = [worker.results for worker in coordinator_of(queue)._pool._workers]
    assert wait(results, timeout=60), "no worker reported within 60 s"


class _FailWhileFlagged(sq.Transform):
    """Raises on subject ``name`` while the file ``flag`` exists."""

    def __init__(self, name: str, flag: Path) -> None:
        super().__init__()
        self.name, self.flag = name, flag

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        if subject["name"] == self.name and self.flag.exists():
            raise ValueError(f"{self.name} failed while flagged")
        return subject


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_failure_of_an_epoch_left_with_break_does_not_end_the_next(
    nifti_subjects: list[sq.Subject], tmp_path: Path, num_workers: int
) -> None:
    """Leaving an epoch is fine whatever its subjects do afterwards, in both paths alike."""
    flag = tmp_path / "failing"
    flag.touch()
    transform = _FailWhileFlagged("sub-02", flag)
    options = {"transform": transform, "shuffle_subjects": False, "deterministic": True}
    with make_queue(nifti_subjects, num_workers, **options) as queue:
        for number, _ in enumerate(queue):
            if number == PATCHES_PER_VOLUME - 1:  # four slots free: sub-02 goes to a worker
                break
        if num_workers:
            _wait_for_a_report(queue)  # sub-02's failure, or another report ahead of it
        flag.unlink()
        records = [record(1, patch) for patch in queue]
    with make_queue(nifti_subjects, 0, **options) as reference_queue:
        reference_queue.set_epoch(1)
        assert records == [record(1, patch) for patch in reference_queue]


def test_the_next_epoch_is_prefetched(nifti_subjects: list[sq.Subject]) -> None:
    # Room for two epochs: the next epoch's nifti_subjects can start while this one drains.
    with make_queue(nifti_subjects, 2, max_length=2 * PATCHES_PER_EPOCH) as queue:
        for number, _ in enumerate(queue):
            stats = queue.stats()
            if number == PATCHES_PER_EPOCH - 2 and stats.patches_produced <= PATCHES_PER_EPOCH:
                _wait_for_a_report(queue)  # an epoch-1 subject is in flight: let it finish
            if number == PATCHES_PER_EPOCH - 1:  # the epoch's last patch: it has not ended yet
                assert stats.patches_consumed == PATCHES_PER_EPOCH
                assert stats.patches_produced > PATCHES_PER_EPOCH
        assert number == PATCHES_PER_EPOCH - 1
        records = [record(1, patch) for patch in queue]
    expected = reference(nifti_subjects, epochs=2, max_length=2 * PATCHES_PER_EPOCH)
    assert Counter(records) == Counter(item for item in expected if item.epoch == 1)


def test_workers_stay_alive_across_epochs(nifti_subjects: list[sq.Subject]) -> None:
    with make_queue(nifti_subjects, 2) as queue:
        pids = []
        for _ in range(3):
            assert sum(1 for _ in queue) == PATCHES_PER_EPOCH
            pids.append(coordinator_of(queue).worker_pids)
        assert pids[0] == pids[1] == pids[2]
        assert len(set(pids[0])) == 2
        for pid in pids[0]:
            assert pid is not None
            assert psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    for pid in pids[0]:
        assert pid is not None and not psutil.pid_exists(pid)


def _open_pipes() -> int:
    """Pipes this process has open (a fork-started worker inherits them)."""
    found = 0
    for entry in Path("/proc/self/fd").iterdir():
        try:
            found += os.readlink(entry).startswith("pipe:")
        except OSError:
            continue  # the directory listing's own descriptor
    return found


def test_workers_hold_the_same_descriptors_whatever_the_start_method_and_queue_count(
    tensor_subjects: list[sq.Subject],
) -> None:
    """A worker holds its own pipes, one mapping of its ring and the training process's pidfd:
    not its siblings' pipe ends, nor earlier queues' rings or lifelines (which forks inherit)."""
    inherited_pipes = _open_pipes()  # what a fork-started worker inherits from this process
    censuses: dict[str, list[dict[str, int]]] = {}
    for method in ("fork", "spawn", "forkserver"):
        queues = []
        try:
            for _ in range(3):  # all alive together: each later queue forks beside the earlier
                queue = sq.Queue(
                    tensor_subjects,
                    sq.UniformSampler(None, 8),
                    max_length=8,
                    patches_per_volume=4,
                    num_workers=2,
                    multiprocessing_context=method,
                )
                queues.append(queue)
                next(iter(queue))
            censuses[method] = [
                census for queue in queues for census in queue.stats().worker_descriptors.values()
            ]
        finally:
            for queue in queues:
                queue.close()
    for method, found in censuses.items():
        assert len(found) == 6
        assert all(census == found[0] for census in found), (method, found)
        assert found[0]["memfd"] == 1, "one ring, held by its mapping only"
        assert found[0].get("pidfd", 0) == 1, "the training process, watched"
    engine_kinds = ("pipe", "memfd", "pidfd")  # files (/dev/null, logs) depend on the method
    spawned, served = censuses["spawn"][0], censuses["forkserver"][0]
    assert [spawned[kind] for kind in engine_kinds] == [served[kind] for kind in engine_kinds]
    assert censuses["fork"][0]["pipe"] <= censuses["spawn"][0]["pipe"] + inherited_pipes


def test_stats_are_sensible(nifti_subjects: list[sq.Subject]) -> None:
    with make_queue(nifti_subjects, 2) as queue:
        assert queue.stats().patches_consumed == 0
        for _ in range(2):
            assert sum(1 for _ in queue) == PATCHES_PER_EPOCH
        stats = queue.stats()
    assert stats.max_length == MAX_LENGTH
    assert stats.patches_consumed == 2 * PATCHES_PER_EPOCH
    # Produced: both epochs, plus what was prefetched of the third (at most a buffer's worth).
    assert 2 * PATCHES_PER_EPOCH <= stats.patches_produced <= 2 * PATCHES_PER_EPOCH + MAX_LENGTH
    assert 0 <= stats.ready + stats.in_workers <= MAX_LENGTH
    assert 0.0 <= stats.first_patch_seconds <= stats.consumer_wait_seconds
    assert set(stats.subject_seconds) <= {0, 1}
    timings = [seconds for worker in stats.subject_seconds.values() for seconds in worker]
    assert len(timings) >= 2 * NUM_SUBJECTS
    assert all(0.0 < seconds < 60.0 for seconds in timings)
    assert set(stats.worker_peak_rss) == set(stats.subject_seconds)
    assert all(10 * 1024**2 < peak < 10 * 1024**3 for peak in stats.worker_peak_rss.values())


class _MarkSubject(sq.Transform):
    """Adds metadata, as an augmentation that records what it did would."""

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        subject["augmented_with"] = float(torch.rand((), generator=generator))
        del subject["age"]
        return subject


def test_patches_carry_the_augmented_subjects_metadata_and_affines(
    nifti_subjects: list[sq.Subject],
) -> None:
    """A padded grid moves the origin and a transform edits metadata: workers must say so."""
    sampler = sq.GridSampler(None, 8, patch_overlap=4, padding_mode="constant")

    def observed(num_workers: int) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        queue = sq.Queue(
            nifti_subjects[:3],
            sampler,
            max_length=8,
            patches_per_volume=4,
            num_workers=num_workers,
            transform=_MarkSubject(),
            seed=SEED,
            deterministic=True,
        )
        with queue:
            patches = [
                (
                    p.name,
                    p.augmented_with,
                    "age" in p,
                    p.t1.affine.tobytes(),
                    p.seg.affine.tobytes(),
                )
                for p in queue
            ]
            batches = [
                (name, mark, affine.numpy().tobytes())
                for batch in sq.SubjectsLoader(queue, batch_size=5)
                for name, mark, affine in zip(batch.name, batch.augmented_with, batch.t1.affine)
            ]
        return patches, batches

    in_process, with_workers = observed(0), observed(2)
    assert with_workers == in_process
    patches, _ = in_process
    assert not any(has_age for _, _, has_age, _, _ in patches)
    first_affine = nifti_subjects[0].t1.affine
    # The first grid patch starts half an overlap before the unpadded volume.
    origins = {
        tuple(np.frombuffer(affine).reshape(4, 4)[:3, 3].round(6))
        for name, _, _, affine, _ in patches
        if name == nifti_subjects[0].name
    }
    expected = tuple((first_affine[:3, :3] @ np.array([-2.0, -2.0, -2.0])).round(6))
    assert expected in origins


class _FailOnUnluckySeed(sq.Transform):
    """Raises for the subjects whose first draw is below ``threshold``: a seeded, epoch-specific
    failure, the same in every process."""

    threshold = 0.15

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        if float(torch.rand((), generator=generator)) < self.threshold:
            raise ValueError(f"unlucky subject {subject.name}")
        return subject

    @classmethod
    def fails(cls, task_seed: int) -> bool:
        generator = torch.Generator().manual_seed(task_seed)
        return float(torch.rand((), generator=generator)) < cls.threshold


def test_a_failure_in_the_prefetched_epoch_surfaces_in_that_epoch(
    tensor_subjects: list[sq.Subject],
) -> None:
    def queue_for(seed: int) -> sq.Queue:
        return sq.Queue(
            tensor_subjects,
            sq.UniformSampler(None, 8),
            max_length=10,
            patches_per_volume=2,
            num_workers=2,
            transform=_FailOnUnluckySeed(),
            seed=seed,
        )

    def failing(queue: sq.Queue, epoch: int) -> bool:
        return any(_FailOnUnluckySeed.fails(task.seed) for task in queue.plan(epoch).tasks)

    seed = next(s for s in range(1000) if not failing(q := queue_for(s), 0) and failing(q, 1))
    with queue_for(seed) as queue:
        first_epoch = list(queue)  # epoch 1 is prefetched meanwhile and fails in a worker
        assert len(first_epoch) == queue.patches_per_epoch
        with pytest.raises(sq.SubjectProcessingError, match="in epoch 1: ValueError: unlucky"):
            list(queue)
