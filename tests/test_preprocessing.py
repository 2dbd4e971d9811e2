"""The preprocessing and label transforms against TorchIO 1.2.1 on the same random volumes, and
through a queue with workers."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import pytest
import torch
from nibabel import orientations as nib_orientations

import shmqueue as sq
from shmqueue.augmentation.operations import subject_specs
from shmqueue.preprocessing import (
    Clamp,
    Crop,
    CropOrPad,
    EnsureShapeMultiple,
    Mask,
    OneHot,
    Pad,
    RemapLabels,
    RemoveLabels,
    Reorient,
    RescaleIntensity,
    SequentialLabels,
    ToCanonical,
    ZNormalization,
)
from shmqueue.sampling.base import PATCH_LOCATION_KEY
from shmqueue.specs import UNKNOWN, VOXELWISE, WHOLE_VOLUME, ImageSpec, Locality
from shmqueue.transforms import Transform

tio = pytest.importorskip("torchio")

SHAPE = (2, 9, 8, 7)


def volumes(seed: int, label_dtype: torch.dtype = torch.uint8) -> dict[str, torch.Tensor]:
    """Two scalar images (skewed intensities; t2 with two channels) and two label maps."""
    generator = torch.Generator().manual_seed(seed)
    t1 = torch.randn((1, *SHAPE[1:]), generator=generator).exp() * 100
    t2 = torch.rand(SHAPE, generator=generator) * 2000 - 1000
    seg = torch.randint(0, 5, (1, *SHAPE[1:]), generator=generator).mul(3).to(label_dtype)
    brain = torch.randint(0, 3, (1, *SHAPE[1:]), generator=generator).to(label_dtype)
    return {"t1": t1, "t2": t2, "seg": seg, "brain": brain}


def ours(data: dict[str, torch.Tensor]) -> sq.Subject:
    return sq.Subject(
        t1=sq.ScalarImage(data["t1"]),
        t2=sq.ScalarImage(data["t2"]),
        seg=sq.LabelMap(data["seg"]),
        brain=sq.LabelMap(data["brain"]),
    )


def theirs(data: dict[str, torch.Tensor]) -> Any:
    return tio.Subject(
        t1=tio.ScalarImage(tensor=data["t1"].clone()),
        t2=tio.ScalarImage(tensor=data["t2"].clone()),
        seg=tio.LabelMap(tensor=data["seg"].clone()),
        brain=tio.LabelMap(tensor=data["brain"].clone()),
    )


def above_mean(tensor: torch.Tensor) -> torch.Tensor:
    return tensor > tensor.mean()


CASES: list[tuple[str, type[Transform], dict[str, Any]]] = [
    ("znorm", ZNormalization, {}),
    ("znorm-label", ZNormalization, {"masking_method": "brain", "include": ["t1"]}),
    ("znorm-callable", ZNormalization, {"masking_method": above_mean}),
    ("znorm-left", ZNormalization, {"masking_method": "left"}),
    ("znorm-include", ZNormalization, {"include": ["t2"]}),
    ("rescale", RescaleIntensity, {}),
    ("rescale-range", RescaleIntensity, {"out_min_max": (-1, 1)}),
    ("rescale-percentiles", RescaleIntensity, {"percentiles": (0.5, 99.5)}),
    ("rescale-masked", RescaleIntensity, {"percentiles": (1, 90), "masking_method": "brain",
                                          "include": ["t1"]}),
    ("rescale-window", RescaleIntensity, {"out_min_max": (-1, 1), "in_min_max": (-1000, 1000)}),
    ("rescale-exclude", RescaleIntensity, {"exclude": ["t1"]}),
    ("clamp", Clamp, {"out_min": -200, "out_max": 300}),
    ("clamp-min", Clamp, {"out_min": 0, "include": ["t2"]}),
    ("mask", Mask, {"masking_method": "brain", "include": ["t1"]}),
    ("mask-labels", Mask, {"masking_method": "seg", "labels": [3, 9], "outside_value": -5,
                           "include": ["t1"]}),
    ("mask-callable", Mask, {"masking_method": above_mean, "exclude": ["t2"]}),
    ("remap", RemapLabels, {"remapping": {3: 6, 6: 3, 12: 200}}),
    ("remap-masked", RemapLabels, {"remapping": {3: 1}, "masking_method": "superior"}),
    ("remap-include", RemapLabels, {"remapping": {0: 1, 1: 0}, "include": ["brain"]}),
    ("remove", RemoveLabels, {"labels": [3, 12]}),
    ("remove-background", RemoveLabels, {"labels": [0], "background_label": 9,
                                         "exclude": ["brain"]}),
    ("sequential", SequentialLabels, {}),
    ("sequential-masked", SequentialLabels, {"masking_method": "brain", "include": ["seg"]}),
]  # fmt: skip
"""Each transform with arguments; TorchIO's class of the same name takes the same ones."""


@pytest.mark.parametrize(
    ("kind", "arguments"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_torchio(kind: type[Transform], arguments: dict[str, Any], seed: int) -> None:
    """Every image as TorchIO 1.2.1 makes it; label maps keep their dtype; inputs untouched."""
    data = volumes(seed)
    subject = ours(data)
    inputs = {name: tensor.clone() for name, tensor in data.items()}
    result = kind(**arguments)(subject, torch.Generator())
    expected = getattr(tio, kind.__name__)(**arguments)(theirs(data))
    for name, tensor in data.items():
        assert torch.equal(tensor, inputs[name])  # never written into
        mine, reference = result[name].data, expected[name].data
        assert mine.dtype == tensor.dtype
        assert mine.shape == tensor.shape
        if mine.is_floating_point():
            torch.testing.assert_close(mine, reference.float(), rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(mine, reference.to(mine.dtype))


def test_describes_itself_without_voxels() -> None:
    """Same specs out; not random; statistics for the normalisations, voxel by voxel for the
    rest, the whole volume for a callable or anatomical mask; costs only for chosen images."""
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    images = {
        "t1": ImageSpec(sq.ScalarImage, 2, SHAPE[1:], torch.float32, affine),  # type: ignore[arg-type]
        "seg": ImageSpec(sq.LabelMap, 1, SHAPE[1:], torch.int16, affine),  # type: ignore[arg-type]
    }
    t1, seg = images["t1"].nbytes, images["seg"].nbytes
    transforms = [ZNormalization(), RescaleIntensity(), Clamp(0), Mask("seg"), SequentialLabels()]
    for transform in transforms:
        assert transform.output_spec(images) == images
        assert not transform.is_random
    assert ZNormalization(p=0.5).is_random
    statistics = Locality(0, statistics=True)
    assert ZNormalization("seg").locality == RescaleIntensity().locality == statistics
    assert Clamp(0).locality == Mask("seg").locality == RemapLabels({1: 2}).locality == VOXELWISE
    assert Mask(above_mean).locality == RemapLabels({1: 2}, "left").locality == WHOLE_VOLUME
    assert [c.image for c in Clamp(0).memory_cost(images)] == ["t1"]
    assert [c.image for c in RemoveLabels([1]).memory_cost(images)] == ["seg"]
    assert ZNormalization(include=["seg"]).memory_cost(images) == []
    assert Clamp(0).memory_cost(images)[0].peak == t1
    assert SequentialLabels().memory_cost(images)[0].output == seg


def test_label_maps_refuse_labels_their_dtype_cannot_hold() -> None:
    subject = ours(volumes(0))
    with pytest.raises(ValueError, match=r"labels \[256\] into label map 'seg'.*uint8"):
        RemapLabels({3: 256})(subject, torch.Generator())
    wide = ours(volumes(0, torch.int64))
    result = RemapLabels({3: 256})(wide, torch.Generator())
    assert result.seg.data.dtype == torch.int64 and int(result.seg.data.max()) == 256


def test_refusals() -> None:
    with pytest.raises(ValueError, match="not both"):
        Clamp(0, include=["t1"], exclude=["t2"])
    with pytest.raises(ValueError, match="out_min, out_max"):
        Clamp()
    with pytest.raises(ValueError, match="increasing"):
        RescaleIntensity((1, 0))
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        RescaleIntensity(percentiles=(-1, 50))
    subject = ours(volumes(0))
    with pytest.raises(ValueError, match="neither a label map"):
        ZNormalization("nowhere")(subject, torch.Generator())
    empty = subject.copy()
    empty["brain"] = sq.LabelMap(torch.zeros(1, *SHAPE[1:], dtype=torch.uint8))
    with pytest.raises(ValueError, match="mask for image 't1' is empty"):
        RescaleIntensity(masking_method="brain")(empty, torch.Generator())


def test_through_a_queue_with_workers() -> None:
    """Patches from fork-started workers are regions of the volumes transformed in-process."""
    data = [volumes(seed, torch.int16) for seed in range(3)]
    subjects = [ours(volume) for volume in data]
    for index, subject in enumerate(subjects):
        subject["name"] = f"s{index}"
    transform = sq.Compose(
        [
            Clamp(1, 400, include=["t1"]),
            Mask("brain", exclude=["t1"]),
            ZNormalization(masking_method="brain"),
            RescaleIntensity((-1, 1), percentiles=(1, 99), include=["t2"]),
            RemapLabels({3: 300}, include=["seg"]),
            RemoveLabels([6]),
            SequentialLabels(include=["brain"]),
        ]
    )
    expected = {subject["name"]: transform(subject, torch.Generator()) for subject in subjects}
    queue = sq.Queue(
        subjects,
        sq.UniformSampler(None, (4, 4, 3)),
        max_length=6,
        patches_per_volume=3,
        transform=transform,
        num_workers=2,
        multiprocessing_context="fork",
    )
    with queue:
        patches = list(queue)
    assert len(patches) == 9
    for patch in patches:
        volume = expected[patch["name"]]
        slices = (slice(None), *patch[PATCH_LOCATION_KEY].to_slices())
        for name in ("t1", "t2", "seg", "brain"):
            assert patch[name].data.dtype == volume[name].data.dtype
            assert torch.equal(patch[name].data, volume[name].data[slices])


@pytest.mark.parametrize(
    "arguments", [{}, {"num_classes": 13}, {"num_classes": 3, "include": ["brain"]}]
)
def test_one_hot_matches_torchio(arguments: dict[str, Any]) -> None:
    """One channel per class in the label map's dtype, as TorchIO 1.2.1 makes it; scalar
    images untouched; the output described without voxels when ``num_classes`` is given."""
    data = volumes(0, torch.int16)
    result = OneHot(**arguments)(ours(data), torch.Generator())
    expected = tio.OneHot(**arguments)(theirs(data))
    for name, tensor in data.items():
        mine = result[name].data
        assert mine.dtype == tensor.dtype
        assert torch.equal(mine, expected[name].data.to(mine.dtype))
    assert result.seg.data.shape[0] == (1 if "include" in arguments else 13)  # labels 0 to 12
    affine = np.eye(4)
    images = {
        "t1": ImageSpec(sq.ScalarImage, 1, SHAPE[1:], torch.float32, affine),  # type: ignore[arg-type]
        "seg": ImageSpec(sq.LabelMap, 1, SHAPE[1:], torch.int16, affine),  # type: ignore[arg-type]
    }
    described = OneHot(num_classes=4).output_spec(images)
    assert described == {**images, "seg": dataclasses.replace(images["seg"], channels=4)}
    assert OneHot().output_spec(images) is UNKNOWN
    assert not OneHot(num_classes=4).is_random and OneHot(p=0.5).is_random
    assert OneHot(num_classes=4).memory_cost(images)[0].output == 4 * images["seg"].nbytes


def test_one_hot_refusals() -> None:
    with pytest.raises(ValueError, match="positive, or -1"):
        OneHot(num_classes=0)
    subject = ours(volumes(0))
    with pytest.raises(ValueError, match=r"labels 0 to 12 of 'seg'.*\[0, 5\)"):
        OneHot(num_classes=5)(subject, torch.Generator())
    subject["seg"] = sq.LabelMap(torch.zeros(2, *SHAPE[1:], dtype=torch.uint8))
    with pytest.raises(ValueError, match="one channel, but 'seg' has 2"):
        OneHot(include=["seg"])(subject, torch.Generator())


def test_one_hot_through_a_queue_with_workers() -> None:
    """``OneHot(num_classes=3)`` with workers: the ring holds 3 channels, and the patches are
    those of the in-process path, regions of the encoded volumes. Without ``num_classes`` the
    first subject is probed (3 channels); a later subject with a fourth label would need 4, and
    both paths refuse it when they run."""
    subjects = []
    for seed in range(3):
        generator = torch.Generator().manual_seed(seed)
        subjects.append(
            sq.Subject(
                t1=sq.ScalarImage(torch.rand(1, 10, 9, 8, generator=generator)),
                seg=sq.LabelMap(torch.randint(0, 3, (1, 10, 9, 8), generator=generator)),
                name=f"s{seed}",
            )
        )
    transform = sq.Compose([OneHot(num_classes=3), sq.Noise()])
    patches = {}
    for workers in (0, 2):
        queue = sq.Queue(
            subjects, sq.UniformSampler(None, 4), max_length=6, patches_per_volume=3,
            transform=transform, num_workers=workers, multiprocessing_context="fork", seed=7,
        )  # fmt: skip
        assert queue.layout.images["seg"] == (3, torch.int64)
        with queue:
            patches[workers] = {
                (patch["name"], patch[PATCH_LOCATION_KEY]): patch for patch in queue
            }
    assert patches[0].keys() == patches[2].keys() and len(patches[2]) == 9
    for (name, location), patch in patches[2].items():
        seg = OneHot(num_classes=3)(next(s for s in subjects if s["name"] == name)).seg.data
        assert patch["seg"].data.shape == (3, 4, 4, 4)
        assert torch.equal(patch["seg"].data, seg[(slice(None), *location.to_slices())])
        for image in ("t1", "seg"):
            assert torch.equal(patch[image].data, patches[0][name, location][image].data)
    fourth = subjects[2].seg.data.clone()
    fourth[0, 0, 0, 0] = 3
    subjects[2] = sq.Subject(t1=subjects[2].t1, seg=sq.LabelMap(fourth), name="s2")
    for workers in (0, 2):
        queue = sq.Queue(
            subjects, sq.UniformSampler(None, 4), max_length=6, patches_per_volume=3,
            transform=OneHot(), num_workers=workers, multiprocessing_context="fork",
        )  # fmt: skip
        assert queue.layout.images["seg"] == (3, torch.int64)
        with (
            queue,
            pytest.raises(
                sq.SubjectProcessingError, match=r"image 'seg' is 4 channels of torch\.int64"
            ),
        ):
            list(queue)


# Transforms that change the grid -----------------------------------------------------------------


def oblique_affine(seed: int) -> np.ndarray:
    """A non-trivial affine: a permutation with flips, scaled, slightly rotated, shifted."""
    rng = np.random.default_rng(seed)
    permutation = np.eye(3)[rng.permutation(3)] * rng.choice([-1.0, 1.0], 3)
    angle = rng.uniform(-0.3, 0.3)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation @ permutation @ np.diag(rng.uniform(0.5, 2.0, 3))
    affine[:3, 3] = rng.uniform(-50, 50, 3)
    return affine


def grid_subjects(seed: int, shape: tuple[int, int, int] = (9, 8, 7)) -> tuple[Any, Any]:
    """The same volumes, on one oblique grid, as a shmqueue and a TorchIO subject."""
    generator = torch.Generator().manual_seed(seed)
    affine = oblique_affine(seed)
    t1 = torch.randn((1, *shape), generator=generator)
    t2 = torch.rand((2, *shape), generator=generator) * 100
    seg = torch.zeros((1, *shape), dtype=torch.int16)
    region = tuple(slice(size // 4, size // 4 + size // 2) for size in shape)
    labels = torch.randint(1, 4, seg[(slice(None), *region)].shape, generator=generator)
    seg[(slice(None), *region)] = labels.short()
    mine = sq.Subject(
        t1=sq.ScalarImage(t1, affine=affine),
        t2=sq.ScalarImage(t2, affine=affine),
        seg=sq.LabelMap(seg, affine=affine),
    )
    reference = tio.Subject(
        t1=tio.ScalarImage(tensor=t1.clone(), affine=affine),
        t2=tio.ScalarImage(tensor=t2.clone(), affine=affine),
        seg=tio.LabelMap(tensor=seg.clone(), affine=affine),
    )
    return mine, reference


GRID_CASES: list[tuple[str, type[Transform], dict[str, Any]]] = [
    ("crop-1", Crop, {"cropping": 1}),
    ("crop-3", Crop, {"cropping": (1, 0, 2)}),
    ("crop-6", Crop, {"cropping": (0, 3, 1, 2, 2, 0)}),
    ("crop-include", Crop, {"cropping": 2, "include": ["seg"]}),
    ("pad-1", Pad, {"padding": 2}),
    ("pad-6", Pad, {"padding": (1, 0, 0, 3, 2, 1)}),
    ("pad-value", Pad, {"padding": (1, 2, 3), "padding_mode": -7.5}),
    ("pad-edge", Pad, {"padding": (2, 1, 0), "padding_mode": "edge"}),
    ("pad-reflect", Pad, {"padding": 3, "padding_mode": "reflect"}),
    ("pad-wrap", Pad, {"padding": 2, "padding_mode": "wrap"}),
    ("pad-mean", Pad, {"padding": 1, "padding_mode": "mean", "exclude": ["seg"]}),
    ("pad-median", Pad, {"padding": 1, "padding_mode": "median"}),
    ("pad-maximum", Pad, {"padding": 1, "padding_mode": "maximum"}),
    ("pad-minimum", Pad, {"padding": 1, "padding_mode": "minimum"}),
    ("crop-or-pad", CropOrPad, {"target_shape": (6, 11, 7)}),
    ("crop-or-pad-int", CropOrPad, {"target_shape": 8}),
    ("crop-or-pad-odd", CropOrPad, {"target_shape": (4, 5, 10), "padding_mode": "edge"}),
    ("crop-or-pad-none", CropOrPad, {"target_shape": (5, None, 12)}),
    ("crop-or-pad-mask", CropOrPad, {"target_shape": (6, 6, 9), "mask_name": "seg"}),
    ("crop-or-pad-mask-odd", CropOrPad, {"target_shape": (5, 7, 4), "mask_name": "seg"}),
    ("crop-or-pad-labels", CropOrPad, {"target_shape": (3, 3, 3), "mask_name": "seg",
                                       "labels": [2]}),
    ("multiple-pad", EnsureShapeMultiple, {"target_multiple": 4}),
    ("multiple-crop", EnsureShapeMultiple, {"target_multiple": (2, 3, 4), "method": "crop"}),
    ("canonical", ToCanonical, {}),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "arguments"),
    [case[1:] for case in GRID_CASES],
    ids=[case[0] for case in GRID_CASES],
)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.filterwarnings("ignore:The constant value computed:RuntimeWarning")
def test_grid_transforms_match_torchio(
    kind: type[Transform], arguments: dict[str, Any], seed: int
) -> None:
    """Voxels equal to TorchIO 1.2.1's, affines close; output_spec is the actual output."""
    subject, reference = grid_subjects(seed)
    inputs = {name: image.data.clone() for name, image in subject.images.items()}
    specs = {
        name: ImageSpec(type(image), image.num_channels, image.spatial_shape, image.dtype,
                        image.affine)
        for name, image in subject.images.items()
    }  # fmt: skip
    transform = kind(**arguments)
    result = transform(subject, torch.Generator())
    expected = getattr(tio, kind.__name__)(**arguments)(reference)
    predicted = transform.output_spec(specs)
    if arguments.get("mask_name") is not None:
        assert predicted is UNKNOWN
    for name, original in inputs.items():
        assert torch.equal(subject[name].data, original)  # never written into
        mine, theirs_ = result[name], expected[name]
        assert mine.data.dtype == original.dtype
        assert mine.data.shape == theirs_.data.shape
        if arguments.get("padding_mode") == "mean":
            # the mean is computed in float64, the same on any thread count (contract 2);
            # TorchIO's float32 mean differs from it in the last bits
            np.testing.assert_allclose(mine.data, theirs_.data, rtol=1e-6, atol=1e-6)
        else:
            assert torch.equal(mine.data, theirs_.data.to(mine.data.dtype))
        np.testing.assert_allclose(mine.affine, theirs_.affine, rtol=1e-12, atol=1e-9)
        if predicted is not UNKNOWN:
            spec = predicted[name]
            assert spec.spatial_shape == mine.spatial_shape
            assert np.array_equal(spec.affine, mine.affine)
            assert spec.channels == mine.num_channels
            assert spec.dtype == mine.data.dtype
            assert spec.kind is type(mine)


def world(affine: np.ndarray, index: tuple[int, int, int]) -> np.ndarray:
    return affine[:3, :3] @ np.asarray(index, dtype=np.float64) + affine[:3, 3]


@pytest.mark.parametrize("seed", range(12))
def test_to_canonical_keeps_world_positions(seed: int) -> None:
    """Each voxel's value is found at the same world position after reorientation."""
    subject, _ = grid_subjects(seed, (4, 5, 6))
    before = subject["t2"]
    after = ToCanonical()(subject, torch.Generator())["t2"]
    assert sorted(after.spatial_shape) == sorted(before.spatial_shape)
    inverse = np.linalg.inv(after.affine)
    for index in np.ndindex(*before.spatial_shape):
        position = inverse[:3, :3] @ world(before.affine, index) + inverse[:3, 3]
        moved = tuple(int(value) for value in np.rint(position))
        np.testing.assert_allclose(position, moved, atol=1e-6)
        assert torch.equal(after.data[(slice(None), *moved)], before.data[(slice(None), *index)])


AXIS_ORIENTATIONS = [
    (permutation, signs)
    for permutation in itertools.permutations(range(3))
    for signs in itertools.product((1.0, -1.0), repeat=3)
]  # all 48 ways the voxel axes can point along the world's


def axis_aligned_affine(permutation: tuple[int, ...], signs: tuple[float, ...]) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = 0
    for axis, (world_axis, sign) in enumerate(zip(permutation, signs)):
        affine[world_axis, axis] = sign * (1.0 + 0.25 * axis)  # anisotropic spacing
    affine[:3, 3] = (5.0, -3.0, 2.0)
    return affine


@pytest.mark.parametrize(("permutation", "signs"), AXIS_ORIENTATIONS)
@pytest.mark.parametrize("target", ["RAS", "LPS", "PIR"])
def test_reorient_keeps_every_voxels_world_position_from_all_48_orientations(
    permutation: tuple[int, ...], signs: tuple[float, ...], target: str
) -> None:
    affine = axis_aligned_affine(permutation, signs)
    data = torch.arange(3 * 4 * 5, dtype=torch.float32).reshape(1, 3, 4, 5)
    subject = sq.Subject(
        t1=sq.ScalarImage(data, affine=affine), seg=sq.LabelMap(data.short(), affine=affine)
    )
    transform = Reorient(target) if target != "RAS" else ToCanonical()
    result = transform(subject, torch.Generator())
    after = result.t1
    assert "".join(nib_orientations.aff2axcodes(after.affine)) == target
    inverse = np.linalg.inv(after.affine)
    for index in np.ndindex(3, 4, 5):
        position = inverse[:3, :3] @ world(affine, index) + inverse[:3, 3]
        moved = tuple(int(value) for value in np.rint(position))
        np.testing.assert_allclose(position, moved, atol=1e-9)
        assert after.data[(0, *moved)] == data[(0, *index)]
    predicted = transform.output_spec(subject_specs(subject))
    assert not isinstance(predicted, type(UNKNOWN))
    assert predicted["t1"].spatial_shape == after.spatial_shape
    np.testing.assert_array_equal(predicted["t1"].affine, after.affine)


@pytest.mark.parametrize("target", ["LPS", "PIR", "ras"])
def test_reorient_matches_torchio(target: str) -> None:
    subject, reference = grid_subjects(3, (4, 5, 6))
    mine = Reorient(target)(subject, torch.Generator())
    theirs = tio.ToOrientation(target.upper())(reference)
    for name in ("t1", "seg"):
        assert torch.equal(mine[name].data, theirs[name].data)
        np.testing.assert_allclose(mine[name].affine, theirs[name].affine, atol=1e-9)


@pytest.mark.parametrize("code", ["RA", "RAL", "XYZ", "RASR", 3])
def test_reorient_refuses_codes_that_are_not_orientations(code: Any) -> None:
    with pytest.raises(ValueError, match="one of R or L, one of A or P and one of S or I"):
        Reorient(code)


def test_crop_and_pad_keep_world_positions() -> None:
    subject, _ = grid_subjects(5)
    before = subject["t1"]
    cropped = Crop((1, 0, 2, 1, 0, 3))(subject, torch.Generator())["t1"]
    padded = Pad((2, 0, 1, 0, 0, 4))(subject, torch.Generator())["t1"]
    np.testing.assert_allclose(world(cropped.affine, (0, 0, 0)), world(before.affine, (1, 2, 0)))
    np.testing.assert_allclose(world(padded.affine, (2, 1, 0)), world(before.affine, (0, 0, 0)))
    assert torch.equal(padded.data[:, 2:11, 1:9, 0:7], before.data)


def test_grid_transforms_describe_themselves() -> None:
    for transform in (Crop(1), Pad(2), CropOrPad(8), EnsureShapeMultiple(4), ToCanonical()):
        assert not transform.is_random
        assert transform.locality == Locality(0, moves_voxels=True)
    assert Crop(1, p=0.5).is_random
    assert CropOrPad(8, mask_name="seg").locality == WHOLE_VOLUME
    assert Pad(1, padding_mode="mean").locality == Locality(0, True, True)
    spec = ImageSpec(sq.ScalarImage, 2, (10, 6, 8), torch.float32, oblique_affine(0))
    label = ImageSpec(sq.LabelMap, 1, (10, 6, 8), torch.int16, oblique_affine(0))
    costs = CropOrPad((8, 8, 8)).memory_cost({"t2": spec, "seg": label})
    assert [(cost.image, cost.peak, cost.output) for cost in costs] == [
        ("t2", 2 * 512 * 4, 2 * 512 * 4),
        ("seg", 512 * 2, 512 * 2),
    ]
    assert CropOrPad(8, mask_name="seg").output_spec({"t2": spec}) is UNKNOWN


def test_grid_transform_refusals() -> None:
    with pytest.raises(ValueError, match="cropping"):
        Crop((1, 2))
    with pytest.raises(ValueError, match="padding"):
        Pad(-1)
    with pytest.raises(KeyError, match="Padding mode"):
        Pad(1, padding_mode="nearest")
    with pytest.raises(ValueError, match="target_shape"):
        CropOrPad((8, 8))
    with pytest.raises(ValueError, match="labels"):
        CropOrPad(8, labels=[1])
    with pytest.raises(ValueError, match="Method"):
        EnsureShapeMultiple(8, method="resample")
    subject, _ = grid_subjects(0)
    with pytest.raises(ValueError, match="cannot crop"):
        Crop(5)(subject, torch.Generator())
    assert Crop(5).output_spec({"t1": ImageSpec(sq.ScalarImage, 1, (9, 8, 7), torch.float32,
                                                np.eye(4))}) is UNKNOWN  # fmt: skip


def test_crop_or_pad_mask_falls_back_to_the_centre() -> None:
    subject, _ = grid_subjects(0)
    subject["seg"] = subject["seg"].with_data(torch.zeros_like(subject["seg"].data))
    with pytest.warns(RuntimeWarning, match="are zero"):
        masked = CropOrPad(6, mask_name="seg")(subject, torch.Generator())
    centred = CropOrPad(6)(subject, torch.Generator())
    assert torch.equal(masked["t1"].data, centred["t1"].data)
    with pytest.warns(RuntimeWarning, match="not found"):
        CropOrPad(6, mask_name="brain")(subject, torch.Generator())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_crop_or_pad_through_a_queue(num_workers: int) -> None:
    """Subjects of different shapes cropped or padded to one: patches from fork-started
    workers, and in-process, are regions of the volumes transformed in-process."""
    shapes = [(20, 12, 16), (9, 16, 25), (16, 16, 16)]
    subjects = []
    for index, shape in enumerate(shapes):
        subject, _ = grid_subjects(index, shape)
        subject["name"] = f"s{index}"
        subjects.append(subject)
    transform = CropOrPad((16, 16, 16))
    expected = {subject["name"]: transform(subject, torch.Generator()) for subject in subjects}
    queue = sq.Queue(
        subjects,
        sq.UniformSampler(None, (8, 8, 8)),
        max_length=6,
        patches_per_volume=3,
        transform=transform,
        num_workers=num_workers,
        multiprocessing_context="fork",
    )
    with queue:
        patches = list(queue)
    assert len(patches) == 9
    for patch in patches:
        volume = expected[patch["name"]]
        slices = (slice(None), *patch[PATCH_LOCATION_KEY].to_slices())
        for name in ("t1", "t2", "seg"):
            assert patch[name].data.dtype == volume[name].data.dtype
            assert torch.equal(patch[name].data, volume[name].data[slices])
