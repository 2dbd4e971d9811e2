"""Uniform, Weighted and Label samplers, PatchLocation and extract_patch; what every sampler
says of its working memory."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shmqueue.errors import PatchSizeError, SamplingError
from shmqueue.image import LabelMap, ScalarImage
from shmqueue.sampling.base import (
    PATCH_LOCATION_KEY,
    PatchLocation,
    PatchSampler,
    as_patch_size,
    extract_patch,
)
from shmqueue.sampling.grid import GridSampler
from shmqueue.sampling.uniform import UniformSampler
from shmqueue.sampling.weighted import LabelSampler, WeightedSampler
from shmqueue.specs import ImageSpec
from shmqueue.subject import Subject

Triple = tuple[int, int, int]
AFFINE = np.array(
    [[0.0, -1.5, 0.0, 10.0], [2.0, 0.0, 0.0, -4.0], [0.0, 0.0, 0.5, 7.0], [0.0, 0.0, 0.0, 1.0]]
)


def position_subject(shape: Triple, **images: ScalarImage | LabelMap) -> Subject:
    """A subject whose t1 voxel value is its flat index, so a patch shows where it came from."""
    t1 = torch.arange(shape[0] * shape[1] * shape[2], dtype=torch.float32).reshape(1, *shape)
    return Subject(t1=ScalarImage(t1, affine=AFFINE), name="sub-01", age=30, **images)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def inside(location: PatchLocation, shape: Triple) -> bool:
    return all(i >= 0 and i + s <= n for i, s, n in zip(location.index, location.size, shape))


def centre(location: PatchLocation) -> Triple:
    i, j, k = (i + s // 2 for i, s in zip(location.index, location.size))
    return (i, j, k)


# PatchLocation and extract_patch ------------------------------------------------------------------


def test_patch_location_slices_and_stop() -> None:
    location = PatchLocation((1, 2, 3), (4, 5, 6))
    assert location.stop == (5, 7, 9)
    assert location.to_slices() == (slice(1, 5), slice(2, 7), slice(3, 9))


@pytest.mark.parametrize(("given_size", "expected"), [(4, (4, 4, 4)), ((4, 5, 1), (4, 5, 1))])
def test_as_patch_size(given_size: int | Triple, expected: Triple) -> None:
    assert as_patch_size(given_size) == expected


@pytest.mark.parametrize("bad", [0, -1, (4, 4), (4, 0, 4), (1, 2, 3, 4)])
def test_as_patch_size_rejects_bad_sizes(bad: int | tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="patch_size"):
        as_patch_size(bad)


def test_extract_patch_copies_regions_shifts_affines_and_keeps_metadata() -> None:
    seg = LabelMap(torch.randint(0, 3, (1, 8, 7, 6), dtype=torch.int16), affine=AFFINE)
    subject = position_subject((8, 7, 6), seg=seg)
    location = PatchLocation((2, 1, 3), (4, 5, 2))
    patch = extract_patch(subject, location)
    for name in ("t1", "seg"):
        region = subject[name].data[(slice(None), *location.to_slices())]
        assert torch.equal(patch[name].data, region)
        assert patch[name].data.dtype == subject[name].data.dtype
        assert patch[name].data.untyped_storage().data_ptr() != (
            subject[name].data.untyped_storage().data_ptr()
        )
        origin = patch[name].affine @ np.array([0, 0, 0, 1.0])
        np.testing.assert_allclose(origin, AFFINE @ np.array([*location.index, 1.0]))
    assert patch.name == "sub-01"
    assert patch.age == 30
    assert patch[PATCH_LOCATION_KEY] == location


# UniformSampler -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    shape=st.tuples(*(st.integers(1, 12),) * 3),
    seed=st.integers(0, 2**32),
)
def test_uniform_locations_lie_inside_the_volume(
    data: st.DataObject, shape: Triple, seed: int
) -> None:
    patch_size = tuple(data.draw(st.integers(1, n)) for n in shape)
    subject = position_subject(shape)
    sampler = UniformSampler(subject, patch_size)
    locations = sampler.locations(subject, 20, seeded(seed))
    assert len(locations) == 20
    assert all(inside(location, shape) and location.size == patch_size for location in locations)
    assert locations == sampler.locations(subject, 20, seeded(seed))


def test_uniform_reaches_every_position() -> None:
    subject = position_subject((6, 5, 4))
    sampler = UniformSampler(subject, (3, 3, 3))
    starts = {location.index for location in sampler.locations(subject, 2000, seeded(0))}
    assert starts == {(i, j, k) for i in range(4) for j in range(3) for k in range(2)}


def test_uniform_patches_hold_the_region_at_their_location() -> None:
    shape = (10, 9, 8)
    subject = position_subject(shape)
    sampler = UniformSampler(subject, (4, 3, 2), num_patches=5)
    patches = list(sampler)
    assert len(patches) == 5
    volume = subject.t1.data[0]
    for patch in patches:
        location = patch[PATCH_LOCATION_KEY]
        i, j, k = location.index
        # Voxel values encode position: the first voxel says where the patch starts.
        assert int(patch.t1.data[0, 0, 0, 0]) == (i * shape[1] + j) * shape[2] + k
        assert torch.equal(patch.t1.data[0], volume[location.to_slices()])


def test_sampler_call_draws_the_requested_number() -> None:
    subject = position_subject((8, 8, 8))
    sampler = UniformSampler(None, 4)
    assert len(list(sampler(subject, 3, seeded(0)))) == 3
    endless = sampler(subject)
    assert all(next(endless)[PATCH_LOCATION_KEY].size == (4, 4, 4) for _ in range(5))


def test_sampler_without_subject_cannot_be_iterated() -> None:
    with pytest.raises(TypeError, match="without a subject"):
        iter(UniformSampler(None, 4))


def test_patch_larger_than_volume_names_subject_and_suggests_padding() -> None:
    subject = position_subject((8, 16, 8))
    with pytest.raises(PatchSizeError) as raised:
        UniformSampler(subject, (4, 4, 12))
    message = str(raised.value)
    for expected in ("(4, 4, 12)", "(8, 16, 8)", "sub-01", "axis [2]", "pad"):
        assert expected in message


# WeightedSampler ----------------------------------------------------------------------------------


def probability_subject(shape: Triple, weights: dict[Triple, float]) -> Subject:
    probability = torch.zeros(1, *shape)
    for voxel, weight in weights.items():
        probability[(0, *voxel)] = weight
    return position_subject(shape, prob=ScalarImage(probability))


def test_weighted_centres_patches_on_the_only_positive_voxel() -> None:
    subject = probability_subject((9, 8, 7), {(4, 5, 3): 1.0})
    sampler = WeightedSampler(subject, (3, 4, 5), probability_map="prob")
    locations = sampler.locations(subject, 10, seeded(0))
    assert all(centre(location) == (4, 5, 3) for location in locations)
    assert all(inside(location, (9, 8, 7)) for location in locations)


def test_weighted_follows_the_weights() -> None:
    subject = probability_subject((8, 8, 8), {(3, 3, 3): 1.0, (5, 4, 4): 3.0, (0, 0, 0): 100.0})
    sampler = WeightedSampler(subject, 3, probability_map="prob")
    counts = Counter(centre(location) for location in sampler.locations(subject, 4000, seeded(0)))
    # (0, 0, 0) cannot centre a whole patch, so its weight is ignored.
    assert set(counts) == {(3, 3, 3), (5, 4, 4)}
    assert 0.7 < counts[(5, 4, 4)] / 4000 < 0.8


@pytest.mark.parametrize(
    ("weights", "message"),
    [
        ({}, "zero everywhere"),
        ({(0, 0, 0): 1.0, (7, 7, 7): 1.0}, "zero everywhere"),  # only where no patch fits
        ({(4, 4, 4): -1.0}, "negative"),
    ],
    ids=["all-zero", "only-at-border", "negative"],
)
def test_weighted_rejects_unusable_maps(weights: dict[Triple, float], message: str) -> None:
    subject = probability_subject((8, 8, 8), weights)
    sampler = WeightedSampler(subject, 4, probability_map="prob")
    with pytest.raises(SamplingError, match=rf"'prob' of subject 'sub-01'.*{message}"):
        sampler.locations(subject, 1, seeded(0))


def test_weighted_needs_the_named_map() -> None:
    subject = position_subject((8, 8, 8))
    with pytest.raises(SamplingError, match=r"no image named 'prob'.*\['t1'\]"):
        WeightedSampler(subject, 4, probability_map="prob").locations(subject, 1, seeded(0))


# LabelSampler -------------------------------------------------------------------------------------


def label_subject() -> Subject:
    labels = torch.zeros(1, 12, 12, 12, dtype=torch.uint8)
    labels[0, 2:5, 3:6, 4:8] = 1
    labels[0, 7:9, 6:10, 5:7] = 2
    return position_subject((12, 12, 12), seg=LabelMap(labels))


def test_label_sampler_centres_on_foreground() -> None:
    subject = label_subject()
    patches = list(LabelSampler(subject, 3, "seg", num_patches=50))
    for patch in patches:
        assert int(patch.seg.data[0, 1, 1, 1]) > 0
        assert patch.seg.data.dtype == torch.uint8


def test_label_probabilities_choose_the_label() -> None:
    subject = label_subject()
    only_two = LabelSampler(subject, 3, "seg", label_probabilities={2: 1.0, 1: 0.0})
    for location in only_two.locations(subject, 30, seeded(0)):
        assert int(subject.seg.data[(0, *centre(location))]) == 2
    weighted = LabelSampler(subject, 3, "seg", label_probabilities={1: 1.0, 2: 3.0})
    labels = Counter(
        int(subject.seg.data[(0, *centre(location))])
        for location in weighted.locations(subject, 4000, seeded(0))
    )
    # Per label, not per voxel: label 1 has 36 voxels and label 2 only 16.
    assert set(labels) == {1, 2}
    assert 0.7 < labels[2] / 4000 < 0.8


def test_label_sampler_reads_one_hot_channels_as_labels() -> None:
    one_hot = torch.zeros(3, 10, 10, 10, dtype=torch.uint8)
    one_hot[0] = 1
    one_hot[0, 5, 5, 5], one_hot[2, 5, 5, 5] = 0, 1
    subject = position_subject((10, 10, 10), seg=LabelMap(one_hot))
    sampler = LabelSampler(subject, 3, "seg", label_probabilities={2: 1.0})
    assert {centre(loc) for loc in sampler.locations(subject, 10, seeded(0))} == {(5, 5, 5)}


def test_absent_labels_name_the_labels_and_the_subject() -> None:
    subject = label_subject()
    sampler = LabelSampler(subject, 3, "seg", label_probabilities={1: 0.5, 3: 0.5, 9: 1.0})
    with pytest.raises(SamplingError) as raised:
        sampler.locations(subject, 1, seeded(0))
    message = str(raised.value)
    for expected in ("[3, 9]", "'seg'", "sub-01", "labels present: [0, 1, 2]"):
        assert expected in message


def test_label_sampler_needs_foreground_and_a_label_map() -> None:
    empty = position_subject((8, 8, 8), seg=LabelMap(torch.zeros(1, 8, 8, 8)))
    with pytest.raises(SamplingError, match="zero everywhere"):
        LabelSampler(empty, 3, "seg").locations(empty, 1, seeded(0))
    with pytest.raises(SamplingError, match=r"no LabelMap named 't1'.*ScalarImage"):
        LabelSampler(empty, 3, "t1").locations(empty, 1, seeded(0))
    with pytest.raises(ValueError, match=">= 0"):
        LabelSampler(empty, 3, "seg", label_probabilities={1: -1.0})


# Working memory, stated from the subject's description ------------------------------------------


def test_samplers_state_their_working_memory() -> None:
    """Per voxel: drawing from a map holds the float32 map, its float64 crop, their cumulative
    sum and a boolean test (21 bytes); a map of another dtype is converted to float32 first; a
    one-hot label map is reduced by an int64 argmax; the grid pads every image at once (and the
    index-based modes copy the largest once more); a sampler that says nothing is charged as
    much as the label sampler's worst case."""
    shape = (10, 8, 6)
    voxels = 10 * 8 * 6

    def spec(kind: type, channels: int, dtype: torch.dtype) -> ImageSpec:
        return ImageSpec(kind, channels, shape, dtype, np.eye(4))

    images = {
        "t1": spec(ScalarImage, 1, torch.float32),
        "prob": spec(ScalarImage, 5, torch.float64),
        "seg": spec(LabelMap, 1, torch.uint8),
        "onehot": spec(LabelMap, 4, torch.uint8),
    }
    assert UniformSampler(None, 4).memory_cost(images) == 0
    assert WeightedSampler(None, 4, "t1").memory_cost(images) == 21 * voxels
    assert WeightedSampler(None, 4, "prob").memory_cost(images) == (5 * 4 + 4) * voxels
    assert LabelSampler(None, 4, "seg").memory_cost(images) == 21 * voxels
    assert LabelSampler(None, 4, "onehot").memory_cost(images) == (21 + 8) * voxels
    assert GridSampler(None, 4).memory_cost(images) == 0
    padded = 12 * 10 * 8  # padding_mode pads by half the overlap on each side
    image_bytes = [1 * 4 * padded, 5 * 8 * padded, 1 * padded, 4 * padded]
    assert GridSampler(None, 4, 2, "constant").memory_cost(images) == sum(image_bytes)
    reflected = GridSampler(None, 4, 2, "reflect").memory_cost(images)
    assert reflected == sum(image_bytes) + max(image_bytes)

    class Unstated(PatchSampler):
        def locations(
            self, subject: Subject, num_patches: int, generator: torch.Generator
        ) -> list[PatchLocation]:
            return []

    assert Unstated(None, 4).memory_cost(images) == (21 + 8) * voxels
