"""Batches: stacked images, (B, 6) locations, shifted affines and metadata as lists."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

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


def test_collate_needs_a_patch() -> None:
    with pytest.raises(ValueError, match="at least one patch"):
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
