"""Intensity augmentations: TorchIO's and nnU-Net's results for the same parameters, their
parameters' ranges and distributions, ``p``, include/exclude, and patches equal to the whole
volume's result cropped (contract 11)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as functional
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

import shmqueue as sq
from shmqueue.augmentation.deferred import DeferredVoxels
from shmqueue.augmentation.intensity import (
    MultiplyBiasField,
    ResampleAxis,
    anisotropy_sources,
    coarse_length,
    gaussian_radius,
    monomials,
)
from shmqueue.augmentation.operations import Selection, subject_specs
from shmqueue.pipeline import SubjectPipeline
from shmqueue.plan import SubjectTask
from shmqueue.specs import Locality

SHAPE = (23, 20, 16)
SPACING = np.diag([1.0, 1.5, 0.8, 1.0])
SCALARS = Selection((sq.ScalarImage,))


def smooth_volume(
    shape: tuple[int, int, int] = SHAPE, seed: int = 0, channels: int = 1
) -> torch.Tensor:
    """A smooth random volume with some fine texture, values in about [-10, 110]."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand((1, channels, 4, 4, 4), generator=generator)
    volume = functional.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return volume[0] * 100 + torch.rand((channels, *shape), generator=generator) * 20 - 10


def subject_with(seed: int = 0, affine: np.ndarray = SPACING) -> sq.Subject:
    """Two scalar images (t1 with two channels) and a label map."""
    t1 = smooth_volume(seed=seed, channels=2)
    seg = (t1[:1] > 40).to(torch.uint8) + (t1[:1] > 70).to(torch.uint8)
    return sq.Subject(
        t1=sq.ScalarImage(t1, affine=affine),
        t2=sq.ScalarImage(smooth_volume(seed=seed + 100), affine=affine),
        seg=sq.LabelMap(seg, affine=affine),
        name="s",
    )


def drawn(transform: sq.Augmentation, subject: sq.Subject, seed: int) -> list[Any]:
    return transform.operations(subject_specs(subject), torch.Generator().manual_seed(seed))


def torchio() -> Any:
    return pytest.importorskip("torchio")


# The same results as TorchIO and nnU-Net for the same parameters ---------------------------------


@pytest.mark.parametrize("order", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("shape", [SHAPE, (8, 1, 9)])
def test_bias_field_is_torchio_1s_for_the_same_coefficients(
    order: int, shape: tuple[int, int, int]
) -> None:
    data = smooth_volume(shape, channels=2)
    generator = torch.Generator().manual_seed(order)
    coefficients = ((torch.rand(len(monomials(order)), generator=generator) - 0.5) * 0.8).tolist()
    operation = MultiplyBiasField(SCALARS, coefficients, order, shape)
    ours = DeferredVoxels(data, "t1", sq.ScalarImage, [operation]).whole()
    image = torchio().ScalarImage(tensor=data)
    theirs = torchio().BiasField(coefficients=coefficients, order=order)(image).data
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_random_bias_field_draws_what_torchio_would_apply() -> None:
    subject = subject_with()
    (operation,) = drawn(sq.RandomBiasField(), subject, seed=3)
    assert len(operation.coefficients) == 20  # order 3
    ours = sq.RandomBiasField()(subject, torch.Generator().manual_seed(3)).t2.data
    image = torchio().ScalarImage(tensor=subject.t2.data)
    theirs = torchio().BiasField(coefficients=list(operation.coefficients), order=3)(image).data
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


@pytest.mark.parametrize("gamma", [0.5, 0.9, 1.6])
@pytest.mark.parametrize("offset", [10.0, -30.0])  # all positive; some negative
def test_gamma_is_torchio_1s(gamma: float, offset: float) -> None:
    data = smooth_volume(channels=2) + offset
    subject = sq.Subject(t1=sq.ScalarImage(data))
    ours = sq.Gamma(log_gamma=math.log(gamma))(subject).t1.data
    theirs = torchio().Gamma(gamma)(torchio().ScalarImage(tensor=data)).data
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)
    expected = data.sign() * data.abs() ** gamma  # TorchIO 2.0's formula, for any sign
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def torchio2_blur(data: torch.Tensor, sigmas: tuple[float, float, float]) -> torch.Tensor:
    """TorchIO 2.0.0a2's ``_gaussian_smooth_shared``, written out: per axis, a kernel of radius
    ``max(ceil(3 sigma), 1)``, the volume padded by replicating its border, conv3d."""
    result = data.float()[None]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        radius = max(int(np.ceil(3 * sigma)), 1)
        x = torch.arange(2 * radius + 1, dtype=torch.float32) - radius
        kernel = torch.exp(-0.5 * (x / sigma) ** 2)
        kernel = kernel / kernel.sum()
        shape = [1, 1, 1, 1, 1]
        shape[axis + 2] = -1
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        padded = functional.pad(result, pad, mode="replicate")
        channels = padded.shape[1]
        result = functional.conv3d(
            padded.reshape(channels, 1, *padded.shape[2:]), kernel.reshape(shape)
        ).reshape(1, channels, *data.shape[1:])
    return result[0]


@pytest.mark.parametrize("std", [(1.0, 1.0, 1.0), (0.4, 3.0, 0.0), (2.5, 0.0, 1.2)])
def test_blur_is_torchio_2s(std: tuple[float, float, float]) -> None:
    subject = subject_with()
    ours = sq.Blur(std=std)(subject).t1.data
    sigmas = (std[0] / 1.0, std[1] / 1.5, std[2] / 0.8)  # mm over the spacing
    np.testing.assert_allclose(ours, torchio2_blur(subject.t1.data, sigmas), atol=1e-4)


@pytest.mark.parametrize("std", [0.5, 1.0, 2.0])
def test_blur_is_close_to_torchio_1s_away_from_the_border(std: float) -> None:
    """TorchIO 1.x uses SciPy's gaussian_filter (radius 4 sigma, border mirrored): the same up
    to the kernel's tails in the interior (measured: under 6e-4 of the range for 2 mm)."""
    data = smooth_volume((36, 36, 36))
    ours = sq.RandomBlur(std=(std, std))(sq.Subject(t2=sq.ScalarImage(data, affine=SPACING)))
    image = torchio().ScalarImage(tensor=data, affine=SPACING)
    theirs = torchio().Blur(std=(std,) * 3)(image).data
    interior = (slice(None), *(slice(11, -11),) * 3)  # 4 sigma away: 8 mm, 11 voxels of 0.8
    intensity_range = float(data.max() - data.min())
    assert float((ours.t2.data - theirs)[interior].abs().max()) < 1e-3 * intensity_range


def test_brightness_multiplies() -> None:
    subject = subject_with()
    ours = sq.Brightness(factor=1.2)(subject).t1.data
    assert torch.equal(ours, subject.t1.data * 1.2)


def nnunet_contrast(data: torch.Tensor, factor: float, preserve_range: bool) -> torch.Tensor:
    """batchgeneratorsv2's ``ContrastTransform._apply_to_image``, written out, on the whole
    volume (nnU-Net applies it to a patch)."""
    result = data.clone()
    for channel in result:
        mean = channel.mean()
        low, high = torch.aminmax(channel)
        channel.sub_(mean).mul_(factor).add_(mean)
        if preserve_range:
            channel.clamp_(low, high)
    return result


@pytest.mark.parametrize("factor", [0.6, 1.3])
@pytest.mark.parametrize("preserve_range", [True, False])
def test_contrast_is_nnunets_on_the_whole_volume(factor: float, preserve_range: bool) -> None:
    subject = subject_with()
    ours = sq.Contrast(factor=factor, preserve_range=preserve_range)(subject).t1.data
    theirs = nnunet_contrast(subject.t1.data, factor, preserve_range)
    np.testing.assert_allclose(ours, theirs, atol=1e-4)
    if preserve_range:
        for channel, original in zip(ours, subject.t1.data):
            assert channel.min() >= original.min() and channel.max() <= original.max()


def torchio2_anisotropy(data: torch.Tensor, axis: int, factor: float, mode: str) -> torch.Tensor:
    """TorchIO 2.0.0a2's ``_simulate_anisotropy``, written out."""
    shape = list(data.shape[1:])
    down = list(shape)
    down[axis] = max(1, round(shape[axis] / factor))
    low = functional.interpolate(data.float()[None], size=down, mode="nearest")
    if mode == "nearest":
        return functional.interpolate(low, size=shape, mode="nearest")[0].to(data.dtype)
    return functional.interpolate(low, size=shape, mode="trilinear", align_corners=True)[0]


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("factor", [1.3, 2.0, 3.7, 9.0, 30.0])
@pytest.mark.parametrize("interpolation", ["linear", "nearest"])
def test_anisotropy_is_torchio_2s(axis: int, factor: float, interpolation: str) -> None:
    subject = subject_with()
    transform = sq.Anisotropy(axes=axis, downsampling=factor, image_interpolation=interpolation)
    result = transform(subject)
    theirs = torchio2_anisotropy(subject.t1.data, axis, factor, interpolation)
    np.testing.assert_allclose(result.t1.data, theirs, atol=1e-4)
    labels = torchio2_anisotropy(subject.seg.data, axis, factor, "nearest")
    assert torch.equal(result.seg.data, labels)  # label maps too, by nearest neighbour


@settings(max_examples=200, deadline=None)
@given(length=st.integers(1, 300), factor=st.floats(1.0, 12.0))
def test_anisotropy_sources_are_pytorchs_and_within_the_stated_margin(
    length: int, factor: float
) -> None:
    transform = sq.Anisotropy(downsampling=(1.0, factor))
    for interpolation in ("linear", "nearest"):
        data = torch.rand(1, length, 1, 1)
        lower, upper, weight = anisotropy_sources(length, factor, interpolation)
        ours = data[:, lower] * (1 - weight).reshape(-1, 1, 1) + data[:, upper] * weight.reshape(
            -1, 1, 1
        )
        theirs = torchio2_anisotropy(data, 0, factor, interpolation)
        np.testing.assert_allclose(ours, theirs, atol=1e-6)
        if coarse_length(length, factor) < length:
            operation = ResampleAxis(SCALARS, 0, length, factor, interpolation)
            margin = transform.locality.margin
            assert margin is not None and 0 < operation.margin[0] <= margin


def test_torchio_1_anisotropy_leaves_label_maps_alone_by_default() -> None:
    subject = subject_with()
    generator = torch.Generator().manual_seed(0)
    result = sq.RandomAnisotropy(downsampling=(3, 3))(subject, generator)
    assert result.seg.data is subject.seg.data
    assert not torch.equal(result.t1.data, subject.t1.data)
    both = sq.RandomAnisotropy(downsampling=(3, 3), scalars_only=False)
    assert not torch.equal(both(subject, generator).seg.data, subject.seg.data)


# Parameters: ranges, distributions, once per subject ---------------------------------------------


def uniform_p_value(values: list[float], low: float, high: float) -> float:
    return float(stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue)


def test_bias_field_coefficients_are_uniform_in_their_range() -> None:
    subject = subject_with()
    for transform, (low, high) in [
        (sq.BiasField(coefficients=0.3, order=2), (-0.3, 0.3)),
        (sq.BiasField(coefficients=(0.1, 0.4), order=1), (0.1, 0.4)),
    ]:
        values = [c for seed in range(40) for c in drawn(transform, subject, seed)[0].coefficients]
        assert all(low <= value <= high for value in values)
        assert uniform_p_value(values, low, high) > 1e-3
    assert len(drawn(sq.BiasField(order=2), subject, 0)[0].coefficients) == 10
    assert drawn(sq.BiasField(coefficients=0), subject, 0) == []  # exp(0): nothing to do


def test_gamma_brightness_and_contrast_factors_are_uniform_in_their_range() -> None:
    subject = subject_with()
    for transform, attribute, (low, high), convert in [
        (sq.Gamma(log_gamma=(-0.3, 0.5)), "gamma", (-0.3, 0.5), math.log),
        (sq.RandomGamma(), "gamma", (-0.3, 0.3), math.log),
        (sq.Brightness(), "factor", (0.75, 1.25), float),
        (sq.Contrast(factor=(0.5, 2.0)), "factor", (0.5, 2.0), float),
    ]:
        values = [
            convert(getattr(drawn(transform, subject, seed)[0], attribute)) for seed in range(300)
        ]
        assert all(low - 1e-9 <= value <= high + 1e-9 for value in values)
        assert uniform_p_value(values, low, high) > 1e-3


def test_blur_stds_are_drawn_per_axis_and_divided_by_the_spacing() -> None:
    subject = subject_with()
    sigmas = np.array(
        [drawn(sq.Blur(std=(0.5, 2.0)), subject, seed)[0].sigmas for seed in range(300)]
    )
    stds = sigmas * np.array([1.0, 1.5, 0.8])
    assert stds.min() >= 0.5 - 1e-9 and stds.max() <= 2.0 + 1e-9
    for axis in range(3):
        assert uniform_p_value(list(stds[:, axis]), 0.5, 2.0) > 1e-3
    assert abs(np.corrcoef(stds[:, 0], stds[:, 1])[0, 1]) < 0.2  # independent axes
    (operation,) = drawn(sq.Blur(std=(1.0, 0.0, (2.0, 2.0))), subject, 0)
    np.testing.assert_allclose(operation.sigmas, (1.0, 0.0, 2.0 / 0.8))
    assert operation.margin == (3, 0, gaussian_radius(2.5)) == (3, 0, 8)
    assert drawn(sq.Blur(), subject, 0) == []
    assert sq.Blur(std=(0, 2)).locality.margin == 6  # at 1 mm


def test_anisotropy_chooses_an_axis_and_a_factor_in_range() -> None:
    subject = subject_with()
    transform = sq.Anisotropy(axes=(0, 2), downsampling=(1.5, 4))
    operations = [drawn(transform, subject, seed) for seed in range(300)]
    scalar_ops = [ops[0] for ops in operations if ops]
    axes = [operation.axis for operation in scalar_ops]
    assert set(axes) == {0, 2} and 0.4 < axes.count(0) / len(axes) < 0.6
    factors = [operation.factor for operation in scalar_ops]
    assert uniform_p_value(factors, 1.5, 4.0) > 1e-3
    assert all(len(ops) == 2 for ops in operations if ops)  # scalar images and label maps
    assert [op.interpolation for op in operations[0]] == ["linear", "nearest"]
    assert drawn(sq.Anisotropy(downsampling=1), subject, 0) == []  # TorchIO 2.0's no-op


def test_torchio_1_range_readings() -> None:
    assert sq.RandomBlur(std=2).std.axes == ((0.0, 2.0),) * 3
    assert sq.RandomBlur(std=(1, 2, 3)).std.axes == ((0.0, 1.0), (0.0, 2.0), (0.0, 3.0))
    assert sq.RandomBlur(std=(1, 2)).std.axes == ((1.0, 2.0),) * 3
    assert sq.RandomBlur().std.axes == ((0.0, 2.0),) * 3
    assert sq.RandomGamma(0.2).log_gamma.bounds == (-0.2, 0.2)
    assert sq.RandomBiasField(0.2).coefficients.bounds == (-0.2, 0.2)
    assert sq.BiasField((0.0, 0.2)).coefficients.bounds == (0.0, 0.2)
    assert sq.RandomAnisotropy(downsampling=3).downsampling.bounds == (1.0, 3.0)
    assert sq.RandomAnisotropy().downsampling.bounds == (1.5, 5.0)
    assert sq.Gamma(0.2).log_gamma.bounds == (0.2, 0.2)  # TorchIO 2.0: a number is that value
    assert sq.Blur(2).std.axes == ((2.0, 2.0),) * 3
    for bad in (
        lambda: sq.RandomAnisotropy(downsampling=(0.5, 2)),
        lambda: sq.Anisotropy(downsampling=0.5),
        lambda: sq.Anisotropy(axes=(3,)),
        lambda: sq.Blur(std=-1),
        lambda: sq.RandomBlur(std=-1),
        lambda: sq.BiasField(coefficients=-0.1),
        lambda: sq.BiasField(order=-1),
        lambda: sq.RandomGamma(-0.3),
    ):
        with pytest.raises(ValueError):
            bad()


ALL = [
    sq.BiasField(),
    sq.Gamma(log_gamma=(-0.3, 0.3)),
    sq.Blur(std=(0.5, 2)),
    sq.Brightness(),
    sq.Contrast(),
    sq.Anisotropy(),
    sq.RandomBiasField(),
    sq.RandomGamma(),
    sq.RandomBlur(),
    sq.RandomAnisotropy(),
]


@pytest.mark.parametrize("transform", ALL, ids=repr)
def test_the_same_parameters_for_every_image_of_a_subject(transform: sq.Augmentation) -> None:
    data = smooth_volume()
    subject = sq.Subject(
        a=sq.ScalarImage(data, affine=SPACING), b=sq.ScalarImage(data.clone(), affine=SPACING)
    )
    for seed in range(3):
        result = transform(subject, torch.Generator().manual_seed(seed))
        assert not torch.equal(result.a.data, data)
        assert torch.equal(result.a.data, result.b.data)
    assert transform.is_random


@pytest.mark.parametrize("transform", ALL, ids=repr)
def test_label_maps_are_left_alone_unless_torchio_2_resamples_them(
    transform: sq.Augmentation,
) -> None:
    subject = subject_with()
    result = transform(subject, torch.Generator().manual_seed(1))
    if type(transform) is sq.Anisotropy:
        assert set(result.seg.data.unique().tolist()) <= {0, 1, 2}
        assert result.seg.data.dtype == torch.uint8
    else:
        assert result.seg.data is subject.seg.data
    named = {cost.image for cost in transform.memory_cost(subject_specs(subject))}
    assert named == ({"t1", "t2", "seg"} if type(transform) is sq.Anisotropy else {"t1", "t2"})


@pytest.mark.parametrize(
    "make", [sq.BiasField, sq.Gamma, sq.Blur, sq.Brightness, sq.Contrast, sq.Anisotropy]
)
def test_p_include_and_exclude(make: Any) -> None:
    parameters: dict[str, Any] = {
        sq.Gamma: {"log_gamma": 0.3},
        sq.Blur: {"std": 1.0},
        sq.Anisotropy: {"downsampling": 3.0},
    }.get(make, {})
    subject = subject_with()
    outcomes = set()
    for seed in range(16):
        result = make(p=0.5, **parameters)(subject, torch.Generator().manual_seed(seed))
        outcomes.add(bool(torch.equal(result.t1.data, subject.t1.data)))
    assert outcomes == {True, False}
    assert make(p=0.5, **parameters).is_random
    included = make(include=["t2"], **parameters)(subject)
    assert included.t1.data is subject.t1.data and included.seg.data is subject.seg.data
    assert not torch.equal(included.t2.data, subject.t2.data)
    excluded = make(exclude=["t2"], **parameters)(subject)
    assert excluded.t2.data is subject.t2.data
    assert not torch.equal(excluded.t1.data, subject.t1.data)
    assert make(p=0.0, **parameters)(subject).t1.data is subject.t1.data


def test_constant_parameters_make_a_deterministic_transform() -> None:
    for transform in (
        sq.BiasField(coefficients=(0.2, 0.2)),
        sq.Gamma(0.2),
        sq.Blur(1.0),
        sq.Brightness(1.1),
        sq.Contrast(1.1),
        sq.Anisotropy(axes=1, downsampling=2),
    ):
        assert not transform.is_random, transform


def test_what_they_say_of_themselves() -> None:
    specs = subject_specs(subject_with())
    t1, t2 = specs["t1"].nbytes, specs["t2"].nbytes
    assert sq.Contrast().locality == Locality(0, statistics=True)
    assert sq.Gamma().locality.margin == sq.BiasField().locality.margin == 0
    assert sq.Anisotropy(downsampling=(1, 4)).locality.margin == 11
    # per voxel of a region: its input and result, in float32, per channel (t1 has two)
    assert sq.BiasField().region_cost("t1", specs["t1"]) == 2 * 2 * 4
    assert sq.Blur(std=1.0).region_cost("t2", specs["t2"]) == 10 * 4  # grown, three passes
    assert sq.Gamma().region_cost("seg", specs["seg"]) == 0  # left alone
    assert sq.Anisotropy().region_cost("seg", specs["seg"]) == 2  # resampled too
    # on the whole volume: the new volume, made slab by slab (the volume is smaller than one)
    costs = {cost.image: cost for cost in sq.Contrast().memory_cost(specs)}
    assert (costs["t1"].output, costs["t1"].peak) == (t1, t1 + 2 * t1)
    assert set(costs) == {"t1", "t2"} and costs["t2"].peak == 3 * t2
    assert sq.Gamma().output_spec(specs) == specs


# Patches equal the whole volume's result, cropped ------------------------------------------------


boxes = st.tuples(*(st.integers(1, n) for n in SHAPE)).flatmap(
    lambda size: st.tuples(
        st.just(size), st.tuples(*(st.integers(0, n - s) for n, s in zip(SHAPE, size)))
    )
)

intensity_steps = st.sampled_from(
    [
        sq.BiasField(coefficients=(-0.4, 0.4), order=3),
        sq.Gamma(log_gamma=(-0.4, 0.4)),
        sq.Blur(std=(0.0, 3.0)),
        sq.Brightness(factor=(0.5, 1.5)),
        sq.Contrast(factor=(0.5, 1.5)),
        sq.Contrast(factor=(0.5, 1.5), preserve_range=False),
        sq.Anisotropy(downsampling=(1.0, 8.0)),
        sq.Anisotropy(downsampling=(1.5, 30.0), image_interpolation="nearest"),
        sq.Flip(axes=(0, 1, 2), flip_probability=0.5),
        sq.Affine(degrees=(-10, 10), translation=(-2, 2)),
    ]
)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    box=boxes,
    steps=st.lists(intensity_steps, min_size=1, max_size=4),
)
def test_a_patch_equals_the_whole_result_cropped(
    seed: int, box: Any, steps: list[sq.Augmentation]
) -> None:
    (size, index) = box
    subject = subject_with(seed=seed % 5)
    generator = torch.Generator().manual_seed(seed)
    operations = [operation for step in steps for operation in step.draw(subject, generator)]
    region = (slice(None), *(slice(i, i + s) for i, s in zip(index, size)))
    for name, image in subject.images.items():
        voxels = DeferredVoxels(image.data, name, type(image), operations)
        whole = voxels.whole()
        patch = voxels.patch(index, size)
        if name == "seg":
            assert torch.equal(patch, whole[region])
        else:
            intensity_range = float(whole.max() - whole.min())
            np.testing.assert_allclose(patch, whole[region], atol=1e-4 * intensity_range)


REALISTIC = sq.Compose(
    [
        sq.Affine(scales=(0.9, 1.1), degrees=(-10, 10)),
        sq.BiasField(coefficients=0.3),
        sq.Gamma(log_gamma=(-0.3, 0.3)),
        sq.Blur(std=(0, 1.5)),
        sq.Noise(std=(0, 0.1)),
        sq.Brightness(),
        sq.Contrast(),
        sq.Anisotropy(downsampling=(1.5, 4)),
        sq.Flip(axes=(0, 1, 2), flip_probability=0.5),
    ]
)


def test_the_pipeline_gives_the_same_patches_deferred_or_not() -> None:
    """Noise apart (drawn per region: the same distribution, other values), the deferred
    pipeline's patches are the whole-volume pipeline's."""
    without_noise = sq.Compose(
        [step for step in REALISTIC.transforms if type(step) is not sq.Noise]
    )
    subjects = [subject_with(seed=seed) for seed in range(3)]
    sampler = sq.LabelSampler(None, 8, label_name="seg", label_probabilities={1: 1, 2: 1})
    layout = {"t1": (2, torch.float32), "t2": (1, torch.float32), "seg": (1, torch.uint8)}
    for index in range(3):
        task = SubjectTask(0, index, index, 0, 4, seed=200 + index)
        (lazy, locations), (eager, eager_locations) = (
            SubjectPipeline(subjects, without_noise, sampler, layout, deferred).run(task)
            for deferred in (True, False)
        )
        assert locations == eager_locations
        for location in locations:
            for name in ("t1", "t2"):
                eager_patch = eager[name].voxels_at(*location)
                tolerance = 1e-4 * float(eager[name].data.max() - eager[name].data.min())
                np.testing.assert_allclose(
                    lazy[name].voxels_at(*location), eager_patch, atol=tolerance
                )
            assert torch.equal(lazy.seg.voxels_at(*location), eager.seg.voxels_at(*location))


def test_noise_at_the_patches_has_the_whole_volumes_distribution() -> None:
    """Contract 11 for per-voxel draws: patches' noise, drawn per region, has the mean, spread
    and quantiles of the whole volume's; a region gets the same draw each time it is read, and
    different regions independent ones."""
    subject = sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 48, 40, 32)))
    operations = sq.Noise(mean=1.0, std=2.0).draw(subject, torch.Generator().manual_seed(3))
    voxels = DeferredVoxels(subject.t1.data, "t1", sq.ScalarImage, operations)
    whole = voxels.whole().flatten()
    corners = [(0, 0, 0), (16, 0, 0), (32, 24, 16), (0, 24, 0), (32, 0, 16), (16, 24, 16)]
    patches = torch.cat([voxels.patch(corner, (16, 16, 16)).flatten() for corner in corners])
    for values in (whole, patches):
        assert abs(float(values.mean()) - 1.0) < 0.05 and abs(float(values.std()) - 2.0) < 0.05
    levels = torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95])
    np.testing.assert_allclose(
        torch.quantile(patches, levels), torch.quantile(whole[: patches.numel()], levels), atol=0.1
    )
    assert torch.equal(voxels.patch((0, 0, 0), (16, 16, 16)), voxels.patch((0, 0, 0), (16, 16, 16)))
    first, second = (voxels.patch(corner, (16, 16, 16)).flatten() for corner in corners[:2])
    assert abs(float(torch.corrcoef(torch.stack([first, second]))[0, 1])) < 0.05
