"""The benchmark dataset: synthetic head-like int16 NIfTI volumes, generated once and cached.

Each volume is :func:`shmqueue.phantoms.head_volume`'s head, stored as ``.nii.gz``: it compresses
about as well as a real T1 scan, so the cost of gzip decompression per subject is realistic.
Scenarios that sample patches by label (the comparison's augmentation scenario) or preprocess
the volumes (its preprocessing scenario) also read each volume's brain mask, a uint8 label map (0
outside the brain, 1 inside) beside it. A dataset is 1 mm isotropic in RAS orientation unless its
spec says otherwise; the preprocessing scenario's volumes are coarser and stored LPS, so that
reorienting and resampling them is work.

Files are named after everything that decides their content (generator version, shape, spacing
and orientation where they differ from 1 mm RAS, seed, index), written under a temporary name
and renamed, so an existing file is always complete and can be reused by any later run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, inv_ornt_aff, ornt_transform

from shmqueue.phantoms import head_phantom, head_volume

GENERATOR_VERSION = 1
DATA_ENV = "SHMQUEUE_BENCH_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/shmqueue-bench")

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class DatasetSpec:
    """``num_files`` int16 volumes, all derived from ``seed``.

    The head fills a grid of ``shape`` voxels in RAS order, ``spacing`` mm apart on each axis;
    each file stores it with its voxel axes pointing to ``orientation`` (three letters, as
    nibabel's axis codes: ``"LPS"`` flips the first two axes), its affine placing every voxel
    where the RAS grid has it. The defaults, 1 mm RAS, keep the names (and files) of datasets
    made before these fields existed.
    """

    num_files: int
    shape: Shape
    seed: int = 0
    spacing: float = 1.0
    orientation: str = "RAS"

    @property
    def default_grid(self) -> bool:
        """1 mm RAS: the grid of every dataset made before spacing and orientation existed."""
        return (self.spacing, self.orientation) == (1.0, "RAS")

    def file_name(self, index: int) -> str:
        x, y, z = self.shape
        grid = "" if self.default_grid else f"-{self.spacing:g}mm-{self.orientation}"
        return f"head-v{GENERATOR_VERSION}-{x}x{y}x{z}{grid}-seed{self.seed}-{index:03d}.nii.gz"

    def label_file_name(self, index: int) -> str:
        """The brain mask of volume ``index``: :meth:`file_name` with a ``-brain`` suffix."""
        return self.file_name(index).replace(".nii.gz", "-brain.nii.gz")

    def describe(self) -> str:
        """``"24 int16 182x218x182"``, with ``" (1.3 mm, LPS)"`` after it unless 1 mm RAS."""
        x, y, z = self.shape
        grid = "" if self.default_grid else f" ({self.spacing:g} mm, {self.orientation})"
        return f"{self.num_files} int16 {x}x{y}x{z}{grid}"

    def stored(self, volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``volume`` (a grid of ``shape`` in RAS order) reoriented to ``orientation``, and the
        affine of the result: ``spacing`` mm per voxel, every voxel where it was in RAS."""
        reorientation = ornt_transform(
            axcodes2ornt(tuple("RAS")), axcodes2ornt(tuple(self.orientation))
        )
        ras = np.diag([self.spacing, self.spacing, self.spacing, 1.0])
        affine = ras @ inv_ornt_aff(reorientation, volume.shape)
        return apply_orientation(volume, reorientation), affine


def data_dir() -> Path:
    """``$SHMQUEUE_BENCH_DATA`` if set, else ``~/.cache/shmqueue-bench``."""
    return Path(os.environ.get(DATA_ENV, DEFAULT_DATA_DIR)).expanduser()


def ensure_dataset(spec: DatasetSpec, directory: Path | None = None) -> list[Path]:
    """Paths of the spec's volumes in ``directory`` (default :func:`data_dir`), made if missing."""
    return _ensure_files(spec, directory, spec.file_name, lambda rng: head_volume(spec.shape, rng))


def ensure_labels(spec: DatasetSpec, directory: Path | None = None) -> list[Path]:
    """Paths of the brain masks of the spec's volumes (see :func:`ensure_dataset`), made if missing.

    :func:`~shmqueue.phantoms.head_phantom` draws the same head as
    :func:`~shmqueue.phantoms.head_volume` from the same generator (it only adds structures that
    the benchmark volumes do not have), so its labels above 0 are exactly the brain of the volume
    with the same index: 1 there, 0 elsewhere.
    """

    def brain(rng: np.random.Generator) -> np.ndarray:
        _, labels = head_phantom(rng, spec.shape)
        return (labels > 0).astype(np.uint8)

    return _ensure_files(spec, directory, spec.label_file_name, brain)


def _ensure_files(
    spec: DatasetSpec,
    directory: Path | None,
    name: Callable[[int], str],
    make: Callable[[np.random.Generator], np.ndarray],
) -> list[Path]:
    """``directory / name(index)`` for each of the spec's indices, written from ``make`` (given
    the index's generator) where missing."""
    directory = data_dir() if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(spec.num_files):
        path = directory / name(index)
        if not path.exists():
            print(f"generating {path}", file=sys.stderr, flush=True)
            volume, affine = spec.stored(make(np.random.default_rng([spec.seed, index])))
            _write_atomically(volume, affine, path)
        paths.append(path)
    return paths


def _write_atomically(volume: np.ndarray, affine: np.ndarray, path: Path) -> None:
    temporary = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.nii.gz")
    try:
        nib.save(nib.Nifti1Image(volume, affine), temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
