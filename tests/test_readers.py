"""Readers: NRRD, MHA and DICOM series through SimpleITK, and ``reader=``, checked against NIfTI.

Every file is written inside the test from one NIfTI volume (nibabel), converted by SimpleITK;
shmqueue must read the same voxels at the same world coordinates (RAS+) as nibabel reads the
NIfTI, through the queue with and without workers.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
import torch

import shmqueue as sq
from shmqueue.errors import ImageChangedError, ImageFileError, InvalidImageError

sitk = pytest.importorskip("SimpleITK")

SHAPE = (24, 20, 16)
FORMATS = ("nrrd", "mha", "dicom")


def _affine() -> np.ndarray:
    """A proper rotation (DICOM slices sort along its normal), anisotropic, translated."""
    about_x = np.array(
        [[1.0, 0.0, 0.0], [0.0, np.cos(0.3), -np.sin(0.3)], [0.0, np.sin(0.3), np.cos(0.3)]]
    )
    about_z = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    affine = np.eye(4)
    affine[:3, :3] = about_z @ about_x @ np.diag([0.5, 1.25, 2.0])
    affine[:3, 3] = [-10.0, 4.5, 30.0]
    return affine


VOXELS = (np.arange(np.prod(SHAPE)).reshape(SHAPE) % 7000 - 3000).astype(np.int16)


def _write_dicom_series(image: Any, directory: Path) -> None:
    """One file per slice, with the tags that place it (position, orientation) in one series."""
    directory.mkdir()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    orientation = "\\".join(str(value) for value in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for k in range(image.GetDepth()):
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1",
            "0020|000e": "1.2.826.0.1.3680043.2.1125.1.1",
            "0008|0018": f"1.2.826.0.1.3680043.2.1125.1.1.{k + 1}",
            "0020|0011": "1",
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(str(value) for value in position),
            "0020|0037": orientation,
            "0018|0050": str(image.GetSpacing()[2]),
        }
        slice_ = image[:, :, k]
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(directory / f"slice{k:03d}.dcm"))
        writer.Execute(slice_)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The NIfTI volume and its NRRD, MHA and DICOM-series copies, by format."""
    root = tmp_path_factory.mktemp("readers")
    nifti = root / "t1.nii.gz"
    nib.save(nib.Nifti1Image(VOXELS, _affine()), nifti)
    read = sitk.ReadImage(str(nifti))
    image = sitk.GetImageFromArray(sitk.GetArrayFromImage(read))  # without NIfTI's metadata
    image.CopyInformation(read)
    paths = {"nifti": nifti, "nrrd": root / "t1.nrrd", "mha": root / "t1.mha"}
    sitk.WriteImage(image, str(paths["nrrd"]))
    sitk.WriteImage(image, str(paths["mha"]))
    paths["dicom"] = root / "series"
    _write_dicom_series(image, paths["dicom"])
    return paths


def _world(affine: np.ndarray) -> np.ndarray:
    """World coordinates of every corner of the volume."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in SHAPE], indexing="ij")).reshape(3, -1)
    return (affine[:3, :3] @ corners).T + affine[:3, 3]


def _assert_like_nifti(data: torch.Tensor, affine: np.ndarray, nifti: Path) -> None:
    reference = nib.load(nifti)
    assert torch.equal(data[0].to(torch.int64), torch.from_numpy(np.asarray(reference.dataobj)))
    assert np.allclose(_world(affine), _world(reference.affine), atol=1e-4)


@pytest.mark.parametrize("kind", [sq.ScalarImage, sq.LabelMap])
@pytest.mark.parametrize("fmt", FORMATS)
def test_file_reads_like_its_nifti(
    written: dict[str, Path], fmt: str, kind: type[sq.Image]
) -> None:
    image = kind(written[fmt])
    nifti = kind(written["nifti"])
    assert image.shape == (1, *SHAPE)
    assert image.dtype == nifti.dtype == (torch.float32 if kind is sq.ScalarImage else torch.int16)
    assert image.header.stored_dtype == np.dtype(np.int16)
    assert np.allclose(image.spacing, nifti.spacing)
    _assert_like_nifti(image.data, image.affine, written["nifti"])
    assert image.data.dtype == image.dtype


@pytest.mark.parametrize(
    ("num_workers", "context"), [(0, None), (2, "fork")], ids=["in-process", "2-fork"]
)
def test_queue_reads_every_format(
    written: dict[str, Path], num_workers: int, context: str | None
) -> None:
    subjects = [
        sq.Subject(t1=sq.ScalarImage(written[fmt]), seg=sq.LabelMap(written[fmt]), format=fmt)
        for fmt in FORMATS
    ]
    with sq.Queue(
        subjects,
        sq.UniformSampler(None, SHAPE),  # one patch: the whole volume
        max_length=3,
        patches_per_volume=1,
        num_workers=num_workers,
        multiprocessing_context=context,
        seed=0,
    ) as queue:
        patches = list(queue)
    assert sorted(patch["format"] for patch in patches) == sorted(FORMATS)
    for patch in patches:
        for name in ("t1", "seg"):
            _assert_like_nifti(patch[name].data, patch[name].affine, written["nifti"])
        assert patch["t1"].data.dtype == torch.float32 and patch["seg"].data.dtype == torch.int16


def test_vector_pixels_are_channels(tmp_path: Path) -> None:
    channels = np.stack([VOXELS, -VOXELS, VOXELS // 2], axis=-1)  # (X, Y, Z, C)
    image = sitk.GetImageFromArray(channels.transpose(2, 1, 0, 3).copy(), isVector=True)
    path = tmp_path / "rgb.nrrd"
    sitk.WriteImage(image, str(path))
    loaded = sq.LabelMap(path)
    assert loaded.shape == (3, *SHAPE)
    assert torch.equal(loaded.data, torch.from_numpy(np.moveaxis(channels, -1, 0)))


def _forbid(*_: Any, **__: Any) -> Any:
    raise AssertionError("voxels were read")


def test_queue_builds_from_headers_alone(
    written: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    for reader in (sitk.ImageFileReader, sitk.ImageSeriesReader):
        monkeypatch.setattr(reader, "Execute", _forbid)
    monkeypatch.setattr(sitk, "ReadImage", _forbid)
    subjects = [
        sq.Subject(t1=sq.ScalarImage(written[fmt]), seg=sq.LabelMap(written["nrrd"]))
        for fmt in (*FORMATS, "mha")
    ]
    with sq.Queue(subjects, sq.UniformSampler(None, 8), max_length=20, patches_per_volume=5) as q:
        assert q.catalog.patch_counts == (5, 5, 5, 5)
    estimate = sq.estimate_memory(subjects, 8, max_length=20, num_workers=2)
    assert estimate.worker.raw == VOXELS.nbytes  # SimpleITK's buffer of the stored voxels
    assert not any(image.is_loaded for subject in subjects for image in subject.images.values())


def test_changed_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "t1.mha"
    sitk.WriteImage(sitk.GetImageFromArray(VOXELS.transpose(2, 1, 0).copy()), str(path))
    image = sq.ScalarImage(path)
    assert image.shape == (1, *SHAPE)
    sitk.WriteImage(sitk.GetImageFromArray(VOXELS.transpose(1, 2, 0).copy()), str(path))
    with pytest.raises(ImageChangedError, match=r"t1\.mha.*shape \(24, 20, 16\) -> \(24, 16, 20\)"):
        image.load()


# reader= ------------------------------------------------------------------------------------------

AFFINE = _affine()


def read_npy(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A reader as TorchIO takes: ``(C, X, Y, Z)`` data and a 4x4 affine."""
    return np.load(path)[None], AFFINE


class CountingReader:
    """Counts its calls (picklable: a module-level class)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> tuple[torch.Tensor, np.ndarray]:
        self.calls += 1
        return torch.from_numpy(np.load(path)), AFFINE


@pytest.mark.parametrize("context", [None, "spawn"], ids=["in-process", "2-spawn"])
def test_reader_round_trip(tmp_path: Path, context: str | None) -> None:
    path = tmp_path / "t1.npy"
    np.save(path, VOXELS)
    subject = sq.Subject(
        t1=sq.ScalarImage(path, reader=read_npy), seg=sq.LabelMap(path, reader=read_npy)
    )
    with sq.Queue(
        [subject],
        sq.UniformSampler(None, SHAPE),
        max_length=1,
        patches_per_volume=1,
        num_workers=0 if context is None else 2,
        multiprocessing_context=context,
    ) as queue:
        (patch,) = list(queue)
    assert torch.equal(patch["t1"].data[0], torch.from_numpy(VOXELS.astype(np.float32)))
    assert patch["seg"].data.dtype == torch.int16
    assert np.array_equal(patch["seg"].affine, AFFINE)


def test_reader_header_costs_one_call(tmp_path: Path) -> None:
    path = tmp_path / "t1.npy"
    np.save(path, VOXELS)
    reader = CountingReader()
    image = sq.LabelMap(path, reader=reader)
    assert reader.calls == 0
    assert (image.shape, image.dtype, image.spacing) == ((1, *SHAPE), torch.int16, (0.5, 1.25, 2.0))
    assert reader.calls == 1
    image.load()
    assert reader.calls == 2 and torch.equal(image.data[0], torch.from_numpy(VOXELS))


def test_reader_output_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "t1.npy"
    np.save(path, VOXELS)
    with pytest.raises(InvalidImageError, match=r"affine of shape \(3, 3\)"):
        _ = sq.ScalarImage(path, reader=lambda p: (np.load(p), np.eye(3))).shape
    with pytest.raises(ImageFileError, match=r"The reader .* failed on '.*t1\.npy': KeyError"):
        _ = sq.ScalarImage(path, reader=lambda p: {}["nothing"]).shape
    with pytest.raises(TypeError, match="reader must be callable"):
        sq.ScalarImage(path, reader="numpy")  # type: ignore[arg-type]


# Unreadable files ---------------------------------------------------------------------------------


def test_unknown_format_names_the_file_and_the_ways_to_read_it(tmp_path: Path) -> None:
    path = tmp_path / "volume.xyz"
    path.write_bytes(b"\0" * 512)
    with pytest.raises(ImageFileError) as caught:
        _ = sq.ScalarImage(path).shape
    message = str(caught.value)
    assert f"'{path}'" in message
    assert "pip install 'shmqueue[sitk]'" in message and "reader=" in message


@pytest.mark.parametrize("fmt", FORMATS)
def test_without_simpleitk_the_error_names_the_extra(
    written: dict[str, Path], fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import fails as if not installed
    with pytest.raises(ImageFileError) as caught:
        _ = sq.ScalarImage(written[fmt]).shape
    message = str(caught.value)
    assert f"'{written[fmt]}'" in message and "pip install 'shmqueue[sitk]'" in message


def test_directory_without_a_series(tmp_path: Path) -> None:
    with pytest.raises(ImageFileError, match=r"holding no DICOM series.*single series"):
        _ = sq.ScalarImage(tmp_path).shape
