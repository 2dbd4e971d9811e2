"""The preprocessing and label transforms against TorchIO 1.2.1 on the same random volumes, and
through a queue with workers."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

import shmqueue as sq
from shmqueue.preprocessing import (
    Clamp,
    Mask,
    OneHot,
    RemapLabels,
    RemoveLabels,
    RescaleIntensity,
    SequentialLabels,
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
    ring cannot know the channels: both paths refuse it when they run."""
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
    for workers in (0, 2):
        queue = sq.Queue(
            subjects, sq.UniformSampler(None, 4), max_length=6, patches_per_volume=3,
            transform=OneHot(), num_workers=workers, multiprocessing_context="fork",
        )  # fmt: skip
        with (
            queue,
            pytest.raises(
                sq.SubjectProcessingError, match=r"image 'seg' is 3 channels of torch\.int64"
            ),
        ):
            list(queue)
