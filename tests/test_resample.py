"""Resample: TorchIO's output grid, every voxel's world position kept, label values kept, and
subjects whose images lie on different grids through a queue with workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import shmqueue as sq
from shmqueue.augmentation.operations import subject_specs
from shmqueue.preprocessing.resample import spacing_grid
from shmqueue.testing import check_queue

OBLIQUE = np.array(
    [[0.0, -1.1, 0.1, 10.0], [0.9, 0.0, 0.2, -5.0], [0.0, 0.05, 1.4, 3.0], [0.0, 0.0, 0.0, 1.0]]
)
SHAPE = (14, 12, 10)
SLOPE = np.array([0.7, -0.4, 1.3])


def world_points(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The world coordinates of every voxel of a grid, ``(*shape, 3)``."""
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    return index @ affine[:3, :3].T + affine[:3, 3]


def ramp_subject(affine: np.ndarray = OBLIQUE) -> sq.Subject:
    """t1 is a linear function of world position (which trilinear interpolation reproduces
    exactly); seg labels the world in slabs along the first world axis."""
    world = world_points(SHAPE, affine)
    t1 = torch.from_numpy((world @ SLOPE + 5).astype(np.float32))[None]
    seg = torch.from_numpy((np.floor(world[..., 0] / 3) % 4).astype(np.uint8))[None]
    return sq.Subject(t1=sq.ScalarImage(t1, affine=affine), seg=sq.LabelMap(seg, affine=affine))


@pytest.mark.parametrize("spacing", [1.0, (0.8, 1.5, 1.2), (2.0, 2.0, 0.7)])
def test_scalar_voxels_keep_their_world_position(spacing: Any) -> None:
    subject = ramp_subject()
    result = sq.Resample(spacing)(subject, torch.Generator())
    shape, affine = spacing_grid(SHAPE, OBLIQUE, [spacing] * 3 if np.isscalar(spacing) else spacing)
    assert result.t1.spatial_shape == result.seg.spatial_shape == shape
    np.testing.assert_allclose(result.t1.affine, affine)
    np.testing.assert_allclose(np.linalg.norm(affine[:3, :3], axis=0), np.broadcast_to(spacing, 3))
    expected = world_points(shape, affine) @ SLOPE + 5
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    source = (
        index @ (np.linalg.inv(OBLIQUE) @ affine)[:3, :3].T
        + (np.linalg.inv(OBLIQUE) @ affine)[:3, 3]
    )
    inside = ((source >= 0) & (source <= np.array(SHAPE) - 1)).all(axis=-1)
    assert inside.mean() > 0.5
    np.testing.assert_allclose(result.t1.data[0].numpy()[inside], expected[inside], atol=1e-3)
    predicted = sq.Resample(spacing).output_spec(subject_specs(subject))
    assert predicted == subject_specs(result)


def test_label_values_are_those_of_the_nearest_input_voxel() -> None:
    subject = ramp_subject()
    result = sq.Resample((0.7, 1.3, 0.9))(subject, torch.Generator())
    shape, affine = result.seg.spatial_shape, result.seg.affine
    to_input = np.linalg.inv(OBLIQUE) @ affine
    index = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    source = np.floor(index @ to_input[:3, :3].T + to_input[:3, 3] + 0.5).astype(int)
    inside = ((source >= 0) & (source <= np.array(SHAPE) - 1)).all(axis=-1)
    labels = subject.seg.data[0].numpy()
    expected = labels[tuple(source[inside].T)]
    assert np.array_equal(result.seg.data[0].numpy()[inside], expected)
    assert result.seg.data.dtype == torch.uint8
    assert set(result.seg.data.unique().tolist()) <= set(labels.flatten().tolist())


def test_onto_another_images_grid_the_target_stays_as_it_is() -> None:
    subject = ramp_subject()
    t1_grid = (SHAPE, OBLIQUE)
    other = np.diag([1.7, 1.7, 2.1, 1.0])
    other[:3, 3] = (-8.0, -4.0, -2.0)
    moved = ramp_subject(other)
    subject["t2"] = sq.ScalarImage(moved.t1.data, affine=other)
    result = sq.Resample("t1")(subject, torch.Generator())
    assert result.t1.data is subject.t1.data
    assert result.t2.spatial_shape == t1_grid[0]
    np.testing.assert_allclose(result.t2.affine, OBLIQUE)
    assert result.spatial_shape == SHAPE  # every image on one grid now


def test_the_output_grid_is_torchios() -> None:
    tio = pytest.importorskip("torchio")
    subject = ramp_subject()
    reference = tio.Subject(t1=tio.ScalarImage(tensor=subject.t1.data.clone(), affine=OBLIQUE))
    for spacing in (1.0, (0.8, 1.5, 1.2)):
        theirs = tio.Resample(spacing)(reference).t1
        mine = sq.Resample(spacing)(subject, torch.Generator()).t1
        assert mine.spatial_shape == tuple(theirs.spatial_shape)
        np.testing.assert_allclose(mine.affine, theirs.affine, atol=1e-6)
        inner = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
        np.testing.assert_allclose(mine.data[inner], theirs.data[inner], atol=1e-3)


@pytest.mark.parametrize(
    ("target", "error", "words"),
    [
        (0.0, ValueError, "positive"),
        ((1.0, -1.0, 1.0), ValueError, "positive"),
        ("t9", ValueError, "neither an image of the subject"),
        (Path("/nonexistent/t1.nii.gz"), FileNotFoundError, "does not exist"),
        (((2, 2), np.eye(4)), ValueError, "three sizes"),
        (object(), TypeError, "must be a spacing"),
    ],
)
def test_bad_targets_are_refused_by_name(target: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        sq.Resample(target)(ramp_subject(), torch.Generator())


def test_a_file_or_a_shape_and_affine_as_target(tmp_path: Path) -> None:
    path = tmp_path / "reference.nii.gz"
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 7), np.int16), affine), str(path))
    for target in (path, str(path), ((5, 6, 7), affine)):
        result = sq.Resample(target)(ramp_subject(), torch.Generator())
        assert result.t1.spatial_shape == (5, 6, 7)
        np.testing.assert_allclose(result.seg.affine, affine)


@pytest.mark.timeout(300)
def test_images_on_different_grids_go_through_a_queue_with_workers(
    make_nifti: Any,
) -> None:
    """T1 on one grid, T2 on another: rejected without Resample, accepted with it, and the
    workers' patches are the in-process path's."""
    rng = np.random.default_rng(0)
    subjects = []
    for index in range(3):
        t1 = make_nifti(f"t1_{index}.nii.gz", rng.random((20, 18, 16)).astype(np.float32), OBLIQUE)
        t2_affine = np.diag([1.6, 1.6, 1.6, 1.0])
        t2 = make_nifti(
            f"t2_{index}.nii.gz", rng.random((15, 14, 12)).astype(np.float32), t2_affine
        )
        subjects.append(sq.Subject(t1=sq.ScalarImage(t1), t2=sq.ScalarImage(t2)))
    with pytest.raises(sq.SubjectError, match="different spatial shapes"):
        sq.Queue(subjects, sq.UniformSampler(None, 8), max_length=8, patches_per_volume=2)

    def queue() -> sq.Queue:
        return sq.Queue(
            subjects,
            sq.UniformSampler(None, 8),
            max_length=8,
            patches_per_volume=2,
            num_workers=2,
            transform=sq.Compose([sq.Resample("t1"), sq.Noise(std=0.1)]),
            multiprocessing_context="fork",
            seed=0,
        )

    report = check_queue(queue, epochs=1, batch_size=2)
    assert report.ok, str(report)
    with queue() as built:
        patch = next(iter(built))
        assert patch.t1.data.shape == patch.t2.data.shape == (1, 8, 8, 8)


def test_an_unknown_interpolation_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="Resample's label_interpolation must be one of"):
        sq.Resample(1.0, label_interpolation="bspline")
