"""The benchmark dataset: synthetic head-like int16 NIfTI volumes, generated once and cached.

Each volume is :func:`shmqueue.phantoms.head_volume`'s head, stored as ``.nii.gz``: it compresses
about as well as a real T1 scan, so the cost of gzip decompression per subject is realistic.
Scenarios that sample patches by label (the comparison's augmentation scenario) also read each
volume's brain mask, a uint8 label map (0 outside the brain, 1 inside) beside it.

Files are named after everything that decides their content (generator version, shape, seed,
index), written under a temporary name and renamed, so an existing file is always complete and
can be reused by any later run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from shmqueue.phantoms import head_phantom, head_volume

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

    def label_file_name(self, index: int) -> str:
        """The brain mask of volume ``index``: :meth:`file_name` with a ``-brain`` suffix."""
        return self.file_name(index).replace(".nii.gz", "-brain.nii.gz")


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
            _write_atomically(make(np.random.default_rng([spec.seed, index])), path)
        paths.append(path)
    return paths


def _write_atomically(volume: np.ndarray, path: Path) -> None:
    temporary = path.with_name(f".{path.name[: -len('.nii.gz')]}.{os.getpid()}.nii.gz")
    try:
        nib.save(nib.Nifti1Image(volume, np.eye(4)), temporary)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
