"""Transforms: exact results, randomness only from the caller's generator, inputs never modified."""

from __future__ import annotations

import dataclasses
from itertools import combinations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shmqueue.augmentation import Flip, Noise
from shmqueue.image import LabelMap, ScalarImage
from shmqueue.preprocessing import RescaleIntensity, ZNormalization
from shmqueue.specs import UNKNOWN, VOXELWISE, WHOLE_VOLUME, ImageSpec, Locality
from shmqueue.subject import Subject
from shmqueue.transforms import (
    Compose,
    Lambda,
    SubjectTransform,
    Transform,
    apply_transform,
    described,
    transform_steps,
)

ALL_AXES = [axes for count in (1, 2, 3) for axes in combinations((0, 1, 2), count)]


def make_subject(shape: tuple[int, int, int] = (5, 4, 3), channels: int = 2) -> Subject:
    voxels = channels * shape[0] * shape[1] * shape[2]
    t1 = torch.arange(voxels, dtype=torch.float32).reshape(channels, *shape)
    seg = (torch.arange(voxels // channels) % 4).reshape(1, *shape).to(torch.uint8)
    return Subject(t1=ScalarImage(t1), seg=LabelMap(seg), name="sub-01")


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def snapshot(subject: Subject) -> dict[str, torch.Tensor]:
    return {name: image.data.clone() for name, image in subject.images.items()}


def assert_unchanged(subject: Subject, before: dict[str, torch.Tensor]) -> None:
    for name, data in before.items():
        assert torch.equal(subject[name].data, data)


# Flip ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("axes", ALL_AXES)
def test_flip_matches_numpy_flip(axes: tuple[int, ...]) -> None:
    subject = make_subject()
    before = snapshot(subject)
    flipped = Flip(axes=axes)(subject, seeded(0))
    for name, data in before.items():
        expected = np.flip(data.numpy(), axis=[axis + 1 for axis in axes])
        np.testing.assert_array_equal(flipped[name].data.numpy(), expected)
        assert flipped[name].data.dtype == data.dtype
        assert type(flipped[name]) is type(subject[name])
    assert flipped.name == "sub-01"
    assert_unchanged(subject, before)


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(*(st.integers(1, 5),) * 3),
    axes=st.sampled_from(ALL_AXES),
    seed=st.integers(0, 2**32),
)
def test_flip_twice_is_identity(
    shape: tuple[int, int, int], axes: tuple[int, ...], seed: int
) -> None:
    subject = make_subject(shape, channels=1)
    flip = Flip(axes=axes)
    twice = flip(flip(subject, seeded(seed)), seeded(seed))
    for name, image in subject.images.items():
        assert torch.equal(twice[name].data, image.data)


def test_flip_with_probability_draws_from_the_generator() -> None:
    subject = make_subject()
    flip = Flip(axes=(0,), p=0.5)
    outcomes = set()
    for seed in range(20):
        first = flip(subject, seeded(seed)).t1.data
        assert torch.equal(first, flip(subject, seeded(seed)).t1.data)
        outcomes.add(torch.equal(first, subject.t1.data))
    assert outcomes == {True, False}


@pytest.mark.parametrize("axes", [(), (3,), (-1,)])
def test_flip_rejects_non_spatial_axes(axes: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="spatial axes"):
        Flip(axes=axes)


# Noise --------------------------------------------------------------------------------------------


def test_noise_is_reproducible_from_the_generator_and_spares_label_maps() -> None:
    subject = make_subject((16, 16, 16))
    before = snapshot(subject)
    noise = Noise(mean=0.5, std=2.0)
    first = noise(subject, seeded(1))
    again = noise(subject, seeded(1))
    other = noise(subject, seeded(2))
    assert torch.equal(first.t1.data, again.t1.data)
    assert not torch.equal(first.t1.data, other.t1.data)
    assert first.t1.data.dtype == torch.float32
    assert first.seg.data is subject.seg.data
    assert_unchanged(subject, before)
    added = first.t1.data - subject.t1.data
    assert abs(float(added.mean()) - 0.5) < 0.1
    assert abs(float(added.std()) - 2.0) < 0.1


def test_noise_rejects_negative_std() -> None:
    with pytest.raises(ValueError, match="std"):
        Noise(std=-1.0)


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_probability_must_be_in_unit_interval(p: float) -> None:
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Noise(p=p)


# Compose, intensity transforms, Lambda ------------------------------------------------------------


def test_compose_applies_in_order_with_one_generator() -> None:
    subject = make_subject()
    transforms: list[Transform] = [Flip(axes=(1,), p=0.5), Noise(std=0.3), Flip(axes=(2,), p=0.5)]
    for seed in range(5):
        composed = Compose(transforms)(subject, seeded(seed))
        generator = seeded(seed)
        expected = subject
        for transform in transforms:
            expected = transform(expected, generator)
        assert torch.equal(composed.t1.data, expected.t1.data)
        assert torch.equal(composed.seg.data, expected.seg.data)


@given(seed=st.integers(0, 2**32), outer_p=st.sampled_from([1.0, 0.5]))
@settings(max_examples=30, deadline=None)
def test_steps_of_a_compose_give_the_compose_result(seed: int, outer_p: float) -> None:
    """Applying transform_steps one by one draws the same numbers as the (nested) Compose."""
    inner = Compose([Noise(std=0.2), Flip(axes=(2,), p=0.5)], p=0.5)
    transform = Compose([Flip(axes=(0,), p=0.5), inner, Noise(std=0.1, p=0.7)], p=outer_p)
    subject = make_subject()
    expected = transform(subject, seeded(seed))
    generator = seeded(seed)
    stepped = subject
    steps = list(transform_steps(transform, seeded(seed)))
    assert all(type(step) is not Compose for step in steps)
    for step in transform_steps(transform, generator):
        stepped = apply_transform(step, stepped, generator)
    assert torch.equal(stepped.t1.data, expected.t1.data)
    assert torch.equal(stepped.seg.data, expected.seg.data)
    assert list(transform_steps(None, generator)) == []


def test_compose_accepts_plain_callables() -> None:
    def double(subject: Subject) -> Subject:
        return Subject({**subject, "t1": subject.t1.with_data(subject.t1.data * 2)})

    subject = make_subject()
    result = Compose([double, Flip(axes=(0,))])(subject, seeded(0))
    assert torch.equal(result.t1.data, torch.flip(subject.t1.data * 2, [1]))


def test_apply_transform_checks_the_result_of_a_callable() -> None:
    subject = make_subject()
    assert apply_transform(None, subject, seeded(0)) is subject
    with pytest.raises(TypeError, match="not a Subject"):
        apply_transform(lambda s: s.t1, subject, seeded(0))


def test_transform_without_generator_still_runs() -> None:
    subject = make_subject()
    assert not torch.equal(Noise()(subject).t1.data, subject.t1.data)


def test_z_normalization_standardises_the_image() -> None:
    """All channels together, as TorchIO does; a constant image is only centred."""
    t1 = torch.stack([torch.arange(60.0).reshape(5, 4, 3) * 3 + 7, torch.full((5, 4, 3), 9.0)])
    subject = Subject(t1=ScalarImage(t1), seg=LabelMap(torch.ones(1, 5, 4, 3)))
    result = ZNormalization()(subject, seeded(0))
    assert torch.allclose(result.t1.data.mean(), torch.tensor(0.0), atol=1e-5)
    assert torch.allclose(result.t1.data.std(), torch.tensor(1.0), atol=1e-5)
    assert result.seg.data is subject.seg.data
    constant = Subject(t1=ScalarImage(torch.full((1, 2, 2, 2), 5.0)))
    assert torch.equal(ZNormalization()(constant).t1.data, torch.zeros(1, 2, 2, 2))


def test_rescale_intensity_maps_the_range() -> None:
    subject = make_subject()
    result = RescaleIntensity((-1.0, 1.0))(subject, seeded(0))
    assert float(result.t1.data.min()) == -1.0
    assert float(result.t1.data.max()) == pytest.approx(1.0)
    constant = Subject(t1=ScalarImage(torch.full((1, 2, 2, 2), 5.0)))
    assert torch.equal(
        RescaleIntensity((2.0, 3.0))(constant).t1.data, torch.full_like(constant.t1.data, 2.0)
    )
    with pytest.raises(ValueError, match="increasing"):
        RescaleIntensity((1.0, 0.0))


def test_lambda_applies_to_the_requested_kinds() -> None:
    subject = make_subject()
    every = Lambda(lambda data: data + 1)(subject, seeded(0))
    scalars = Lambda(lambda data: data + 1, types_to_apply=(ScalarImage,))(subject, seeded(0))
    assert torch.equal(every.seg.data, subject.seg.data + 1)
    assert torch.equal(scalars.t1.data, subject.t1.data + 1)
    assert scalars.seg.data is subject.seg.data


def test_repr_names_the_parameters() -> None:
    assert repr(Noise(std=0.2)) == "Noise(p=1.0, mean=0.0, std=0.2)"


# What transforms say of themselves -----------------------------------------------------------

SHAPE = (5, 4, 3)
AFFINE = np.diag([0.5, 1.0, 2.0, 1.0])


def described_subject() -> dict[str, ImageSpec]:
    """The description of :func:`make_subject`'s images, before any voxel is read."""
    return {
        "t1": ImageSpec(ScalarImage, 2, SHAPE, torch.float32, AFFINE),
        "seg": ImageSpec(LabelMap, 1, SHAPE, torch.uint8, AFFINE),
    }


def made_by(transform: Transform) -> dict[str, ImageSpec]:
    """The description of what ``transform`` actually makes of the subject."""
    subject = make_subject()
    for image in subject.images.values():
        image._header = dataclasses.replace(image.header, affine=AFFINE)
    output = transform(subject, seeded(0))
    return {
        name: ImageSpec(
            type(image), image.num_channels, image.spatial_shape, image.dtype, image.affine
        )
        for name, image in output.images.items()
    }


KNOWN = [Flip(axes=(0, 2)), Noise(), ZNormalization(), RescaleIntensity((0.0, 2.0))]


@pytest.mark.parametrize("transform", [*KNOWN, Compose(KNOWN)], ids=repr)
def test_the_described_output_is_what_the_transform_makes(transform: Transform) -> None:
    assert transform.output_spec(described_subject()) == made_by(transform)


@pytest.mark.parametrize(
    "transform",
    [
        Lambda(lambda data: data[:1]),
        Transform(),
        Compose([Flip(), Lambda(lambda data: data), Noise()]),
    ],
    ids=repr,
)
def test_a_transform_that_cannot_tell_says_unknown(transform: Transform) -> None:
    assert transform.output_spec(described_subject()) is UNKNOWN
    assert described(lambda subject: subject).output_spec(described_subject()) is UNKNOWN


def test_random_transforms_say_so() -> None:
    assert Noise().is_random and Transform().is_random
    assert not Flip().is_random and Flip(p=0.5).is_random
    assert not ZNormalization().is_random and not RescaleIntensity().is_random
    assert not Lambda(lambda data: data).is_random
    assert not Compose([Flip(), ZNormalization()]).is_random
    assert Compose([Flip(), ZNormalization()], p=0.5).is_random
    assert Compose([Flip(), Noise()]).is_random
    assert described(lambda subject: subject).is_random  # a plain callable cannot tell


def test_locality_says_how_much_of_the_volume_a_patch_needs() -> None:
    assert Noise().locality == VOXELWISE
    assert Flip().locality == Locality(0, moves_voxels=True)
    assert ZNormalization().locality == Locality(0, statistics=True)
    assert Lambda(lambda data: data).locality == WHOLE_VOLUME
    assert not described(lambda subject: subject).locality.patchwise
    assert Compose([Flip(), Noise(), ZNormalization()]).locality == Locality(
        0, statistics=True, moves_voxels=True
    )
    assert Compose([Noise(), Lambda(lambda data: data)]).locality == WHOLE_VOLUME
    assert Locality(1).then(Locality(2)) == Locality(3)


def test_memory_cost_in_volumes_of_the_images_touched() -> None:
    """On the whole volume, an augmentation makes every image it applies to anew (Flip all of
    them, Noise the scalar images) with a slab's input and result in flight (here the whole
    volume: it is smaller than a slab); the intensity maps make one volume per scalar image (two
    with a mask: the masked voxels' copy); a Lambda two of the images it applies to; an unknown
    transform two of all."""
    images = described_subject()
    t1, seg = images["t1"].nbytes, images["seg"].nbytes

    def costs(transform: SubjectTransform) -> list[tuple[str, int, int]]:
        return [(c.image, c.peak, c.output) for c in described(transform).memory_cost(images)]

    assert costs(Flip()) == [("t1", 3 * t1, t1), ("seg", 3 * seg, seg)]
    assert costs(Noise()) == [("t1", 3 * t1, t1)]
    assert costs(ZNormalization()) == costs(RescaleIntensity()) == [("t1", t1, t1)]
    mask = t1 // 4  # a bool per float32 voxel
    assert costs(ZNormalization(masking_method="seg")) == [("t1", 2 * t1 + mask, t1)]
    assert costs(Lambda(lambda data: data, types_to_apply=(LabelMap,))) == [("seg", 2 * seg, seg)]
    assert costs(lambda subject: subject) == [("t1", 2 * t1, t1), ("seg", 2 * seg, seg)]
    assert costs(Compose([Flip(), Noise()])) == [*costs(Flip()), *costs(Noise())]


def test_transform_steps_without_a_generator_list_every_step() -> None:
    """What the estimator walks: every Compose unpacked, as if each happened."""
    flip, noise, normalise = Flip(p=0.5), Noise(), ZNormalization()
    transform = Compose([flip, Compose([noise], p=0.0), normalise], p=0.0)
    assert list(transform_steps(transform)) == [flip, noise, normalise]
    assert list(transform_steps(transform, seeded(0))) == []


def test_whole_volume_statistics_do_not_depend_on_the_thread_count() -> None:
    """Workers run one torch thread, the training process several: a mean or a standard
    deviation that differed in its last bit would make their patches differ (contract 2)."""
    from shmqueue.reductions import channel_means, mean_and_std

    volume = torch.randn((2, 96, 96, 96), generator=torch.Generator().manual_seed(0)) * 300 + 7
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 4):
            torch.set_num_threads(count)
            results.append((mean_and_std(volume), channel_means(volume).tolist()))
    finally:
        torch.set_num_threads(threads)
    assert results[0] == results[1] == results[2]
    (centre, spread), _ = results[0]
    assert abs(centre - 7) < 1 and abs(spread - 300) < 1
