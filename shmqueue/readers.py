"""Formats nibabel does not read: NRRD, MHA/MHD and DICOM through SimpleITK (the ``sitk`` extra).

An :class:`~shmqueue.Image` whose path ends in one of :data:`SITK_SUFFIXES`, or names a
directory (a DICOM series), is read here. Its header comes from
``ImageFileReader.ReadImageInformation``, which reads no voxel: for a series, from the first and
last file's information and the number of slices (the directory is listed once per read, as
GDCM sorts it). Its voxels come from SimpleITK in the worker that loads the image.

SimpleITK's world is LPS; shmqueue's affines are NIfTI's, RAS+: the first two rows are negated.
SimpleITK is imported only when such a file is read; without it the error names the file and
the extra to install.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from .errors import ImageFileError

SITK_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".dcm", ".dicom", ".ima")
SITK_EXTRA = "pip install 'shmqueue[sitk]'"
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def reads_with_sitk(path: Path) -> bool:
    """Whether ``path`` is read through SimpleITK: a directory or one of :data:`SITK_SUFFIXES`."""
    return path.is_dir() or path.name.lower().endswith(SITK_SUFFIXES)


@dataclass(frozen=True)
class SitkFile:
    """A file (or series) whose header SimpleITK read, and the way to read its voxels.

    Attributes:
        shape: ``(C, X, Y, Z)``.
        dtype: the voxels' dtype as SimpleITK reads them (DICOM's rescale already applied).
        affine: the voxel-to-world matrix, RAS+.
        voxels: a context manager giving the voxels as an ``(X, Y, Z, C)`` view of SimpleITK's
            buffer, valid inside the ``with`` block only.
    """

    shape: tuple[int, int, int, int]
    dtype: np.dtype[Any]
    affine: np.ndarray
    voxels: Callable[[], AbstractContextManager[np.ndarray]]


def _simpleitk(path: Path) -> ModuleType:
    try:
        import SimpleITK
    except ImportError as error:
        what = "a directory (read as a DICOM series)" if path.is_dir() else f"a {path.suffix} file"
        raise ImageFileError(
            f"Cannot read '{path}': it is {what}, which shmqueue reads with SimpleITK, not"
            f" installed. Install it with {SITK_EXTRA}, convert the file to NIfTI, or pass"
            " reader= to the image."
        ) from error
    return SimpleITK


def sitk_affine(
    spacing: tuple[float, ...], origin: tuple[float, ...], direction: tuple[float, ...]
) -> np.ndarray:
    """The RAS+ affine of a 3D SimpleITK geometry (LPS direction cosines, row-major)."""
    affine = np.eye(4)
    affine[:3, :3] = np.reshape(direction, (3, 3)) * np.asarray(spacing)
    affine[:3, 3] = origin
    return LPS_TO_RAS @ affine


def _geometry_3d(reader: Any) -> tuple[list[int], list[float], list[float], list[float]]:
    """Size, spacing, origin and direction of ``reader``'s image, a 2D one as one slice."""
    size = list(reader.GetSize())
    spacing = list(reader.GetSpacing())
    origin = list(reader.GetOrigin())
    direction = list(reader.GetDirection())
    if len(size) == 2:
        size, spacing, origin = [*size, 1], [*spacing, 1.0], [*origin, 0.0]
        direction = [*direction[:2], 0.0, *direction[2:], 0.0, 0.0, 0.0, 1.0]
    return size, spacing, origin, direction


def _information(sitk: ModuleType, path: Path, file: str) -> Any:
    reader = sitk.ImageFileReader()
    reader.SetFileName(file)
    try:
        reader.ReadImageInformation()
    except RuntimeError as error:
        raise ImageFileError(
            f"SimpleITK cannot read the header of '{path}': {str(error).strip()}. The file is"
            " probably corrupt, or not in a format SimpleITK reads; pass reader= to read it."
        ) from error
    return reader


def _check_dimensions(path: Path, size: list[int]) -> None:
    if len(size) != 3:
        raise ImageFileError(
            f"'{path}' has {len(size)} dimensions (size {tuple(size)}); shmqueue needs a 3D"
            " volume with optional channels. Split 4D series into one image per time point."
        )


def _dtype(sitk: ModuleType, reader: Any) -> np.dtype[Any]:
    """The numpy dtype of a component of ``reader``'s pixels."""
    sitk_type = sitk.GetPixelIDValueAsString(reader.GetPixelID()).removeprefix("vector of ")
    dtypes = {
        "8-bit unsigned integer": np.uint8,
        "8-bit signed integer": np.int8,
        "16-bit unsigned integer": np.uint16,
        "16-bit signed integer": np.int16,
        "32-bit unsigned integer": np.uint32,
        "32-bit signed integer": np.int32,
        "64-bit unsigned integer": np.uint64,
        "64-bit signed integer": np.int64,
        "32-bit float": np.float32,
        "64-bit float": np.float64,
    }
    if sitk_type not in dtypes:
        raise ImageFileError(f"SimpleITK reads pixels of type '{sitk_type}', which is not a number")
    return np.dtype(dtypes[sitk_type])


@contextmanager
def _voxels(sitk: ModuleType, path: Path, read: Callable[[], Any]) -> Iterator[np.ndarray]:
    """The voxels ``read`` gives, as an ``(X, Y, Z, C)`` view kept valid for the block."""
    try:
        image = read()
    except RuntimeError as error:
        raise ImageFileError(
            f"SimpleITK cannot read the voxels of '{path}': {str(error).strip()}. The file is"
            " probably truncated or corrupt; re-export or re-copy it."
        ) from error
    array = sitk.GetArrayViewFromImage(image)  # (Z, Y, X[, C]); a view of `image`'s buffer
    if array.ndim == image.GetDimension():  # scalar pixels: one channel
        array = array[..., None]
    if image.GetDimension() == 2:  # a single slice
        array = array[None]
    yield array.transpose(2, 1, 0, 3)
    del array, image


def open_sitk(path: Path) -> SitkFile:
    """Read the header of the NRRD/MHA/MHD/DICOM file or DICOM series directory at ``path``.

    Raises:
        ImageFileError: SimpleITK is not installed (the message names the extra), the header
            cannot be read, the image is not 3D, or a directory holds no DICOM series or several.
    """
    sitk = _simpleitk(path)
    if not path.is_dir():
        reader = _information(sitk, path, str(path))
        size, spacing, origin, direction = _geometry_3d(reader)
        _check_dimensions(path, size)
        dtype = _dtype(sitk, reader)
        channels = reader.GetNumberOfComponents()
        affine = sitk_affine(tuple(spacing), tuple(origin), tuple(direction))
        return SitkFile(
            (channels, *size), dtype, affine, lambda: _voxels(sitk, path, reader.Execute)
        )
    files = _series_files(sitk, path)
    first = _information(sitk, path, files[0])
    size, spacing, origin, direction = _geometry_3d(first)
    if size[2] != 1:
        raise ImageFileError(
            f"'{path}' is a DICOM series of multi-frame files ({files[0]} holds {size[2]}"
            " slices): pass one file's path instead of the directory."
        )
    affine = sitk_affine(tuple(spacing), tuple(origin), tuple(direction))
    if len(files) > 1:  # as ITK's series reader: the slice step from the first to the last
        last = _information(sitk, path, files[-1])
        _, _, last_origin, _ = _geometry_3d(last)
        step = (np.asarray(last_origin) - np.asarray(origin)) / (len(files) - 1)
        affine[:3, 2] = LPS_TO_RAS[:3, :3] @ step

    def read() -> Any:
        series = sitk.ImageSeriesReader()
        series.SetFileNames(files)
        return series.Execute()

    shape = (first.GetNumberOfComponents(), size[0], size[1], len(files))
    return SitkFile(shape, _dtype(sitk, first), affine, lambda: _voxels(sitk, path, read))


def _series_files(sitk: ModuleType, path: Path) -> list[str]:
    """The files of the one DICOM series in the directory ``path``, in slice order."""
    series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(path))
    if len(series) != 1:
        found = "no DICOM series" if not series else f"{len(series)} DICOM series ({series})"
        raise ImageFileError(
            f"'{path}' is a directory holding {found}: a directory path is read as one DICOM"
            " series. Pass the directory of a single series, or the path of one image file."
        )
    files: list[str] = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path), series[0]))
    return files
