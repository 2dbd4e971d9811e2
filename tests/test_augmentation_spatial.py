"""Spatial augmentations: TorchIO's geometry, label maps aligned, and patches equal to the whole
volume's result cropped (contract 11)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from hypothesis import given, settings
from hypothesis import strategies as st

import shmqueue as sq
from shmqueue.augmentation.deferred import DeferredVoxels
from shmqueue.augmentation.operations import subject_specs
from shmqueue.augmentation.spatial import world_transform
from shmqueue.pipeline import SubjectPipeline
from shmqueue.plan import SubjectTask

SHAPE = (24, 20, 16)
OBLIQUE = np.array(
    [[0.0, -1.1, 0.0, 10.0], [0.9, 0.0, 0.2, -5.0], [0.0, 0.0, 1.4, 3.0], [0.0, 0.0, 0.0, 1.0]]
)


def smooth_volume(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> torch.Tensor:
    """A smooth random volume (so that interpolation is well conditioned), values in [0, 100]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, 1, 4, 4, 4), generator=generator)
    volume = functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return volume[0] * 100


def subject_on(affine: np.ndarray = OBLIQUE, seed: int = 0) -> sq.Subject:
    t1 = smooth_volume(seed=seed)
    seg = (t1 > 40).to(torch.uint8) + (t1 > 70).to(torch.uint8)
    return sq.Subject(
        t1=sq.ScalarImage(t1, affine=affine), seg=sq.LabelMap(seg, affine=affine), name="s"
    )


def draw(transform: sq.Transform, subject: sq.Subject, seed: int) -> sq.Subject:
    return transform(subject, torch.Generator().manual_seed(seed))


# TorchIO's geometry ----------------------------------------------------------------------------


def torchio_affine(subject: sq.Subject, **parameters: Any) -> torch.Tensor:
    torchio = pytest.importorskip("torchio")
    image = torchio.ScalarImage(tensor=subject.t1.data, affine=subject.t1.affine)
    transformed = torchio.Affine(**parameters, default_pad_value=-1)(torchio.Subject(t1=image))
    return transformed.t1.data


@pytest.mark.parametrize(
    ("scales", "degrees", "translation"),
    [
        (1.0, (0, 0, 20), (3, -2, 1)),  # about Z, translated
        (1.0, (15, 0, 0), (0, 0, 0)),
        (1.0, (0, -25, 0), (0, 4, 0)),
        (1.2, (10, 0, 0), (0, 0, 0)),  # isotropic scaling commutes with the rotation
        (0.8, (0, 0, -30), (0, 0, 0)),
    ],
)
def test_affine_agrees_with_torchio_where_its_conventions_agree(
    scales: float, degrees: tuple[float, float, float], translation: tuple[float, ...]
) -> None:
    """TorchIO 1.x rotates in LPS with another Euler order than 2.0; for a rotation about one
    axis and isotropic scaling (translation unscaled) both give the same mapping. Compared away
    from the border, where SimpleITK and grid_sample treat the edge differently."""
    subject = subject_on(np.diag([1.0, 1.3, 0.8, 1.0]))
    ours = sq.Affine(scales, degrees, translation, default_pad_value=-1)(subject).t1.data
    theirs = torchio_affine(subject, scales=(scales,) * 3, degrees=degrees, translation=translation)
    interior = ((theirs > -0.5) & (ours > -0.5)).float()  # neither filled
    # Two voxels away from any filled voxel and from the grid's edge.
    framed = functional.pad(interior, (2, 2, 2, 2, 2, 2))
    eroded = -functional.max_pool3d(-framed[None], 5, 1, 0)[0] > 0.5
    assert eroded.float().mean() > 0.1
    np.testing.assert_allclose(ours[eroded], theirs[eroded], atol=1e-3 * 100)


def test_affine_moves_a_world_point_where_torchio_2_says() -> None:
    """A bright voxel at world point x appears at T(x), T = R S (x - c) + c + t (TorchIO 2.0)."""
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    data = torch.zeros(1, 31, 31, 31)
    voxel = np.array([20, 12, 15])
    data[0, voxel[0], voxel[1], voxel[2]] = 1.0
    subject = sq.Subject(t1=sq.ScalarImage(data, affine=affine))
    scales, degrees, translation = (1.0, 1.0, 1.0), (0.0, 0.0, 90.0), (2.0, 0.0, 0.0)
    moved = sq.Affine(scales, degrees, translation, image_interpolation="nearest")(subject)
    centre = (np.array(data.shape[1:]) - 1) / 2
    expected = world_transform(scales, degrees, translation, centre) @ np.array([*voxel, 1.0])
    found = torch.nonzero(moved.t1.data[0] == 1.0)[0].numpy()
    np.testing.assert_allclose(found, expected[:3], atol=1e-6)


def torchio2_elastic(data: torch.Tensor, control_points: torch.Tensor, spacing: Any) -> Any:
    """TorchIO 2.0.0a2's elastic resampling, written out (``spatial.py``: the field upsampled
    trilinearly with aligned corners, in mm divided by the spacing, added to the voxel
    coordinates; grid_sample with zeros padding and the fill where the mask is under 0.5)."""
    shape = data.shape[1:]
    field = functional.interpolate(
        control_points.permute(3, 0, 1, 2)[None].float(),
        size=shape,
        mode="trilinear",
        align_corners=True,
    )[0].permute(1, 2, 3, 0)
    i, j, k = torch.meshgrid(*(torch.arange(n, dtype=torch.float32) for n in shape), indexing="ij")
    coords = torch.stack([i, j, k], -1) + field / torch.tensor(spacing, dtype=torch.float32)
    sizes = torch.tensor([max(n - 1, 1) for n in shape], dtype=torch.float32)
    grid = (2 * coords / sizes - 1).flip(-1)[None]
    sampled = functional.grid_sample(data[None], grid, align_corners=True, padding_mode="zeros")
    mask = functional.grid_sample(torch.ones_like(data)[None], grid, align_corners=True)
    return torch.where(mask > 0.5, sampled, torch.tensor(float(data.min())))[0]


def test_elastic_deformation_follows_torchio_2() -> None:
    subject = subject_on(np.diag([1.0, 1.5, 2.0, 1.0]))
    control_points = (
        torch.rand((7, 6, 5, 3), generator=torch.Generator().manual_seed(3)) - 0.5
    ) * 6
    ours = sq.ElasticDeformation(control_points=control_points)(subject).t1.data
    theirs = torchio2_elastic(subject.t1.data, control_points, (1.0, 1.5, 2.0))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)


# Label maps, parameters, p ---------------------------------------------------------------------


REALISTIC = sq.Compose(
    [
        sq.Affine(scales=(0.8, 1.2), degrees=(-20, 20), translation=(-3, 3)),
        sq.ElasticDeformation(num_control_points=6, max_displacement=(0, 4)),
        sq.Flip(axes=(0, 1, 2), flip_probability=0.5),
    ]
)


@pytest.mark.parametrize("seed", range(4))
def test_label_maps_stay_aligned_and_no_label_is_invented(seed: int) -> None:
    subject = subject_on()
    labels_as_image = sq.ScalarImage(subject.seg.data.float(), affine=OBLIQUE)
    both = sq.Subject(t1=labels_as_image, seg=subject.seg)
    nearest = sq.Compose(
        [
            sq.Affine(
                degrees=(-20, 20),
                translation=(-3, 3),
                image_interpolation="nearest",
                default_pad_value=0,
            ),
            sq.Flip(axes=("LR", "IS"), flip_probability=0.5),
        ]
    )
    moved = draw(nearest, both, seed)
    assert torch.equal(moved.t1.data, moved.seg.data.float())
    labels = draw(REALISTIC, subject, seed).seg.data
    assert labels.dtype == torch.uint8
    assert set(labels.unique().tolist()) <= {0, 1, 2}


def test_parameters_are_drawn_in_their_ranges_once_per_subject() -> None:
    specs = subject_specs(subject_on())
    affine = sq.Affine(scales=(0.5, 2.0), degrees=(0, 0, (-10, 10)), isotropic=True)
    for seed in range(20):
        (operation,) = affine.operations(specs, torch.Generator().manual_seed(seed))
        linear = OBLIQUE[:3, :3] @ operation.matrix[:3, :3] @ np.linalg.inv(OBLIQUE[:3, :3])
        singular = np.linalg.svd(linear, compute_uv=False)
        np.testing.assert_allclose(singular, singular[0], rtol=1e-9)  # isotropic
        assert 0.5 - 1e-9 <= 1 / singular[0] <= 2.0 + 1e-9
    assert sq.Affine().operations(specs, torch.Generator()) == []  # identity: nothing to do


def test_p_and_include_choose_what_happens() -> None:
    subject = subject_on()
    flip = sq.Flip(axes=0, p=0.5, include=["t1"])
    outcomes = set()
    for seed in range(16):
        flipped = draw(flip, subject, seed)
        assert flipped.seg.data is subject.seg.data  # not included
        outcomes.add(bool(torch.equal(flipped.t1.data, subject.t1.data.flip(1))))
    assert outcomes == {True, False}


def test_anatomical_axes_follow_the_orientation() -> None:
    flipped_lr = sq.Flip(axes="Left")
    subject = subject_on(OBLIQUE)  # voxel axis 1 runs along world X (L-R)
    assert torch.equal(flipped_lr(subject).t1.data, subject.t1.data.flip(2))


# Patches equal the whole volume's result, cropped ------------------------------------------------


boxes = st.tuples(*(st.integers(1, n) for n in SHAPE)).flatmap(
    lambda size: st.tuples(
        st.just(size), st.tuples(*(st.integers(0, n - s) for n, s in zip(SHAPE, size)))
    )
)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31), box=boxes)
def test_a_patch_equals_the_whole_result_cropped(seed: int, box: Any) -> None:
    (size, index) = box
    subject = subject_on(seed=seed % 7)
    generator = torch.Generator().manual_seed(seed)
    operations = [
        operation
        for step in REALISTIC.transforms
        for operation in step.draw(subject, generator)  # type: ignore[attr-defined]
    ]
    region = (slice(None), *(slice(i, i + s) for i, s in zip(index, size)))
    for name, image in subject.images.items():
        voxels = DeferredVoxels(image.data, name, type(image), operations)
        whole = voxels.whole()[region]
        patch = voxels.patch(index, size)
        if name == "seg":
            assert torch.equal(patch, whole)
        else:
            np.testing.assert_allclose(patch, whole, atol=1e-4 * 100)


@pytest.mark.parametrize("sampler", ["uniform", "label"])
def test_the_pipeline_gives_the_same_patches_deferred_or_not(sampler: str) -> None:
    subjects = [subject_on(seed=seed) for seed in range(3)]
    patch_sampler = (
        sq.UniformSampler(None, 8)
        if sampler == "uniform"
        else sq.LabelSampler(None, 8, label_name="seg", label_probabilities={1: 1, 2: 1})
    )
    layout = {"t1": (1, torch.float32), "seg": (1, torch.uint8)}
    for index in range(3):
        task = SubjectTask(0, index, index, 0, 5, seed=100 + index)
        runs = [
            SubjectPipeline(subjects, REALISTIC, patch_sampler, layout, deferred).run(task)
            for deferred in (True, False)
        ]
        (lazy, locations), (eager, eager_locations) = runs
        assert locations == eager_locations  # the map the sampler read is the same, exactly
        for location in locations:
            np.testing.assert_allclose(
                lazy.t1.voxels_at(*location), eager.t1.voxels_at(*location), atol=1e-4 * 100
            )
            assert torch.equal(lazy.seg.voxels_at(*location), eager.seg.voxels_at(*location))
            np.testing.assert_array_equal(lazy.t1.affine, subjects[index].t1.affine)
