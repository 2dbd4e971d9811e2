"""GridSampler tiles and pads like TorchIO's; PatchAggregator puts identity outputs back exactly."""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from itertools import product
from typing import Literal

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from shmqueue.errors import PatchSizeError
from shmqueue.image import LabelMap, ScalarImage
from shmqueue.sampling.base import PatchLocation, extract_patch
from shmqueue.sampling.grid import OVERLAP_MODES, PADDING_MODES, GridSampler, PatchAggregator
from shmqueue.subject import Subject

SHAPE = (10, 7, 5)
NUMPY_MODES: dict[str, Literal["constant", "reflect", "edge", "wrap"]] = {
    "constant": "constant",
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}


def make_subject(shape: Sequence[int] = SHAPE, channels: int = 1) -> Subject:
    generator = torch.Generator().manual_seed(0)
    return Subject(
        t1=ScalarImage(torch.rand(channels, *shape, generator=generator)),
        seg=LabelMap(torch.randint(0, 3, (1, *shape), generator=generator)),
        name="sub-01",
    )


def all_locations(sampler: GridSampler, subject: Subject) -> list[PatchLocation]:
    prepared = sampler.prepare(subject)
    return sampler.locations(prepared, 10**6, torch.Generator())


def reconstruct(
    sampler: GridSampler, overlap_mode: str, image: str = "t1", batch_size: int = 4
) -> torch.Tensor:
    """Feed every patch's own data back as the model output, in batches."""
    aggregator = PatchAggregator(sampler, overlap_mode)
    patches = list(sampler)
    for first in range(0, len(patches), batch_size):
        batch = patches[first : first + batch_size]
        data = torch.stack([patch[image].data for patch in batch])
        aggregator.add_batch(data, [patch["patch_location"] for patch in batch])
    return aggregator.get_output_tensor()


# Grid ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", [None, "constant"])
@pytest.mark.parametrize(
    ("patch_size", "patch_overlap"),
    [(4, 0), (4, 2), ((5, 3, 2), (2, 2, 0)), ((10, 7, 5), 0), (3, 2), (1, 0)],
)
def test_grid_covers_every_voxel_and_counts_match(
    patch_size: int | tuple[int, int, int],
    patch_overlap: int | tuple[int, int, int],
    padding_mode: str | None,
) -> None:
    subject = make_subject()
    sampler = GridSampler(subject, patch_size, patch_overlap, padding_mode)
    prepared_shape = sampler.prepare_shape(SHAPE)
    coverage = torch.zeros(prepared_shape, dtype=torch.int64)
    locations = all_locations(sampler, subject)
    for location in locations:
        coverage[location.to_slices()] += 1
    assert bool((coverage > 0).all())
    assert len(locations) == len(set(locations)) == sampler.max_patches(SHAPE) == len(sampler)


def test_locations_order_and_clamping_by_hand() -> None:
    sampler = GridSampler(make_subject(), patch_size=4, patch_overlap=2)
    # Stride 2; the last start on each axis is clamped to shape - 4 = (6, 3, 1).
    xs, ys, zs = [0, 2, 4, 6], [0, 2, 3], [0, 1]
    expected = [PatchLocation((i, j, k), (4, 4, 4)) for i in xs for j in ys for k in zs]
    assert all_locations(sampler, make_subject()) == expected
    assert sampler.locations(make_subject(), 5, torch.Generator()) == expected[:5]
    assert sampler.max_patches(SHAPE) == 24


def test_locations_match_torchio_example() -> None:
    # From TorchIO's docs: size 10, patch 5, overlap 2 gives starts 0, 3 and (clamped) 5.
    sampler = GridSampler(None, patch_size=(5, 1, 1), patch_overlap=(2, 0, 0))
    prepared = Subject(t1=ScalarImage(torch.zeros(1, 10, 1, 1)))
    starts = [location.index[0] for location in all_locations(sampler, prepared)]
    assert starts == [0, 3, 5]


def test_calling_the_sampler_yields_the_grid_once() -> None:
    subject = make_subject()
    sampler = GridSampler(None, patch_size=4, patch_overlap=2, padding_mode="reflect")
    patches = list(sampler(subject))
    assert [patch["patch_location"] for patch in patches] == all_locations(sampler, subject)
    assert len(list(sampler(subject, num_patches=3))) == 3


# Padding ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize(
    ("patch_size", "patch_overlap"), [(7, 2), ((8, 4, 5), (4, 2, 0)), (7, 6)], ids=str
)
def test_padding_matches_numpy_pad(
    padding_mode: str, patch_size: int | tuple[int, ...], patch_overlap: int | tuple[int, ...]
) -> None:
    subject = make_subject(channels=2)
    original = {name: image.data.clone() for name, image in subject.images.items()}
    sampler = GridSampler(subject, patch_size, patch_overlap, padding_mode)
    prepared = sampler.prepare(subject)
    widths = [(0, 0), *((overlap // 2,) * 2 for overlap in sampler.patch_overlap)]
    for name, image in prepared.images.items():
        expected = np.pad(original[name].numpy(), widths, mode=NUMPY_MODES[padding_mode])
        assert image.dtype == original[name].dtype
        assert np.array_equal(image.data.numpy(), expected)
        assert image.spatial_shape == sampler.prepare_shape(SHAPE)
        assert type(image) is type(subject[name])
        # The original voxels keep their world coordinates.
        shift = subject[name].affine[:3, :3] @ [width for width, _ in widths[1:]]
        assert np.allclose(image.affine[:3, 3], subject[name].affine[:3, 3] - shift)
    assert prepared["name"] == "sub-01"
    for name, image in subject.images.items():  # the input is untouched
        assert torch.equal(image.data, original[name])
        assert image.spatial_shape == SHAPE


@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular"])
def test_padding_matches_torch_pad(padding_mode: str) -> None:
    subject = make_subject()
    sampler = GridSampler(subject, patch_size=6, patch_overlap=4, padding_mode=padding_mode)
    expected = F.pad(subject["t1"].data[None], (2,) * 6, mode=padding_mode)[0]
    assert torch.equal(sampler.prepare(subject)["t1"].data, expected)


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int16, torch.int64])
def test_label_maps_keep_dtype_and_values(padding_mode: str, dtype: torch.dtype) -> None:
    labels = torch.randint(1, 200, (1, *SHAPE), generator=torch.Generator().manual_seed(1))
    subject = Subject(seg=LabelMap(labels.to(dtype)))
    sampler = GridSampler(subject, patch_size=4, patch_overlap=2, padding_mode=padding_mode)
    padded = sampler.prepare(subject)["seg"].data
    assert padded.dtype == dtype
    expected = np.pad(labels.numpy(), [(0, 0), (1, 1), (1, 1), (1, 1)], NUMPY_MODES[padding_mode])
    assert np.array_equal(padded.numpy(), expected)
    if padding_mode == "constant":
        assert int(padded[:, 0].max()) == 0


def test_without_padding_mode_prepare_keeps_the_subject() -> None:
    subject = make_subject()
    sampler = GridSampler(subject, patch_size=4, patch_overlap=2)
    assert sampler.prepare(subject) is subject
    assert sampler.prepare_shape(SHAPE) == SHAPE


# Map-style dataset --------------------------------------------------------------------------


@pytest.mark.parametrize("padding_mode", [None, "replicate"])
def test_len_and_getitem_equal_extract_patch(
    padding_mode: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject = make_subject()
    sampler = GridSampler(subject, patch_size=4, patch_overlap=2, padding_mode=padding_mode)
    prepared = sampler.prepare(subject)
    locations = sampler.locations(prepared, 10**6, torch.Generator())
    calls = []
    prepare = sampler.prepare

    def counting_prepare(subject: Subject) -> Subject:
        calls.append(subject)
        return prepare(subject)

    monkeypatch.setattr(sampler, "prepare", counting_prepare)
    assert len(sampler) == len(locations)
    for index, location in enumerate(locations):
        patch, expected = sampler[index], extract_patch(prepared, location)
        assert patch["patch_location"] == location
        assert patch["name"] == "sub-01"
        for name in ("t1", "seg"):
            assert torch.equal(patch[name].data, expected[name].data)
            assert np.array_equal(patch[name].affine, expected[name].affine)
    assert sampler[-1]["patch_location"] == locations[-1]
    assert [patch["patch_location"] for patch in sampler] == locations
    assert len(calls) == 1  # prepared once, lazily, then cached
    with pytest.raises(IndexError):
        sampler[len(locations)]
    with pytest.raises(IndexError):
        sampler[-len(locations) - 1]


def test_pickling_drops_the_cached_padded_subject() -> None:
    sampler = GridSampler(make_subject(), patch_size=4, patch_overlap=2, padding_mode="reflect")
    first = sampler[0]
    copy = pickle.loads(pickle.dumps(sampler))
    assert copy._prepared is None
    assert torch.equal(copy[0]["t1"].data, first["t1"].data)


def test_sampler_without_subject_has_no_patches_of_its_own() -> None:
    sampler = GridSampler(None, patch_size=4)
    with pytest.raises(TypeError, match="without a subject"):
        len(sampler)
    with pytest.raises(TypeError, match="without a subject"):
        sampler[0]
    with pytest.raises(TypeError, match="built with a subject"):
        PatchAggregator(sampler)


# Aggregation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap_mode", OVERLAP_MODES)
@pytest.mark.parametrize("padding_mode", [None, "constant", "reflect"])
@pytest.mark.parametrize(
    ("patch_size", "patch_overlap"), [(4, 0), (4, 2), ((6, 4, 3), (4, 2, 2)), (SHAPE, 0)]
)
def test_identity_reconstruction(
    overlap_mode: str,
    padding_mode: str | None,
    patch_size: int | tuple[int, int, int],
    patch_overlap: int | tuple[int, int, int],
) -> None:
    subject = make_subject(channels=3)
    sampler = GridSampler(subject, patch_size, patch_overlap, padding_mode)
    output = reconstruct(sampler, overlap_mode)
    expected = subject["t1"].data
    assert output.shape == expected.shape
    assert output.dtype == torch.float32
    if overlap_mode == "crop":
        assert torch.equal(output, expected)
    else:
        torch.testing.assert_close(output, expected)


def test_crop_keeps_the_batch_dtype() -> None:
    subject = make_subject()
    sampler = GridSampler(subject, patch_size=4, patch_overlap=2, padding_mode="constant")
    output = reconstruct(sampler, "crop", image="seg")
    assert output.dtype == torch.int64
    assert torch.equal(output, subject["seg"].data)
    assert reconstruct(sampler, "average", image="seg").dtype == torch.float32


@pytest.mark.parametrize("overlap_mode", OVERLAP_MODES)
def test_tensor_locations_like_torchio(overlap_mode: str) -> None:
    subject = make_subject(channels=2)
    sampler = GridSampler(subject, patch_size=4, patch_overlap=2, padding_mode="replicate")
    aggregator = PatchAggregator(sampler, overlap_mode)
    patches = list(sampler)
    for first in range(0, len(patches), 7):
        batch = patches[first : first + 7]
        rows = [[*p["patch_location"].index, *p["patch_location"].stop] for p in batch]
        locations = torch.tensor(rows, dtype=torch.int64)
        aggregator.add_batch(torch.stack([p["t1"].data for p in batch]), locations)
    torch.testing.assert_close(aggregator.get_output_tensor(), subject["t1"].data)


def test_hann_weights_patch_centres_more_than_average() -> None:
    # Two patches overlapping on x = 2..3 of a 1D-like volume, outputs 0 and 1: in the overlap,
    # "average" gives 1/2 everywhere; "hann" leans towards the patch whose centre is nearer.
    subject = Subject(t1=ScalarImage(torch.zeros(1, 6, 1, 1)))
    sampler = GridSampler(subject, patch_size=(4, 1, 1), patch_overlap=(2, 0, 0))
    outputs = {}
    for mode in ("average", "hann"):
        aggregator = PatchAggregator(sampler, mode)
        aggregator.add_batch(torch.zeros(1, 1, 4, 1, 1), [sampler[0]["patch_location"]])
        aggregator.add_batch(torch.ones(1, 1, 4, 1, 1), [sampler[1]["patch_location"]])
        outputs[mode] = aggregator.get_output_tensor()[0, :, 0, 0].tolist()
    assert outputs["average"] == [0, 0, 0.5, 0.5, 1, 1]
    assert outputs["hann"][2] < 0.5 < outputs["hann"][3]


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_crop_reconstruction_is_exact(data: st.DataObject) -> None:
    shape = data.draw(st.tuples(*[st.integers(1, 9)] * 3), label="shape")
    padding_mode = data.draw(st.sampled_from([None, *PADDING_MODES]), label="padding_mode")
    patch_size = tuple(data.draw(st.integers(1, n), label="patch") for n in shape)
    patch_overlap = tuple(
        data.draw(st.integers(0, (p - 1) // 2), label="half overlap") * 2 for p in patch_size
    )
    subject = Subject(t1=ScalarImage(torch.rand(2, *shape)))
    sampler = GridSampler(subject, patch_size, patch_overlap, padding_mode)
    batch_size = data.draw(st.integers(1, 5), label="batch_size")
    assert torch.equal(reconstruct(sampler, "crop", batch_size=batch_size), subject["t1"].data)


# Errors -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("patch_overlap", [1, (2, 3, 0), 4, (0, 0, 6), -2, (2, 2)], ids=str)
def test_invalid_overlap(patch_overlap: int | tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="patch_overlap must be an even int"):
        GridSampler(None, patch_size=(4, 4, 6), patch_overlap=patch_overlap)


def test_invalid_padding_mode() -> None:
    with pytest.raises(ValueError, match="padding_mode must be None or one of"):
        GridSampler(None, patch_size=4, padding_mode="edge")


def test_patch_larger_than_volume_names_the_subject() -> None:
    with pytest.raises(PatchSizeError, match="sub-01") as raised:
        GridSampler(make_subject(), patch_size=(12, 4, 4), patch_overlap=2)
    assert "(10, 7, 5)" in str(raised.value)
    sampler = GridSampler(None, patch_size=(12, 4, 4), patch_overlap=2)
    with pytest.raises(PatchSizeError, match="sub-01"):
        list(sampler(make_subject()))
    assert sampler.max_patches(SHAPE) == 0
    # Padding by half the overlap on each side makes the patch fit.
    padded = GridSampler(make_subject(), (12, 4, 4), patch_overlap=2, padding_mode="constant")
    assert padded.prepare_shape(SHAPE) == (12, 9, 7)
    assert torch.equal(reconstruct(padded, "crop"), make_subject()["t1"].data)


def test_invalid_overlap_mode() -> None:
    with pytest.raises(ValueError, match="overlap_mode must be one of"):
        PatchAggregator(GridSampler(make_subject(), 4), overlap_mode="max")


@pytest.mark.parametrize("overlap_mode", OVERLAP_MODES)
def test_output_before_any_batch(overlap_mode: str) -> None:
    aggregator = PatchAggregator(GridSampler(make_subject(), 4), overlap_mode)
    with pytest.raises(RuntimeError, match="No patches of subject 'sub-01'"):
        aggregator.get_output_tensor()


@pytest.mark.parametrize(
    ("overlap_mode", "count", "first"),
    [("crop", 105, (7, 0, 0)), ("average", 70, (8, 0, 0)), ("hann", 70, (8, 0, 0))],
)
def test_output_with_uncovered_voxels(
    overlap_mode: str, count: int, first: tuple[int, int, int]
) -> None:
    # Leave out the last slab of patches (x from 6): average and hann miss x = 8, 9; crop, whose
    # x = 4 patches write only up to x = 7, misses x = 7, 8, 9.
    sampler = GridSampler(make_subject(), 4, patch_overlap=2)
    aggregator = PatchAggregator(sampler, overlap_mode)
    for patch in sampler:
        if patch["patch_location"].index[0] < 6:
            aggregator.add_batch(patch["t1"].data[None], [patch["patch_location"]])
    with pytest.raises(RuntimeError) as raised:
        aggregator.get_output_tensor()
    message = str(raised.value)
    assert message.startswith(f"{count} voxels of subject 'sub-01'")
    assert f"(the first at {first}); add the outputs for all 24 patches" in message


FIRST = PatchLocation((0, 0, 0), (4, 4, 4))


@pytest.mark.parametrize(
    ("batch", "locations", "message"),
    [
        (torch.zeros(1, 1, 4, 4, 3), [FIRST], "batch must be shaped"),
        (torch.zeros(2, 1, 4, 4, 4), [FIRST], "2 patches in the batch but 1 locations"),
        (torch.zeros(1, 1, 4, 4, 4), [PatchLocation((7, 0, 0), (4, 4, 4))], "not a patch of"),
        (torch.zeros(1, 1, 4, 4, 4), [PatchLocation((0, 0, 0), (2, 2, 2))], "not a patch of"),
        (torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 6), r"must be \(B, 6\) integers"),
        (torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 3, dtype=torch.int64), r"\(B, 6\)"),
    ],
    ids=["patch size", "count", "outside", "location size", "float tensor", "tensor shape"],
)
def test_add_batch_rejects_mismatches(
    batch: torch.Tensor, locations: list[PatchLocation] | torch.Tensor, message: str
) -> None:
    aggregator = PatchAggregator(GridSampler(make_subject(), 4, patch_overlap=2))
    with pytest.raises(ValueError, match=message):
        aggregator.add_batch(batch, locations)


def test_add_batch_rejects_a_change_of_channels() -> None:
    aggregator = PatchAggregator(GridSampler(make_subject(), 4, patch_overlap=2))
    aggregator.add_batch(torch.zeros(1, 2, 4, 4, 4), [FIRST])
    with pytest.raises(ValueError, match="The batch has 1 channels; earlier batches"):
        aggregator.add_batch(torch.zeros(1, 1, 4, 4, 4), [FIRST])


def test_every_grid_position_is_distinct_and_in_order() -> None:
    sampler = GridSampler(make_subject(), (3, 4, 2), patch_overlap=(2, 2, 0))
    starts = [location.index for location in all_locations(sampler, make_subject())]
    assert starts == sorted(starts)
    axes = [sorted({start[axis] for start in starts}) for axis in range(3)]
    assert starts == list(product(*axes))


@pytest.mark.parametrize("padding_mode", PADDING_MODES)
def test_padding_wider_than_the_volume_follows_numpy(padding_mode: str) -> None:
    # torch.nn.functional.pad refuses these widths for reflect and circular; numpy repeats.
    data = torch.arange(2.0).reshape(1, 1, 1, 2)
    sampler = GridSampler(
        None, patch_size=(1, 1, 7), patch_overlap=(0, 0, 6), padding_mode=padding_mode
    )
    padded = sampler.prepare(Subject(t1=ScalarImage(data)))["t1"].data
    expected = np.pad(data.numpy(), [(0, 0), (0, 0), (0, 0), (3, 3)], NUMPY_MODES[padding_mode])
    assert np.array_equal(padded.numpy(), expected)
