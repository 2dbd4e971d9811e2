"""Synthetic heads: the demo's dataset and the benchmarks' volumes, from one generator.

A head is an ellipsoid of scalp, skull, CSF and a brain whose grey/white contrast and bias field
vary smoothly, with Gaussian noise inside and Rayleigh noise outside. Unlike uniform random
voxels, it compresses about as well as a real T1 scan, so the cost of gzip decompression per
subject is realistic. :func:`head_volume` is the head alone (the benchmarks' data);
:func:`head_phantom` adds ventricles and a lesion and returns their label map (the demo's).
Both depend only on the generator they are given: the same seed always gives the same voxels.
The benchmarks cache :func:`head_volume`'s volumes under a generator version
(``benchmarks/data.py``): a change to the voxels it makes must raise that version.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

BRAIN_RADIUS = 0.84
"""Where the brain ends, on the ellipsoidal radius that is 1 on the scalp's surface."""

PHANTOM_SHAPE = (96, 112, 96)
"""The demo's volumes: small enough to generate and train on in seconds."""


def head_volume(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """An int16 head-like volume of ``shape``, 1 mm isotropic.

    Example:
        >>> volume = head_volume((32, 32, 32), np.random.default_rng(0))
        >>> volume.dtype, volume.shape
        (dtype('int16'), (32, 32, 32))
    """
    volume, _ = _head(shape, rng)
    return _to_int16(volume)


def head_phantom(
    rng: np.random.Generator, shape: tuple[int, int, int] = PHANTOM_SHAPE
) -> tuple[np.ndarray, np.ndarray]:
    """A T1-like int16 head with ventricles and a lesion, and its uint8 labels.

    The labels are 0 (background, scalp, skull, CSF), 1 (brain), 2 (ventricles, darker than the
    brain) and 3 (a lesion, brighter than the brain).

    Example:
        >>> t1, labels = head_phantom(np.random.default_rng(0), (48, 56, 48))
        >>> sorted(np.unique(labels).tolist())
        [0, 1, 2, 3]
    """
    volume, radius = _head(shape, rng)
    x, y, z = np.meshgrid(
        *(np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape), indexing="ij"
    )
    brain = radius < BRAIN_RADIUS
    ventricles = brain & (
        ((np.abs(x) - 0.12) / 0.08) ** 2 + (y / 0.3) ** 2 + ((z - 0.05) / 0.12) ** 2 < 1.0
    )
    centre = rng.uniform(-0.3, 0.3, size=3)
    size = rng.uniform(0.06, 0.12)
    lesion = brain & ((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 < size**2)
    # Scaled rather than replaced, so that the structures keep the tissue's noise.
    volume[ventricles] *= 0.25
    volume[lesion] *= 1.6
    labels = np.zeros(shape, dtype=np.uint8)
    labels[brain] = 1
    labels[ventricles] = 2
    labels[lesion] = 3
    return _to_int16(volume), labels


def _head(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The head's intensities (float32, noise included) and its ellipsoidal radius."""
    radius = _ellipsoid_radius(shape, rng)
    tissue = 600.0 + 110.0 * np.tanh(3.0 * _smooth_field(shape, (22, 26, 22), rng))
    tissue += 60.0 * _smooth_field(shape, (5, 6, 5), rng)
    volume = np.select(
        [radius < BRAIN_RADIUS, radius < 0.89, radius < 0.94, radius < 1.0],
        [tissue, np.float32(260.0), np.float32(90.0), np.float32(640.0)],
        default=np.float32(0.0),
    ).astype(np.float32)
    volume *= 1.0 + 0.12 * _smooth_field(shape, (3, 3, 3), rng)  # scanner bias field
    inside = radius < 1.0
    volume += np.where(inside, 14.0, 0.0).astype(np.float32) * _normal(shape, rng)
    background = 5.0 * np.hypot(_normal(shape, rng), _normal(shape, rng))
    return np.where(inside, volume, background), radius


def _to_int16(volume: np.ndarray) -> np.ndarray:
    rounded: np.ndarray = np.clip(np.rint(volume), 0, np.iinfo(np.int16).max)
    return rounded.astype(np.int16)


def _normal(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _ellipsoid_radius(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the scalp's surface) of a slightly jittered head."""
    semi_axes = rng.uniform(0.78, 0.86, size=3) * np.asarray(shape) / 2
    centre = np.asarray(shape) / 2 + rng.uniform(-0.02, 0.02, size=3) * np.asarray(shape)
    grids = np.ogrid[: shape[0], : shape[1], : shape[2]]
    squared = np.zeros(shape, dtype=np.float32)
    for axis, grid in enumerate(grids):
        squared += ((grid.astype(np.float32) - centre[axis]) / semi_axes[axis]) ** 2
    return np.sqrt(squared)


def _smooth_field(
    shape: tuple[int, int, int], grid: tuple[int, int, int], rng: np.random.Generator
) -> np.ndarray:
    """A smooth random field of roughly unit scale: a coarse Gaussian grid, upsampled."""
    coarse = torch.from_numpy(rng.standard_normal(grid, dtype=np.float32))[None, None]
    field = F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True)
    smooth: np.ndarray = field[0, 0].numpy()
    return smooth
