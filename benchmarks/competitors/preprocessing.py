"""Scenario (h)'s pipeline: the preprocessing every runner does to a subject before augmenting it.

In this order, in each library's own terms: reorient every image to RAS, resample it to
:attr:`Preprocessing.spacing` mm isotropic (linear for the volume, nearest for its brain mask),
crop or pad it about its centre to :attr:`Preprocessing.shape`, and z-normalise the volume; then
the augmentation, a flip of each of :data:`FLIP_AXES` with the request's ``flip_probability`` and
Gaussian noise of its ``noise_std``, before patches are drawn uniformly. Everything before the
first flip is deterministic: it is what a cache of preprocessed subjects keeps (shmqueue's
``cache_dir``, MONAI's ``PersistentDataset`` and ``CacheDataset``).

Like :mod:`benchmarks.competitors.runner`, this module is imported inside every library's venv:
the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

FLIP_AXES = (0, 1, 2)
"""Each is flipped independently, with the request's ``flip_probability``."""


@dataclass(frozen=True)
class Preprocessing:
    """Where scenario (h)'s preprocessing takes each subject: ``spacing`` mm isotropic, then
    ``shape`` voxels (after reorienting to RAS; z-normalised after)."""

    spacing: float
    shape: tuple[int, int, int]

    def describe(self) -> str:
        """The steps, for the scenario's description."""
        x, y, z = self.shape
        return (
            f"reoriented to RAS, resampled to {self.spacing:g} mm, cropped or padded to"
            f" {x}x{y}x{z}, z-normalised, then a flip of each axis and Gaussian noise"
        )
