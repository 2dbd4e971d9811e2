"""The benchmark dataset: synthetic head-like int16 NIfTI volumes, generated once and cached.

Each volume is an ellipsoidal "head" (scalp, skull, CSF and a brain whose grey/white contrast and
bias field vary smoothly) with Gaussian noise inside and Rayleigh noise outside, stored as
``.nii.gz``. Unlike uniform random voxels, this compresses about as well as a real T1 scan, so the
cost of gzip decompression per subject is realistic.

Files are named after everything that decides their content (generator version, shape, seed,
index), written under a temporary name and renamed, so an existing file is always complete and
can be reused by any later run.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

GENERATOR_VERSION = 1
DATA_ENV = "SHMQUEUE_BENCH_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/shmqueue-bench")

Shape = tuple[int, int, int]


@dataclass(frozen=True)
class DatasetSpec:
    """``num_files`` volumes of ``shape`` (int16, 1 mm isotropic), all derived from ``seed``."""

    num_files: int
    shape: Shape
    seed: int = 0

    def file_name(self, index: int) -> str:
        x, y, z = self.shape
        return f"head-v{GENERATOR_VERSION}-{x}x{y}x{z}-seed{self.seed}-{index:03d}.nii.gz"


def data_dir() -> Path:
    """``$SHMQUEUE_BENCH_DATA`` if set, else ``~/.cache/shmqueue-bench``."""
    return Path(os.environ.get(DATA_ENV, DEFAULT_DATA_DIR)).expanduser()


def ensure_dataset(spec: DatasetSpec, directory: Path | None = None) -> list[Path]:
    """Paths of the spec's volumes in ``directory`` (default :func:`data_dir`), made if missing."""
    directory = data_dir() if directory is None else directory
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(spec.num_files):
        path = directory / spec.file_name(index)
        if not path.exists():
            print(f"generating {path}", file=sys.stderr, flush=True)
            _write_atomically(head_volume(spec.shape, spec.seed, index), path)
        paths.append(path)
    return paths


def head_volume(shape: Shape, seed: int, index: int) -> np.ndarray:
    """An int16 head-like volume; the same ``(shape, seed, index)`` always gives the same voxels."""
    rng = np.random.default_rng([seed, index])
    radius = _ellipsoid_radius(shape, rng)
    tissue = 600.0 + 110.0 * np.tanh(3.0 * _smooth_field(shape, (22, 26, 22), rng))
    tissue += 60.0 * _smooth_field(shape, (5, 6, 5), rng)
    volume = np.select(
        [radius < 0.84, radius < 0.89, radius < 0.94, radius < 1.0],
        [tissue, np.float32(260.0), np.float32(90.0), np.float32(640.0)],
        default=np.float32(0.0),
    ).astype(np.float32)
    volume *= 1.0 + 0.12 * _smooth_field(shape, (3, 3, 3), rng)  # scanner bias field
    inside = radius < 1.0
    volume += np.where(inside, 14.0, 0.0).astype(np.float32) * _normal(shape, rng)
    background = 5.0 * np.hypot(_normal(shape, rng), _normal(shape, rng))
    volume = np.where(inside, volume, background)
    return np.clip(np.rint(volume), 0, np.iinfo(np.int16).max).astype(np.int16)


def _normal(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _ellipsoid_radius(shape: Shape, rng: np.random.Generator) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the scalp's surface) of a slightly jittered head."""
    semi_axes = rng.uniform(0.78, 0.86, size=3) * np.asarray(shape) / 2
    centre = np.asarray(shape) / 2 + rng.uniform(-0.02, 0.02, size=3) * np.asarray(shape)
    grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
    squared = np.zeros(shape, dtype=np.float32)
    for axis, grid in enumerate(grids):
        squared += ((grid.astype(np.float32) - centre[axis]) / semi_axes[axis]) ** 2
    return np.sqrt(squared)


def _smooth_field(shape: Shape, grid: Shape, rng: np.random.Generator) -> np.ndarray:
    """A smooth random field of roughly unit scale: a coarse Gaussian grid, upsampled."""
    coarse = torch.from_numpy(rng.standard_normal(grid, dtype=np.float32))[None, None]
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    return field[0, 0].numpy()


def _write_atomically(volume: np.ndarray, path: Path) -> None:
    temporary = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.nii.gz")
    try:
        nib.save(nib.Nifti1Image(volume, np.eye(4)), temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
