"""Batches: stacked images, (B, 6) locations, shifted affines and metadata as lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import shmqueue as sq
from shmqueue.batch import Batch, BatchImage, collate_subjects
from shmqueue.image import LabelMap, ScalarImage
from shmqueue.loader import SubjectsLoader
from shmqueue.sampling.base import PatchLocation, extract_patch
from shmqueue.subject import Subject

MakeNifti = Callable[..., Path]
AFFINE = np.array(
    [[0.0, 0.0, 2.0, -5.0], [1.5, 0.0, 0.0, 3.0], [0.0, -1.0, 0.0, 8.0], [0.0, 0.0, 0.0, 1.0]]
)
LOCATIONS = [
    PatchLocation((0, 0, 0), (4, 3, 2)),
    PatchLocation((5, 1, 2), (4, 3, 2)),
    PatchLocation((2, 4, 6), (4, 3, 2)),
]


@pytest.fixture
def patches(make_nifti: MakeNifti) -> list[Subject]:
    """Patches of two subjects: a file-backed t1 with a rotated affine, an in-memory label map."""
    result = []
    for index, location in enumerate(LOCATIONS):
        t1 = np.arange(10 * 8 * 8, dtype=np.float32).reshape(10, 8, 8) + 1000 * index
        subject = Subject(
            t1=ScalarImage(make_nifti(f"t1_{index}.nii.gz", t1, AFFINE)),
            seg=LabelMap(torch.full((1, 10, 8, 8), index, dtype=torch.int16), affine=AFFINE),
            name=f"sub-{index}",
            age=20 + index,
        )
        result.append(extract_patch(subject, location))
    return result


def test_images_are_stacked(patches: list[Subject]) -> None:
    batch = collate_subjects(patches)
    assert isinstance(batch, Batch)
    assert isinstance(batch.t1, BatchImage)
    assert batch.t1.data.shape == (3, 1, 4, 3, 2)
    assert batch.t1.data.dtype == torch.float32
    assert batch.seg.data.dtype == torch.int16
    for row, patch in enumerate(patches):
        assert torch.equal(batch.t1.data[row], patch.t1.data)
        assert torch.equal(batch["seg"]["data"][row], patch.seg.data)


def test_locations_as_list_and_b_by_6_tensor(patches: list[Subject]) -> None:
    batch = collate_subjects(patches)
    assert batch.patch_location == LOCATIONS
    assert batch.location.dtype == torch.int64
    assert batch.location.tolist() == [
        [0, 0, 0, 4, 3, 2],
        [5, 1, 2, 9, 4, 4],
        [2, 4, 6, 6, 7, 8],
    ]


def test_affines_are_shifted_to_each_patch(patches: list[Subject]) -> None:
    batch = collate_subjects(patches)
    assert batch.t1.affine.shape == (3, 4, 4)
    assert batch.t1.affine.dtype == torch.float64
    for row, location in enumerate(LOCATIONS):
        # World coordinate of patch voxel 0 == world coordinate of the volume voxel at its index.
        patch_origin = batch.t1.affine[row].numpy() @ np.array([0, 0, 0, 1.0])
        volume_voxel = AFFINE @ np.array([*location.index, 1.0])
        np.testing.assert_allclose(patch_origin, volume_voxel, atol=1e-5)
        np.testing.assert_allclose(batch.seg.affine[row].numpy(), batch.t1.affine[row].numpy())


def test_paths_and_metadata_are_lists(patches: list[Subject]) -> None:
    batch = collate_subjects(patches)
    assert batch.name == ["sub-0", "sub-1", "sub-2"]
    assert batch.age == [20, 21, 22]
    assert batch.t1.path == [str(patch.t1.path) for patch in patches]
    assert all(path.endswith(f"t1_{i}.nii.gz") for i, path in enumerate(batch.t1.path))
    assert batch.seg.path == [None, None, None]


def test_missing_keys_raise_attribute_error(patches: list[Subject]) -> None:
    batch = collate_subjects(patches)
    with pytest.raises(AttributeError, match="'flair'"):
        batch.flair  # noqa: B018
    with pytest.raises(AttributeError, match="'mask'"):
        batch.t1.mask  # noqa: B018


def test_collate_needs_a_subject() -> None:
    with pytest.raises(ValueError, match="at least one subject"):
        collate_subjects([])


def test_subjects_loader_over_a_list_of_patches_collates(patches: list[Subject]) -> None:
    loader = SubjectsLoader(patches, batch_size=2)  # type: ignore[arg-type]
    batches = list(loader)
    assert len(loader) == 2
    assert [batch.t1.data.shape[0] for batch in batches] == [2, 1]
    assert batches[1].name == ["sub-2"]
    assert batches[1].location.tolist() == [[2, 4, 6, 6, 7, 8]]


def test_metadata_keys_may_differ_between_subjects() -> None:
    def patch(**metadata: object) -> Subject:
        subject = Subject(t1=ScalarImage(torch.zeros(1, 4, 4, 4)), **metadata)
        return extract_patch(subject, PatchLocation((0, 0, 0), (2, 2, 2)))

    batch = collate_subjects([patch(name="a"), patch(name="b", age=3), patch(site="X")])
    assert batch.name == ["a", "b", None]
    assert batch.age == [None, 3, None]
    assert batch.site == [None, None, "X"]


# Whole volumes, plain DataLoaders and Lightning ------------------------------------------------


def whole_volumes(count: int, shape: tuple[int, int, int] = (6, 5, 4)) -> list[Subject]:
    return [
        Subject(
            t1=ScalarImage(torch.full((1, *shape), float(index))),
            seg=LabelMap(torch.zeros((1, *shape), dtype=torch.uint8)),
            name=f"sub-{index}",
        )
        for index in range(count)
    ]


def test_whole_volumes_collate_without_locations() -> None:
    batch = collate_subjects(whole_volumes(2))
    assert batch.t1.data.shape == (2, 1, 6, 5, 4) and batch.name == ["sub-0", "sub-1"]
    assert "location" not in batch and "patch_location" not in batch


def test_a_subjects_loader_over_a_subjects_dataset_yields_whole_volumes() -> None:
    loader = SubjectsLoader(sq.SubjectsDataset(whole_volumes(3)), batch_size=1)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    assert [batch.name for batch in batches] == [["sub-0"], ["sub-1"], ["sub-2"]]


def test_whole_volumes_of_different_shapes_or_mixed_with_patches_are_explained(
    patches: list[Subject],
) -> None:
    mixed = [*whole_volumes(1), *whole_volumes(1, shape=(4, 4, 4))]
    with pytest.raises(ValueError, match=r"image 't1' of different shapes.*batch_size=1"):
        collate_subjects(mixed)
    with pytest.raises(ValueError, match="1 patches and 1 whole volumes"):
        collate_subjects([patches[0], whole_volumes(1)[0]])


def test_a_plain_dataloader_collates_subjects() -> None:
    subjects = whole_volumes(4, shape=(8, 8, 8))

    def queue() -> sq.Queue:
        return sq.Queue(subjects, sq.UniformSampler(4), max_length=4, patches_per_volume=2, seed=0)

    with queue() as first, queue() as second:
        plain = list(torch.utils.data.DataLoader(first, batch_size=3))
        loaded = list(SubjectsLoader(second, batch_size=3))
    assert [batch.t1.data.shape[0] for batch in plain] == [3, 3, 2]
    for ours, theirs in zip(plain, loaded, strict=True):
        assert torch.equal(ours.t1.data, theirs.t1.data)
        assert torch.equal(ours.location, theirs.location)
    volumes = list(torch.utils.data.DataLoader(sq.SubjectsDataset(subjects), batch_size=2))
    assert [batch.t1.data.shape for batch in volumes] == [(2, 1, 8, 8, 8)] * 2


def test_lightning_moves_a_batch(patches: list[Subject]) -> None:
    """Lightning moves batches with apply_to_collection, which refuses frozen dataclasses and
    rebuilds every container: the batch must survive that unchanged."""
    apply_func = pytest.importorskip("lightning_utilities.core.apply_func")
    batch = collate_subjects(patches)
    moved = apply_func.apply_to_collection(batch, torch.Tensor, lambda tensor: tensor.clone())
    assert isinstance(moved, Batch) and isinstance(moved.t1, BatchImage)
    assert moved.patch_location == LOCATIONS
    assert all(isinstance(location, PatchLocation) for location in moved.patch_location)
    assert torch.equal(moved.t1.data, batch.t1.data) and moved.t1.data is not batch.t1.data
    assert moved.name == batch.name and moved.t1.path == batch.t1.path
