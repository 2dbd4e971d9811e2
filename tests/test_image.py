"""Images: lazy headers, loading NIfTI into (C, X, Y, Z) tensors, dtypes, affines and crops."""

from __future__ import annotations

import errno
import gzip
import pickle
import resource
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from nibabel.arrayproxy import ArrayProxy
from nibabel.dataobj_images import DataobjImage

from shmqueue import image as image_module
from shmqueue import volumes
from shmqueue.errors import (
    ImageChangedError,
    ImageFileError,
    ImageFileNotFoundError,
    ImageMemoryError,
    InvalidImageError,
)
from shmqueue.image import Image, LabelMap, ScalarImage, shift_affine

MakeNifti = Callable[..., Path]

# A rotation about Z, anisotropic spacing and a translation: every affine entry matters.
ROTATION = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
AFFINE = np.eye(4)
AFFINE[:3, :3] = ROTATION @ np.diag([0.5, 1.25, 2.0])
AFFINE[:3, 3] = [-10.0, 4.5, 30.0]


def forbid(*_: Any, **__: Any) -> Any:
    raise AssertionError("voxels were read")


@pytest.fixture
def voxels_forbidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every way nibabel reads voxels fail, so a test proves it only read the header."""
    for name in ("get_unscaled", "__array__", "__getitem__", "_get_scaled"):
        monkeypatch.setattr(ArrayProxy, name, forbid)
    monkeypatch.setattr(DataobjImage, "get_fdata", forbid)


def volume(shape: tuple[int, ...] = (6, 5, 4), dtype: Any = np.int16) -> np.ndarray:
    """Distinct values that encode position."""
    return np.arange(int(np.prod(shape))).reshape(shape).astype(dtype)


def save_scaled(path: Path, array: np.ndarray, slope: float, inter: float) -> Path:
    """Write ``array`` with the header's ``scl_slope`` / ``scl_inter`` set."""
    nifti = nib.Nifti1Image(array, np.eye(4))
    nifti.header.set_slope_inter(slope, inter)
    nib.save(nifti, path)
    return path


def world(affine: np.ndarray | torch.Tensor, index: tuple[int, int, int]) -> np.ndarray:
    return (np.asarray(affine) @ np.array([*index, 1.0]))[:3]


# Files --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_header_gives_shape_dtype_affine_and_spacing_without_reading_voxels(
    make_nifti: MakeNifti, suffix: str, voxels_forbidden: None
) -> None:
    path = make_nifti(f"t1{suffix}", volume(), AFFINE)
    image = ScalarImage(path)
    assert image.shape == (1, 6, 5, 4)
    assert image.spatial_shape == (6, 5, 4)
    assert image.num_channels == 1
    assert image.dtype == torch.float32
    np.testing.assert_allclose(image.affine, AFFINE, atol=1e-6)
    assert image.affine.dtype == np.float64
    np.testing.assert_allclose(image.spacing, (0.5, 1.25, 2.0), rtol=1e-6)
    assert LabelMap(make_nifti(f"seg{suffix}", volume(dtype=np.uint8))).dtype == torch.uint8
    assert not image.is_loaded
    assert "not loaded" in repr(image)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
def test_load_reads_voxels_channels_first(make_nifti: MakeNifti, suffix: str) -> None:
    array = volume()
    image = ScalarImage(make_nifti(f"t1{suffix}", array, AFFINE))
    data = image.data
    assert image.is_loaded
    assert data.shape == (1, 6, 5, 4)
    assert data.dtype == torch.float32
    assert torch.equal(data[0], torch.from_numpy(array.astype(np.float32)))
    image.unload()
    assert not image.is_loaded
    assert torch.equal(image.data, data)


def test_scaled_nifti_loads_as_float32(tmp_path: Path) -> None:
    array = volume()
    target = save_scaled(tmp_path / "scaled.nii.gz", array, 0.5, -3.0)
    image = ScalarImage(target)
    expected = torch.from_numpy(array).to(torch.float32) * 0.5 - 3.0
    assert image.dtype == torch.float32
    assert image.data.dtype == torch.float32
    assert torch.equal(image.data[0], expected)


def test_scalar_image_never_goes_through_float64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only unscaled voxels are read; scaling happens in float32 (get_fdata would be float64)."""
    array = volume()
    target = save_scaled(tmp_path / "scaled.nii", array, 2.0, 1.0)
    for name in ("__array__", "__getitem__", "_get_scaled"):
        monkeypatch.setattr(ArrayProxy, name, forbid)
    monkeypatch.setattr(DataobjImage, "get_fdata", forbid)
    conversions: list[torch.dtype] = []
    original_to = torch.Tensor.to

    def spy_to(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        result = original_to(self, *args, **kwargs)
        conversions.append(result.dtype)
        return result

    monkeypatch.setattr(torch.Tensor, "to", spy_to)
    data = ScalarImage(target).data
    assert data.dtype == torch.float32
    assert torch.float32 in conversions  # the spy saw the conversion
    assert torch.float64 not in conversions
    assert torch.equal(data[0], torch.from_numpy(array).float() * 2.0 + 1.0)


def test_four_d_channels_last_becomes_channels_first(make_nifti: MakeNifti) -> None:
    array = volume((6, 5, 4, 3), np.float32)
    image = ScalarImage(make_nifti("multi.nii.gz", array))
    assert image.shape == (3, 6, 5, 4)
    for channel in range(3):
        assert torch.equal(image.data[channel], torch.from_numpy(array[..., channel]))


def test_five_d_with_singleton_fourth_axis_becomes_channels_first(make_nifti: MakeNifti) -> None:
    array = volume((6, 5, 4, 1, 2), np.float32)
    image = ScalarImage(make_nifti("vector.nii", array))
    assert image.shape == (2, 6, 5, 4)
    for channel in range(2):
        assert torch.equal(image.data[channel], torch.from_numpy(array[:, :, :, 0, channel]))


@pytest.mark.parametrize(
    "shape", [(6, 5), (6, 5, 4, 2, 3), (6, 5, 4, 1, 1, 2)], ids=["2d", "5d", "6d"]
)
def test_wrong_dimensionality_is_invalid(make_nifti: MakeNifti, shape: tuple[int, ...]) -> None:
    image = ScalarImage(make_nifti("bad.nii", np.zeros(shape, np.float32)))
    with pytest.raises(InvalidImageError, match=r"bad\.nii.*3D volume"):
        image.shape  # noqa: B018


@pytest.mark.parametrize(
    ("stored", "expected"),
    [
        (np.uint8, torch.uint8),
        (np.int8, torch.int8),
        (np.int16, torch.int16),
        (np.uint16, torch.int32),
        (np.int32, torch.int32),
        (np.float32, torch.int32),
        (np.float64, torch.int32),
    ],
)
def test_label_map_keeps_integer_values_and_dtype(
    make_nifti: MakeNifti, stored: Any, expected: torch.dtype
) -> None:
    array = (volume() % 7).astype(stored)
    label = LabelMap(make_nifti("seg.nii.gz", array))
    assert label.dtype == expected  # from the header
    assert label.data.dtype == expected  # after loading: the same
    assert torch.equal(label.data[0].to(torch.int64), torch.from_numpy(array.astype(np.int64)))


def test_label_map_with_non_integer_values_is_invalid(make_nifti: MakeNifti) -> None:
    label = LabelMap(make_nifti("prob.nii.gz", np.full((4, 4, 4), 0.5, np.float32)))
    with pytest.raises(InvalidImageError, match=r"prob\.nii\.gz.*non-integer.*ScalarImage"):
        label.load()


def test_scaled_label_map_dtype_from_header_matches_loaded(tmp_path: Path) -> None:
    array = (volume() % 5).astype(np.int16)
    label = LabelMap(save_scaled(tmp_path / "scaled_seg.nii", array, 2.0, 1.0))
    assert label.dtype == torch.int32
    assert label.data.dtype == torch.int32
    assert torch.equal(label.data[0], torch.from_numpy(array).to(torch.int32) * 2 + 1)


@pytest.mark.parametrize("kind", [ScalarImage, LabelMap])
def test_big_endian_file_loads(tmp_path: Path, kind: type[Image]) -> None:
    array = volume()
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    target = tmp_path / "big_endian.nii"
    nib.save(nib.Nifti1Image(array.astype(">i2"), np.eye(4), header=header), target)
    assert nib.load(target).get_data_dtype().byteorder == ">"
    image = kind(target)
    assert image.data.dtype == image.dtype
    assert torch.equal(image.data[0].to(torch.int64), torch.from_numpy(array.astype(np.int64)))


def test_missing_file_raises_at_construction(tmp_path: Path) -> None:
    with pytest.raises(ImageFileNotFoundError, match=r"missing\.nii\.gz.*Check the path"):
        ScalarImage(tmp_path / "missing.nii.gz")


def test_directory_is_read_as_a_dicom_series(tmp_path: Path) -> None:
    series = tmp_path / "dicom_series"
    series.mkdir()
    image = ScalarImage(series)  # a directory is a DICOM series (tests/test_readers.py)
    with pytest.raises(ImageFileError) as caught:
        _ = image.shape
    assert not isinstance(caught.value, FileNotFoundError)
    assert f"'{series}'" in str(caught.value)


@pytest.mark.parametrize(
    ("header_read", "since"),
    [
        (True, "since the queue was built (when its header was read)"),
        (False, "since the LabelMap was created"),
    ],
    ids=["after-header", "before-header"],
)
def test_file_deleted_after_construction_is_not_found_not_corrupt(
    make_nifti: MakeNifti, header_read: bool, since: str
) -> None:
    path = make_nifti("seg.nii.gz", volume(dtype=np.uint8))
    label = LabelMap(path)
    if header_read:
        assert label.shape == (1, 6, 5, 4)
    path.unlink()
    with pytest.raises(ImageFileNotFoundError) as caught:
        label.load()
    assert str(caught.value) == (
        f"Image file '{path}' no longer exists: it was deleted or moved {since}. Restore it, or"
        " rebuild the subjects and the queue without it."
    )
    assert isinstance(caught.value, FileNotFoundError)
    assert not label.is_loaded


def test_affine_comes_from_the_header_only(make_nifti: MakeNifti) -> None:
    with pytest.raises(TypeError, match="header"):
        ScalarImage(make_nifti("t1.nii", volume()), affine=np.eye(4))


def test_garbage_file_fails_at_header(tmp_path: Path) -> None:
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"not a nifti file" * 64)
    image = ScalarImage(path)
    with pytest.raises(ImageFileError, match=r"garbage\.nii\.gz.*NIfTI"):
        image.shape  # noqa: B018


def test_truncated_file_fails_at_load(make_nifti: MakeNifti) -> None:
    rng = np.random.default_rng(0)
    path = make_nifti("full.nii.gz", rng.integers(0, 1000, (32, 32, 32)).astype(np.int16))
    truncated = path.with_name("truncated.nii.gz")
    content = path.read_bytes()
    truncated.write_bytes(content[: len(content) // 2])
    image = ScalarImage(truncated)
    assert image.shape == (1, 32, 32, 32)  # the header survives
    with pytest.raises(ImageFileError, match=r"truncated\.nii\.gz.*truncated or corrupt"):
        image.load()


def test_multi_member_gzip_spanning_many_chunks_loads_like_nibabel(make_nifti: MakeNifti) -> None:
    """Several MiB inflated in 1 MiB pieces, across two gzip members (as `cat a.gz b.gz`)."""
    rng = np.random.default_rng(1)
    array = rng.integers(-500, 3000, (96, 80, 72)).astype(np.int16)  # 1.05 MiB per 8 slices
    path = make_nifti("one.nii", array, AFFINE)
    content = path.read_bytes()
    joined = path.with_name("two-members.nii.gz")
    middle = len(content) // 3
    joined.write_bytes(gzip.compress(content[:middle]) + gzip.compress(content[middle:]))
    data = ScalarImage(joined).data
    expected = np.asanyarray(nib.load(joined).dataobj).astype(np.float32)
    assert torch.equal(data[0], torch.from_numpy(expected))


def test_corrupt_compressed_data_fails_at_load(make_nifti: MakeNifti) -> None:
    rng = np.random.default_rng(2)
    path = make_nifti("full.nii.gz", rng.integers(0, 1000, (64, 64, 64)).astype(np.int16))
    content = bytearray(path.read_bytes())
    content[len(content) // 2 : len(content) // 2 + 64] = bytes(64)
    corrupt = path.with_name("corrupt.nii.gz")
    corrupt.write_bytes(bytes(content))
    image = ScalarImage(corrupt)
    with pytest.raises(ImageFileError, match=r"corrupt\.nii\.gz.*truncated or corrupt"):
        image.load()


# A file changed since its header was read -----------------------------------------------------


def rewrite(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(array, affine), path)


@pytest.mark.parametrize(
    ("new_array", "new_affine", "change"),
    [
        (volume().T, np.eye(4), "shape (6, 5, 4) -> (4, 5, 6)"),
        (volume(dtype=np.float32), np.eye(4), "dtype int16 -> float32"),
        (
            volume(),
            AFFINE,
            "affine [1 0 0 0; 0 1 0 0; 0 0 1 0] -> [0 -1.25 0 -10; 0.5 0 0 4.5; 0 0 2 30]",
        ),
    ],
    ids=["axes-reordered", "dtype", "affine"],
)
def test_file_changed_between_loads_is_refused(
    make_nifti: MakeNifti, new_array: np.ndarray, new_affine: np.ndarray, change: str
) -> None:
    """Voxels read with the header cached at first are scrambled: say so, never load them."""
    path = make_nifti("t1.nii.gz", volume())
    image = ScalarImage(path)
    image.load()
    image.unload()
    rewrite(path, new_array, new_affine)
    with pytest.raises(ImageChangedError) as caught:
        image.load()
    assert str(caught.value) == (
        f"Image file '{path}' changed since the queue was built (when its header was read):"
        f" {change}. Its voxels no longer fit the layout taken from that header. Rebuild the"
        " subjects and the queue after editing image files, or leave the files unchanged while"
        " a queue reads them."
    )
    assert isinstance(caught.value, ImageFileError)
    assert not image.is_loaded
    assert image.shape == (1, 6, 5, 4)  # the cached header is kept


def test_file_rescaled_between_loads_names_every_change(tmp_path: Path) -> None:
    path = tmp_path / "t1.nii"
    rewrite(path, volume(), np.eye(4))
    image = ScalarImage(path)
    assert image.shape == (1, 6, 5, 4)
    save_scaled(path, volume(), 2.0, 1.0)
    with pytest.raises(
        ImageChangedError,
        match=r"t1\.nii' changed since the queue was built \(when its header was read\):"
        r" dtype int16 -> float32; \(slope, intercept\) \(1\.0, 0\.0\) -> \(2\.0, 1\.0\)\.",
    ):
        image.load()


def test_unchanged_header_with_new_voxels_loads_them(make_nifti: MakeNifti) -> None:
    """A re-export with the same shape, dtype, affine and scaling is a legitimate edit."""
    path = make_nifti("t1.nii.gz", volume(), AFFINE)
    image = ScalarImage(path)
    image.load()
    image.unload()
    rewrite(path, volume()[::-1].copy(), AFFINE)
    image.load()
    assert torch.equal(image.data[0], torch.from_numpy(volume()[::-1].astype(np.float32)))


def test_load_reads_the_header_once(make_nifti: MakeNifti, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header that comes with the voxels is both the check and, if none is cached, the cache."""
    opened: list[Path] = []
    original_load = nib.load

    def counting_load(path: Path) -> Any:
        opened.append(path)
        return original_load(path)

    monkeypatch.setattr(nib, "load", counting_load)
    image = ScalarImage(make_nifti("t1.nii.gz", volume()))
    image.load()
    assert image.shape == (1, 6, 5, 4)
    image.unload()
    image.load()
    assert opened == [image.path, image.path]


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize(
    "variant", ["nifti1", "big-endian", "nifti2", "scaled", "float", "channels", "5d"]
)
def test_the_header_read_alone_is_the_one_nibabel_and_load_read(
    tmp_path: Path, suffix: str, variant: str
) -> None:
    """``Image.header`` reads a NIfTI file's header with one ``open`` (the catalog's pass);
    ``load()`` reads it through ``nib.load`` and refuses the voxels if the two disagree."""
    data = {
        "big-endian": volume().astype(">i2"),
        "float": volume(dtype=np.float32),
        "channels": volume((6, 5, 4, 3)),
        "5d": volume((6, 5, 4, 1, 2)),
    }.get(variant, volume())
    nifti = (nib.Nifti2Image if variant == "nifti2" else nib.Nifti1Image)(data, AFFINE)
    if variant == "scaled":
        nifti.header.set_slope_inter(0.5, 10.0)
    path = tmp_path / f"{variant}{suffix}"
    nib.save(nifti, path)
    header = ScalarImage(path).header
    reference = nib.load(path)
    assert header.stored_dtype == reference.get_data_dtype().newbyteorder("=")
    assert header.scaling == (reference.dataobj.slope, reference.dataobj.inter)
    assert header.scaled == (variant == "scaled") and header.compressed == (suffix == ".nii.gz")
    assert np.array_equal(header.affine, reference.affine)
    image = ScalarImage(path)
    assert image.header.changes_to(image_module._file_header(reference, path)) == []
    image.load()  # compares the header it reads with the cached one
    assert image.data.shape == image.shape


# Out of memory while loading ----------------------------------------------------------------------

LIMIT_8_GIB = (8 * 2**30, resource.RLIM_INFINITY)


def fail_to_allocate(error: BaseException) -> Callable[..., Any]:
    def allocate(*_: Any, **__: Any) -> Any:
        raise error

    return allocate


def inject_memory_error(monkeypatch: pytest.MonkeyPatch) -> BaseException:
    """Python's MemoryError from the allocation of the volume to inflate into."""
    error = MemoryError()
    monkeypatch.setattr(image_module, "empty_volume", fail_to_allocate(error))
    return error


def inject_pool_enomem(monkeypatch: pytest.MonkeyPatch) -> BaseException:
    """A worker's volume pool whose mmap fails as it does beyond ``ulimit -v``."""
    error = OSError(errno.ENOMEM, "Cannot allocate memory")
    monkeypatch.setattr(volumes, "_POOL", volumes.VolumePool())
    monkeypatch.setattr(volumes, "_private_map", fail_to_allocate(error))
    return error


@pytest.mark.parametrize("inject", [inject_memory_error, inject_pool_enomem])
def test_out_of_memory_while_inflating_gives_the_figures(
    make_nifti: MakeNifti,
    monkeypatch: pytest.MonkeyPatch,
    inject: Callable[[pytest.MonkeyPatch], BaseException],
) -> None:
    path = make_nifti("t1.nii.gz", np.zeros((128, 128, 64), np.int16))  # 2 MiB: pooled
    image = ScalarImage(path)
    assert image.shape == (1, 128, 128, 64)
    monkeypatch.setattr(resource, "getrlimit", lambda _: LIMIT_8_GIB)
    injected = inject(monkeypatch)
    with pytest.raises(ImageMemoryError) as caught:
        image.load()
    message = str(caught.value)
    assert message.startswith(
        f"Out of memory while loading '{path}': it needs 6.0 MiB (2.0 MiB for the stored voxels as"
        " read or inflated, 4.0 MiB for the float32 volume). Memory now: "
    )
    assert "GiB RAM available; the address-space limit (ulimit -v) is 8.0 GiB." in message
    assert message.endswith(
        "Lower num_workers (each worker loads a subject at a time), or raise `ulimit -v` or the"
        " job's memory limit."
    )
    assert "corrupt" not in message
    assert isinstance(caught.value, MemoryError)
    assert caught.value.__cause__ is injected
    assert not image.is_loaded


def test_allocation_beyond_the_address_space_is_a_memory_error(huge_header_file: Path) -> None:
    """A real failure, from torch's allocator: a NIfTI-2 header describing 2 PiB of int16."""
    path = huge_header_file
    image = ScalarImage(path)
    with pytest.raises(ImageMemoryError) as caught:
        image.load()
    message = str(caught.value)
    assert f"Out of memory while loading '{path}': it needs 6291456.0 GiB" in message
    assert "ulimit -v" in message and "corrupt" not in message
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_pickled_file_image_stays_lazy(make_nifti: MakeNifti) -> None:
    image = ScalarImage(make_nifti("t1.nii.gz", volume()))
    clone = pickle.loads(pickle.dumps(image))
    assert isinstance(clone, ScalarImage)
    assert clone.path == image.path
    assert not clone.is_loaded
    assert torch.equal(clone.data, image.data)


# In memory ----------------------------------------------------------------------------------------


def test_in_memory_three_d_gets_a_channel_axis_and_identity_affine() -> None:
    image = ScalarImage(volume())
    assert image.shape == (1, 6, 5, 4)
    assert image.path is None
    assert image.is_loaded
    np.testing.assert_array_equal(image.affine, np.eye(4))
    assert image.spacing == (1.0, 1.0, 1.0)
    assert "in memory" in repr(image)
    image.unload()  # in-memory data has nowhere to be reloaded from, so it stays
    assert image.is_loaded


@pytest.mark.parametrize(
    "dtype", [torch.int16, torch.uint8, torch.float16, torch.bfloat16, torch.float64, torch.bool]
)
def test_in_memory_scalar_image_is_float32(dtype: torch.dtype) -> None:
    data = torch.ones(2, 3, 4, 5).to(dtype)
    image = ScalarImage(data)
    assert image.dtype == image.data.dtype == torch.float32
    assert torch.equal(image.data, torch.ones(2, 3, 4, 5))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (torch.uint8, torch.uint8),
        (torch.int16, torch.int16),
        (torch.int64, torch.int64),
        (torch.bool, torch.uint8),
        (torch.float32, torch.int32),
        (torch.bfloat16, torch.int32),
    ],
)
def test_in_memory_label_map_dtype(dtype: torch.dtype, expected: torch.dtype) -> None:
    label = LabelMap(torch.ones(1, 3, 4, 5).to(dtype))
    assert label.dtype == label.data.dtype == expected


@pytest.mark.parametrize("shape", [(4, 4), (1, 1, 4, 4, 4)])
def test_in_memory_wrong_dimensionality_is_invalid(shape: tuple[int, ...]) -> None:
    with pytest.raises(InvalidImageError, match=r"\(C, X, Y, Z\)"):
        ScalarImage(torch.zeros(shape))


@pytest.mark.parametrize("kind", [ScalarImage, LabelMap])
def test_in_memory_big_endian_array(kind: type[Image]) -> None:
    array = volume(dtype=">i2")
    image = kind(array)
    assert torch.equal(image.data[0].to(torch.int64), torch.from_numpy(array.astype(np.int64)))


def test_in_memory_affine_must_be_4x4() -> None:
    with pytest.raises(InvalidImageError, match="4x4"):
        ScalarImage(volume(), affine=np.eye(3))


# Crops and affines --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    index=st.tuples(*(st.integers(0, 3),) * 3),
    size=st.tuples(*(st.integers(1, 3),) * 3),
)
def test_crop_copies_the_region_and_shifts_the_affine(
    index: tuple[int, int, int], size: tuple[int, int, int]
) -> None:
    image = ScalarImage(volume((2, 6, 6, 6), np.float32), affine=AFFINE)
    patch = image.crop(index, size)
    region = tuple(slice(start, start + length) for start, length in zip(index, size))
    assert torch.equal(patch.data, image.data[(slice(None), *region)])
    assert patch.data.untyped_storage().data_ptr() != image.data.untyped_storage().data_ptr()
    np.testing.assert_allclose(world(patch.affine, (0, 0, 0)), world(AFFINE, index))
    np.testing.assert_allclose(
        world(patch.affine, (1, 1, 1)),
        world(AFFINE, (index[0] + 1, index[1] + 1, index[2] + 1)),
    )
    np.testing.assert_array_equal(image.affine, AFFINE)  # the source is untouched


def test_shift_affine_keeps_the_linear_part() -> None:
    shifted = shift_affine(AFFINE, (2, 3, 4))
    np.testing.assert_array_equal(shifted[:3, :3], AFFINE[:3, :3])
    np.testing.assert_allclose(shifted[:3, 3], world(AFFINE, (2, 3, 4)))


def test_with_data_keeps_kind_path_and_affine(make_nifti: MakeNifti) -> None:
    label = LabelMap(make_nifti("seg.nii", volume(dtype=np.uint8), AFFINE))
    flipped = label.with_data(torch.flip(label.data, [1]))
    assert isinstance(flipped, LabelMap)
    assert flipped.path == label.path
    np.testing.assert_array_equal(flipped.affine, label.affine)
    assert torch.equal(flipped.data, torch.flip(label.data, [1]))
    assert not torch.equal(flipped.data, label.data)
