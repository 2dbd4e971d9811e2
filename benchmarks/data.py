"""The benchmark dataset: synthetic head-like int16 NIfTI volumes, generated once and cached.

Each volume is :func:`shmqueue.phantoms.head_volume`'s head, stored as ``.nii.gz``: it compresses
about as well as a real T1 scan, so the cost of gzip decompression per subject is realistic.

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

from shmqueue.phantoms import head_volume

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
            volume = head_volume(spec.shape, np.random.default_rng([spec.seed, index]))
            _write_atomically(volume, path)
        paths.append(path)
    return paths


def _write_atomically(volume: np.ndarray, path: Path) -> None:
    temporary = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.nii.gz")
    try:
        nib.save(nib.Nifti1Image(volume, np.eye(4)), temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
