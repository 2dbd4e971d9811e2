"""Queue: epoch completeness and shuffling, fidelity, properties, batching and bad input.

Mostly the in-process path (``num_workers=0``), which is the reference; fidelity and the bad-input
table also run with two workers, since a user meets both through the same API.
"""

from __future__ import annotations

import gc
import pickle
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch

from shmqueue.augmentation import Flip, Noise
from shmqueue.batch import Batch
from shmqueue.errors import (
    ConcurrentIterationError,
    ImageFileError,
    ImageFileNotFoundError,
    InvalidImageError,
    MemoryBudgetError,
    PatchSizeError,
    QueueClosedError,
    SamplingError,
    SubjectError,
    SubjectProcessingError,
    TransformOutputError,
)
from shmqueue.image import LabelMap, ScalarImage
from shmqueue.loader import SubjectsLoader
from shmqueue.machine import MemoryCapacity
from shmqueue.memory import budget
from shmqueue.pipeline import SubjectPipeline
from shmqueue.plan import SeedPurpose, SubjectTask, derive_seed
from shmqueue.queue import Queue
from shmqueue.sampling.base import PATCH_LOCATION_KEY, PatchLocation, PatchSampler
from shmqueue.sampling.uniform import UniformSampler
from shmqueue.sampling.weighted import LabelSampler, WeightedSampler
from shmqueue.subject import Subject
from shmqueue.transforms import Compose, Lambda, SubjectTransform

MakeNifti = Callable[..., Path]
PPV = 3  # patches per volume in most tests


def names(patches: list[Subject]) -> list[str]:
    return [patch.name for patch in patches]


def epoch(queue: Queue) -> list[Subject]:
    return list(queue)


def subject_runs(sequence: list[str]) -> list[str]:
    """``[a, a, b, b, a]`` -> ``[a, b, a]``."""
    return [name for i, name in enumerate(sequence) if i == 0 or sequence[i - 1] != name]


# Epoch completeness -------------------------------------------------------------------------------


@pytest.mark.parametrize("shuffle_patches", [True, False])
@pytest.mark.parametrize("shuffle_subjects", [True, False])
def test_each_subject_yields_exactly_patches_per_volume(
    tensor_subjects: list[Subject], shuffle_subjects: bool, shuffle_patches: bool
) -> None:
    queue = Queue(
        tensor_subjects,
        UniformSampler(None, (8, 6, 4)),
        max_length=7,
        patches_per_volume=PPV,
        shuffle_subjects=shuffle_subjects,
        shuffle_patches=shuffle_patches,
        seed=1,
    )
    for _ in range(2):
        patches = epoch(queue)
        assert Counter(names(patches)) == {f"s{i}": PPV for i in range(5)}
        assert len(patches) == len(queue) == queue.patches_per_epoch == 5 * PPV
        for patch in patches:
            assert patch.t1.data.shape == (1, 8, 6, 4)
            location = patch[PATCH_LOCATION_KEY]
            assert all(
                i >= 0 and i + s <= n
                for i, s, n in zip(location.index, location.size, (24, 20, 16))
            )


@pytest.mark.parametrize("order", [[4, 0, 2], [1, 1, 3], [2]])
def test_subject_sampler_chooses_the_subjects(
    tensor_subjects: list[Subject], order: list[int]
) -> None:
    queue = Queue(
        tensor_subjects,
        UniformSampler(None, 8),
        max_length=4,
        patches_per_volume=PPV,
        shuffle_subjects=False,
        subject_sampler=order,
        seed=0,
    )
    assert queue.num_subjects == len(order)
    assert len(queue) == queue.patches_per_epoch == len(order) * PPV
    patches = epoch(queue)
    assert Counter(names(patches)) == {f"s{i}": PPV * order.count(i) for i in set(order)}


def test_shuffle_subjects_with_a_subject_sampler_is_refused(
    tensor_subjects: list[Subject],
) -> None:
    with pytest.raises(ValueError, match="shuffle_subjects=False"):
        Queue(tensor_subjects, UniformSampler(None, 8), subject_sampler=[0, 1])


def test_subject_sampler_gets_the_epoch(tensor_subjects: list[Subject]) -> None:
    class Recording(list[int]):
        epochs: list[int]

        def set_epoch(self, value: int) -> None:
            self.epochs.append(value)

    sampler = Recording([0, 1])
    sampler.epochs = []
    queue = Queue(
        tensor_subjects,
        UniformSampler(None, 8),
        max_length=PPV,
        patches_per_volume=PPV,
        shuffle_subjects=False,
        subject_sampler=sampler,
    )
    queue.set_epoch(3)
    assert queue.epoch == 3
    assert sampler.epochs == [3]


# Order --------------------------------------------------------------------------------------------


def fifo_queue(subjects: list[Subject], seed: int, shuffle_subjects: bool = True) -> Queue:
    return Queue(
        subjects,
        UniformSampler(None, 8),
        max_length=2 * PPV,
        patches_per_volume=PPV,
        shuffle_subjects=shuffle_subjects,
        shuffle_patches=False,
        seed=seed,
    )


def test_without_patch_shuffling_subjects_come_whole_in_order(
    tensor_subjects: list[Subject],
) -> None:
    patches = epoch(fifo_queue(tensor_subjects, seed=0, shuffle_subjects=False))
    assert names(patches) == [f"s{i}" for i in range(5) for _ in range(PPV)]


def test_shuffle_subjects_changes_the_order_across_epochs(tensor_subjects: list[Subject]) -> None:
    queue = fifo_queue(tensor_subjects, seed=0)
    orders = []
    for _ in range(4):
        sequence = names(epoch(queue))
        runs = subject_runs(sequence)
        assert sorted(runs) == [f"s{i}" for i in range(5)]  # contiguous: each subject once
        orders.append(tuple(runs))
    assert len(set(orders)) > 1


def fingerprint(patches: list[Subject]) -> list[tuple[str, PatchLocation, float]]:
    return [(p.name, p[PATCH_LOCATION_KEY], float(p.t1.data.sum())) for p in patches]


def test_same_seed_reproduces_the_epochs_and_another_seed_does_not(
    tensor_subjects: list[Subject],
) -> None:
    def run(seed: int) -> list[list[tuple[str, PatchLocation, float]]]:
        queue = Queue(
            tensor_subjects,
            UniformSampler(None, 8),
            max_length=5,
            patches_per_volume=PPV,
            transform=Noise(std=1.0),
            seed=seed,
        )
        return [fingerprint(epoch(queue)) for _ in range(2)]

    first = run(7)
    assert first == run(7)
    assert run(-7) == run(-7)  # any int is a seed, as for torch.manual_seed
    assert first[0] != first[1]
    assert first != run(8)


def test_shuffled_patches_mix_subjects(tensor_subjects: list[Subject]) -> None:
    queue = Queue(
        tensor_subjects,
        UniformSampler(None, 8),
        max_length=4 * PPV,
        patches_per_volume=PPV,
        seed=0,
    )
    sequence = names(epoch(queue))
    assert len(subject_runs(sequence)) > 5


# Properties and batches ---------------------------------------------------------------------------


def test_sizes_and_memory(nifti_subjects: list[Subject]) -> None:
    queue = Queue(nifti_subjects, UniformSampler(None, 16), max_length=10, patches_per_volume=4)
    assert queue.num_subjects == 6
    assert queue.patches_per_epoch == len(queue) == 24
    # Per slot: a float32 t1 patch (16 KiB) and a uint8 seg patch (4 KiB).
    assert queue.max_memory == 10 * (16**3 * 4 + 16**3)
    assert queue.max_memory_pretty == "200.0 KiB"
    assert "max_memory=200.0 KiB" in repr(queue)
    assert not any(image.is_loaded for s in nifti_subjects for image in s.images.values())


@pytest.mark.parametrize(
    ("drop_last", "sizes"), [(False, [4, 4, 4, 3]), (True, [4, 4, 4])], ids=["keep", "drop"]
)
def test_loader_batch_counts(
    tensor_subjects: list[Subject], drop_last: bool, sizes: list[int]
) -> None:
    queue = Queue(tensor_subjects, UniformSampler(None, 8), max_length=6, patches_per_volume=PPV)
    loader = SubjectsLoader(queue, batch_size=4, drop_last=drop_last)
    for _ in range(2):
        batches = list(loader)
        assert len(loader) == len(sizes)
        assert [batch.t1.data.shape[0] for batch in batches] == sizes
        assert all(batch.location.shape == (size, 6) for batch, size in zip(batches, sizes))


def test_loader_rejects_its_own_workers_and_shuffling(tensor_subjects: list[Subject]) -> None:
    queue = Queue(tensor_subjects, UniformSampler(None, 8), max_length=6, patches_per_volume=PPV)
    with pytest.raises(ValueError, match="pass num_workers to the Queue"):
        SubjectsLoader(queue, batch_size=2, num_workers=2)
    with pytest.raises(ValueError, match="cannot shuffle"):
        SubjectsLoader(queue, batch_size=2, shuffle=True)


def test_closed_queue_cannot_be_iterated(tensor_subjects: list[Subject]) -> None:
    queue = Queue(tensor_subjects, UniformSampler(None, 8), max_length=6, patches_per_volume=PPV)
    queue.close()
    queue.close()
    with pytest.raises(QueueClosedError, match="closed"):
        epoch(queue)


def test_queue_cannot_be_pickled(tensor_subjects: list[Subject]) -> None:
    queue = Queue(tensor_subjects, UniformSampler(None, 8), max_length=6, patches_per_volume=PPV)
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(queue)


# Fidelity -----------------------------------------------------------------------------------------


def test_patches_are_regions_of_the_flipped_volume(tensor_subjects: list[Subject]) -> None:
    """Voxel values encode subject and position, so a deterministic transform is checkable."""
    queue = Queue(
        tensor_subjects,
        UniformSampler(None, (6, 5, 4)),
        max_length=10,
        patches_per_volume=4,
        transform=Flip(axes=(0, 2)),
    )
    by_name = {subject.name: subject for subject in tensor_subjects}
    for patch in epoch(queue):
        flipped = torch.flip(by_name[patch.name].t1.data, [1, 3])
        region = flipped[(slice(None), *patch[PATCH_LOCATION_KEY].to_slices())]
        assert torch.equal(patch.t1.data, region)


def transformed(
    queue: Queue, subject_index: int, epoch_index: int
) -> tuple[Subject, list[PatchLocation]]:
    """Recompute a subject's augmented volume and patch locations from the queue's seed."""
    seed = derive_seed(queue.seed, SeedPurpose.SUBJECT, epoch_index, subject_index, 0)
    task = SubjectTask(epoch_index, 0, subject_index, 0, queue.patches_per_volume, seed)
    pipeline = SubjectPipeline(queue.subjects, queue.transform, queue.sampler, queue.layout.images)
    return pipeline.run(task)


def check_batch_fidelity(queue: Queue, batches: list[Batch], epoch_index: int) -> None:
    """Every row equals, bit for bit, the region of the augmented subject at its location (as
    the pipeline evaluates it there)."""
    index_of = {subject.name: i for i, subject in enumerate(queue.subjects)}
    seen: dict[str, list[PatchLocation]] = {}
    for batch in batches:
        for row, name in enumerate(batch.name):
            seen.setdefault(name, []).append(batch.patch_location[row])
    assert sorted(seen) == sorted(index_of)
    for name, locations in seen.items():
        subject, expected = transformed(queue, index_of[name], epoch_index)
        assert Counter(locations) == Counter(expected)  # positions are reproducible too
    for batch in batches:
        assert batch.seg.data.dtype == torch.uint8
        for row, name in enumerate(batch.name):
            subject, _ = transformed(queue, index_of[name], epoch_index)
            location = batch.patch_location[row]
            # The subject's augmentations are deferred: each region is computed as the worker
            # computed it (per-voxel noise drawn per patch).
            assert torch.equal(batch.t1.data[row], subject.t1.voxels_at(*location))
            assert torch.equal(batch.seg.data[row], subject.seg.voxels_at(*location))
            assert batch.location[row].tolist() == [*location.index, *location.stop]
            assert batch.age[row] == queue.subjects[index_of[name]].age
            patch_origin = batch.t1.affine[row].numpy() @ np.array([0, 0, 0, 1.0])
            volume_voxel = subject.t1.affine @ np.array([*location.index, 1.0])
            np.testing.assert_allclose(patch_origin, volume_voxel)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_batches_are_regions_of_the_augmented_subjects(
    nifti_subjects: list[Subject], num_workers: int
) -> None:
    transform = Compose([Flip(axes=(0, 1), p=0.5), Noise(std=10.0)])
    with Queue(
        nifti_subjects[:4],
        UniformSampler(None, (12, 10, 8)),
        max_length=6,
        patches_per_volume=PPV,
        num_workers=num_workers,
        transform=transform,
        seed=123,
    ) as queue:
        loader = SubjectsLoader(queue, batch_size=5)
        for epoch_index in range(2):
            check_batch_fidelity(queue, list(loader), epoch_index)


def test_iterated_patches_keep_metadata_dtypes_and_shifted_affines(
    nifti_subjects: list[Subject],
) -> None:
    queue = Queue(
        nifti_subjects[:2],
        UniformSampler(None, 8),
        max_length=4,
        patches_per_volume=2,
        transform=Flip(axes=(1,)),
        seed=5,
    )
    by_name = {subject.name: subject for subject in nifti_subjects}
    for patch in epoch(queue):
        source = by_name[patch.name]
        location = patch[PATCH_LOCATION_KEY]
        assert patch.age == source.age
        assert patch.t1.path == source.t1.path
        assert patch.seg.data.dtype == torch.uint8
        assert torch.equal(
            patch.seg.data, torch.flip(source.seg.data, [2])[(slice(None), *location.to_slices())]
        )
        np.testing.assert_allclose(
            patch.t1.affine @ np.array([0, 0, 0, 1.0]),
            source.t1.affine @ np.array([*location.index, 1.0]),
        )


@pytest.mark.parametrize(
    ("stored", "expected"),
    [(np.uint8, torch.uint8), (np.int16, torch.int16), (np.float32, torch.int32)],
)
def test_label_maps_keep_integer_values_through_the_queue(
    make_nifti: MakeNifti, stored: type, expected: torch.dtype
) -> None:
    labels = (np.arange(16**3).reshape(16, 16, 16) % 5).astype(stored)
    subject = Subject(
        t1=ScalarImage(torch.zeros(1, 16, 16, 16)),
        seg=LabelMap(make_nifti("seg.nii.gz", labels)),
    )
    queue = Queue([subject], UniformSampler(None, 4), max_length=4, patches_per_volume=4)
    for batch in SubjectsLoader(queue, batch_size=4):
        assert batch.seg.data.dtype == expected
        for row, location in enumerate(batch.patch_location):
            region = labels[location.to_slices()].astype(np.int64)
            assert torch.equal(batch.seg.data[row, 0].to(torch.int64), torch.from_numpy(region))


# Bad input: one table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BadInput:
    """A way to get input wrong, the exception it must raise and what its message must say.

    ``make`` builds the failing action from a directory for files and the number of workers;
    ``cause`` is the type expected as ``__cause__`` when the failure surfaces while iterating.
    """

    make: Callable[[Path, int], Callable[[], object]]
    error: type[Exception]
    says: tuple[str, ...]
    cause: type[Exception] | None = None


def write(folder: Path, name: str, array: np.ndarray) -> Path:
    path = folder / name
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def t1_array(shape: tuple[int, ...] = (16, 16, 16)) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 1000, shape).astype(np.int16)


def build_queue(
    subjects: list[Subject],
    num_workers: int,
    sampler: PatchSampler | None = None,
    max_length: int = 4,
    patches_per_volume: int = 2,
) -> Queue:
    return Queue(
        subjects,
        sampler or UniformSampler(None, 8),
        max_length=max_length,
        patches_per_volume=patches_per_volume,
        num_workers=num_workers,
        seed=0,
    )


def iterate(
    subjects: list[Subject], num_workers: int, sampler: PatchSampler
) -> Callable[[], object]:
    def run() -> object:
        with build_queue(subjects, num_workers, sampler) as queue:
            return list(queue)

    return run


def missing_file(folder: Path, num_workers: int) -> Callable[[], object]:
    return lambda: Subject(t1=ScalarImage(folder / "sub-01_t1.nii.gz"), name="sub-01")


def garbage_file(folder: Path, num_workers: int) -> Callable[[], object]:
    path = folder / "sub-01_t1.nii.gz"
    path.write_bytes(b"\x00garbage" * 512)
    subject = Subject(t1=ScalarImage(path), name="sub-01")
    return lambda: build_queue([subject], num_workers)


def truncated_file(folder: Path, num_workers: int) -> Callable[[], object]:
    full = write(folder, "full.nii.gz", t1_array((32, 32, 32)))
    path = folder / "sub-01_t1.nii.gz"
    content = full.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    subject = Subject(t1=ScalarImage(path), name="sub-01")
    return iterate([subject], num_workers, UniformSampler(None, 8))


def dimensions(shape: tuple[int, ...]) -> Callable[[Path, int], Callable[[], object]]:
    def make(folder: Path, num_workers: int) -> Callable[[], object]:
        path = write(folder, "sub-01_t1.nii.gz", np.zeros(shape, np.float32))
        subject = Subject(t1=ScalarImage(path), name="sub-01")
        return lambda: build_queue([subject], num_workers)

    return make


def patch_too_large(folder: Path, num_workers: int) -> Callable[[], object]:
    subject = Subject(t1=ScalarImage(write(folder, "sub-01_t1.nii.gz", t1_array())), name="sub-01")
    return lambda: build_queue([subject], num_workers, UniformSampler(None, (8, 8, 20)))


def shapes_differ(folder: Path, num_workers: int) -> Callable[[], object]:
    subject = Subject(
        t1=ScalarImage(write(folder, "sub-01_t1.nii.gz", t1_array())),
        seg=LabelMap(write(folder, "sub-01_seg.nii.gz", np.zeros((16, 16, 12), np.uint8))),
        name="sub-01",
    )
    return lambda: build_queue([subject], num_workers)


def zero_probability(folder: Path, num_workers: int) -> Callable[[], object]:
    subject = Subject(
        t1=ScalarImage(write(folder, "sub-01_t1.nii.gz", t1_array())),
        prob=ScalarImage(write(folder, "sub-01_prob.nii.gz", np.zeros((16, 16, 16), np.float32))),
        name="sub-01",
    )
    return iterate([subject], num_workers, WeightedSampler(None, 8, probability_map="prob"))


def absent_labels(folder: Path, num_workers: int) -> Callable[[], object]:
    subject = Subject(
        t1=ScalarImage(write(folder, "sub-01_t1.nii.gz", t1_array())),
        seg=LabelMap(write(folder, "sub-01_seg.nii.gz", np.ones((16, 16, 16), np.uint8))),
        name="sub-01",
    )
    sampler = LabelSampler(None, 8, "seg", label_probabilities={1: 0.5, 4: 0.5})
    return iterate([subject], num_workers, sampler)


def fractional_labels(folder: Path, num_workers: int) -> Callable[[], object]:
    subject = Subject(
        t1=ScalarImage(write(folder, "sub-01_t1.nii.gz", t1_array())),
        seg=LabelMap(write(folder, "sub-01_seg.nii.gz", np.full((16, 16, 16), 0.5, np.float32))),
        name="sub-01",
    )
    return iterate([subject], num_workers, UniformSampler(None, 8))


def bad_counts(
    max_length: int, patches_per_volume: int
) -> Callable[[Path, int], Callable[[], object]]:
    def make(folder: Path, num_workers: int) -> Callable[[], object]:
        subject = Subject(t1=ScalarImage(torch.zeros(1, 16, 16, 16)), name="sub-01")
        return lambda: build_queue([subject], num_workers, None, max_length, patches_per_volume)

    return make


BAD_INPUTS = {
    "missing-file": BadInput(
        missing_file, ImageFileNotFoundError, ("sub-01_t1.nii.gz", "Check the path")
    ),
    "unreadable-file": BadInput(
        garbage_file, ImageFileError, ("subjects[0]", "sub-01_t1.nii.gz", "reader=")
    ),
    "truncated-file": BadInput(
        truncated_file,
        SubjectProcessingError,
        ("'sub-01'", "sub-01_t1.nii.gz", "in epoch", "truncated or corrupt", "re-copy"),
        ImageFileError,
    ),
    "2d-data": BadInput(
        dimensions((16, 16)),
        InvalidImageError,
        ("subjects[0]", "sub-01_t1.nii.gz", "2 dimensions", "3D volume"),
    ),
    "5d-data": BadInput(
        dimensions((16, 16, 16, 2, 3)),
        InvalidImageError,
        ("subjects[0]", "sub-01_t1.nii.gz", "5 dimensions", "3D volume"),
    ),
    "patch-larger-than-volume": BadInput(
        patch_too_large,
        PatchSizeError,
        ("'sub-01'", "sub-01_t1.nii.gz", "(8, 8, 20)", "(16, 16, 16)", "pad the images"),
    ),
    "different-shapes": BadInput(
        shapes_differ,
        SubjectError,
        ("'sub-01'", "sub-01_seg.nii.gz", "(16, 16, 12)", "shmqueue.Resample('t1')"),
    ),
    "all-zero-probability-map": BadInput(
        zero_probability,
        SubjectProcessingError,
        ("'sub-01'", "sub-01_prob.nii.gz", "zero everywhere", "UniformSampler"),
        SamplingError,
    ),
    "absent-labels": BadInput(
        absent_labels,
        SubjectProcessingError,
        ("'sub-01'", "sub-01_seg.nii.gz", "[4]", "labels present: [1]", "Remove them"),
        SamplingError,
    ),
    "non-integer-label-map": BadInput(
        fractional_labels,
        SubjectProcessingError,
        ("'sub-01'", "sub-01_seg.nii.gz", "non-integer values", "Load it as a ScalarImage"),
        InvalidImageError,
    ),
    "patches-per-volume-below-1": BadInput(
        bad_counts(4, 0), ValueError, ("patches_per_volume", "positive integer", "got 0")
    ),
    "max-length-below-1": BadInput(
        bad_counts(0, 1), ValueError, ("max_length", "positive integer", "got 0")
    ),
    "max-length-below-patches-per-volume": BadInput(
        bad_counts(3, 5), ValueError, ("max_length (3)", "patches_per_volume (5)", "Raise")
    ),
}


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("case", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_bad_input_fails_loudly_naming_the_subject(
    tmp_path: Path, case: BadInput, num_workers: int
) -> None:
    action = case.make(tmp_path, num_workers)
    with pytest.raises(case.error) as raised:
        action()
    message = str(raised.value)
    missing = [fragment for fragment in case.says if fragment not in message]
    assert not missing, f"{missing} not in: {message}"
    if case.cause is not None:
        assert isinstance(raised.value.__cause__, case.cause)


# Transform output: what the ring holds, checked in one place for both paths ----------------------


def first_channel(data: torch.Tensor) -> torch.Tensor:
    return data[:1]


def doubled_channels(data: torch.Tensor) -> torch.Tensor:
    return torch.cat([data, data])


def as_int64(data: torch.Tensor) -> torch.Tensor:
    return data.to(torch.int64)


def as_float32(data: torch.Tensor) -> torch.Tensor:
    return data.to(torch.float32)


def as_float64(data: torch.Tensor) -> torch.Tensor:
    return data.to(torch.float64)


def with_mask(subject: Subject) -> Subject:
    subject = subject.copy()
    subject["mask"] = subject.seg.with_data((subject.seg.data > 0).to(torch.uint8))
    return subject


def without_seg(subject: Subject) -> Subject:
    subject = subject.copy()
    del subject["seg"]
    return subject


def two_channel_subjects() -> list[Subject]:
    """Three subjects of a two-channel float32 image and a uint8 label map."""
    generator = torch.Generator().manual_seed(0)
    return [
        Subject(
            t1=ScalarImage(torch.rand(2, 16, 16, 16, generator=generator)),
            seg=LabelMap((torch.rand(1, 16, 16, 16, generator=generator) > 0.5).to(torch.uint8)),
            name=f"sub-{index:02d}",
        )
        for index in range(3)
    ]


@dataclass(frozen=True)
class OutputMismatch:
    """A transform step whose output the ring cannot hold, and what the error must say."""

    step: SubjectTransform
    says: tuple[str, ...]


OUTPUT_MISMATCHES = {
    "channels-reduced": OutputMismatch(
        Lambda(first_channel, (ScalarImage,)),
        (
            "image 't1' is 1 channel of torch.float32 after the transform",
            "holds 2 channels of torch.float32",
            "transform step 2 (Lambda) changed it",
            "changes their channels",
        ),
    ),
    "channels-added": OutputMismatch(
        Lambda(doubled_channels, (ScalarImage,)),
        ("image 't1' is 4 channels of torch.float32", "holds 2 channels", "step 2 (Lambda)"),
    ),
    "image-added": OutputMismatch(
        with_mask,
        (
            "image 'mask' is 1 channel of torch.uint8 after the transform",
            "has no place for it",
            "transform step 2 (with_mask) added it",
            "adds or removes images",
        ),
    ),
    "image-removed": OutputMismatch(
        without_seg,
        (
            "image 'seg' is absent after the transform",
            "holds 1 channel of torch.uint8",
            "transform step 2 (without_seg) removed it",
        ),
    ),
    "dtype-narrowed": OutputMismatch(
        Lambda(as_int64, (LabelMap,)),
        (
            "image 'seg' is 1 channel of torch.int64 after the transform",
            "holds 1 channel of torch.uint8",
            "cannot hold torch.int64 values",
            "cast the image back to torch.uint8",
        ),
    ),
    "label-map-made-float": OutputMismatch(
        Lambda(as_float32, (LabelMap,)),
        ("image 'seg' is 1 channel of torch.float32", "cannot hold torch.float32 values"),
    ),
}


@pytest.mark.parametrize("case", OUTPUT_MISMATCHES.values(), ids=OUTPUT_MISMATCHES.keys())
def test_a_transform_output_the_ring_cannot_hold_fails_alike_in_both_paths(
    case: OutputMismatch,
) -> None:
    """Never a broadcast channel, a dropped image or a wrapped value: the same error in both."""
    causes = []
    for num_workers in (0, 2):
        # One subject in flight at a time (max_length == patches_per_volume): subject 0 fails.
        with (
            Queue(
                two_channel_subjects(),
                UniformSampler(None, 8),
                max_length=2,
                patches_per_volume=2,
                num_workers=num_workers,
                shuffle_subjects=False,
                # after a random step, so not probed (tests/test_probe.py): checked as made
                transform=Compose([Flip(axes=(0,), flip_probability=0.5), case.step]),
                seed=0,
            ) as queue,
            pytest.raises(SubjectProcessingError) as raised,
        ):
            list(SubjectsLoader(queue, batch_size=2))
        cause = raised.value.__cause__
        assert isinstance(cause, TransformOutputError)
        assert str(cause) in str(raised.value)
        causes.append(str(cause))
    assert causes[0] == causes[1]
    expected = ("subject 0 'sub-00'", *case.says)
    missing = [fragment for fragment in expected if fragment not in causes[0]]
    assert not missing, f"{missing} not in: {causes[0]}"


def test_float_output_is_rounded_to_the_ring_alike_in_both_paths() -> None:
    """A float64 result (a numpy-based transform) fits a float32 ring, as it always did."""
    epochs = []
    for num_workers in (0, 2):
        with Queue(
            two_channel_subjects(),
            UniformSampler(None, 8),
            max_length=4,
            patches_per_volume=2,
            num_workers=num_workers,
            transform=Lambda(as_float64, (ScalarImage,)),
            deterministic=True,
            seed=0,
        ) as queue:
            epochs.append(list(SubjectsLoader(queue, batch_size=3)))
    for in_process, engine in zip(*epochs, strict=True):
        assert in_process.t1.data.dtype == engine.t1.data.dtype == torch.float32
        assert torch.equal(in_process.t1.data, engine.t1.data)
        assert torch.equal(in_process.seg.data, engine.seg.data)


# Concurrent iterators -----------------------------------------------------------------------------


def concurrent_queue(subjects: list[Subject], num_workers: int) -> Queue:
    return Queue(
        subjects,
        UniformSampler(None, 8),
        max_length=6,
        patches_per_volume=PPV,
        num_workers=num_workers,
        seed=0,
    )


def check_superseded(iterator: Iterator[object]) -> None:
    with pytest.raises(ConcurrentIterationError) as raised:
        next(iterator)
    message = str(raised.value)
    for fragment in ("iterating epoch 0", "started epoch 1", "split", "SubjectsLoader", "Queue"):
        assert fragment in message, f"{fragment!r} not in: {message}"


def batch_names(batches: Iterable[Batch]) -> Counter[str]:
    return Counter(name for batch in batches for name in batch.name)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_second_loader_supersedes_the_first(
    tensor_subjects: list[Subject], num_workers: int
) -> None:
    """Two loaders over one queue never split an epoch: the older one raises on its next step."""
    with concurrent_queue(tensor_subjects, num_workers) as queue:
        first = iter(SubjectsLoader(queue, batch_size=4))
        second = iter(SubjectsLoader(queue, batch_size=4))
        taken = [next(first), next(second)]
        check_superseded(first)
        assert batch_names([taken[1], *second]) == {f"s{i}": PPV for i in range(5)}
        assert batch_names(SubjectsLoader(queue, batch_size=4)) == {f"s{i}": PPV for i in range(5)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_a_patch_iterator_supersedes_a_batch_iterator(
    tensor_subjects: list[Subject], num_workers: int
) -> None:
    with concurrent_queue(tensor_subjects, num_workers) as queue:
        batches = queue.batches(4)
        next(batches)
        patches = iter(queue)
        yielded = [next(patches)]
        check_superseded(batches)
        yielded.extend(patches)
        assert Counter(names(yielded)) == {f"s{i}": PPV for i in range(5)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_an_abandoned_iterator_raises_nothing(
    tensor_subjects: list[Subject], num_workers: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Breaking out of an epoch, or dropping an iterator unfinished, is normal training."""
    unraisable: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    complete = {f"s{i}": PPV for i in range(5)}
    with concurrent_queue(tensor_subjects, num_workers) as queue:
        abandoned = iter(queue)
        next(abandoned)
        loader = SubjectsLoader(queue, batch_size=4)
        for number, _ in enumerate(loader):
            if number == 1:
                break
        for _ in range(2):
            assert batch_names(loader) == complete
        del abandoned
        gc.collect()
        assert Counter(names(epoch(queue))) == complete
    assert not unraisable


# Memory, checked again when the ring is allocated -------------------------------------------------


def child_pids() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_closing_mid_epoch_ends_the_iterator(
    tensor_subjects: list[Subject], num_workers: int
) -> None:
    queue = Queue(
        tensor_subjects,
        UniformSampler(None, 8),
        max_length=8,
        patches_per_volume=4,
        num_workers=num_workers,
    )
    patches = iter(queue)
    next(patches)
    queue.close()
    with pytest.raises(QueueClosedError, match="the queue was closed"):
        next(patches)


def test_a_ring_that_no_longer_fits_is_refused_before_anything_starts(
    nifti_subjects: list[Subject], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A training and a validation queue that each fit alone: the second engine is refused."""

    def build(check_memory: bool = True) -> Queue:
        return Queue(
            nifti_subjects,
            UniformSampler(None, 8),
            max_length=8,
            patches_per_volume=4,
            num_workers=2,
            check_memory=check_memory,
            seed=0,
        )

    with build() as training, build() as validation:  # both admitted while memory was free
        next(iter(training))  # training's ring and workers now hold memory
        workers = child_pids()
        # What the training queue left: room for the validation ring, not for its workers.
        short = MemoryCapacity(2 * validation.layout.ring_bytes, None, "test: what is left")
        monkeypatch.setattr(budget, "memory_capacity", lambda: short)
        with pytest.raises(MemoryBudgetError, match=r"The plan needs .* is available \(test"):
            next(iter(validation))
        assert child_pids() == workers, "a worker was started for a ring that does not fit"
        assert validation.epoch == 0, "the refused epoch did not run: it runs next"
        with build(check_memory=False) as unchecked:  # the ring alone fits: admitted
            assert len(list(unchecked)) == len(unchecked)
        monkeypatch.undo()  # memory freed: the refused queue was left whole, and now runs
        assert len(list(validation)) == len(validation)
