"""Intensity augmentations with TorchIO 2.0's names and arguments, evaluated voxel by voxel (or
with a known neighbourhood) so that a patch needs only its own voxels: :class:`Noise`.

Their parameters are drawn once per subject and applied alike to every scalar image (label
maps are left alone unless ``include`` names them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..specs import SubjectSpec, VolumeCost
from .base import Augmentation
from .operations import IntensityOperation, Operation, Selection
from .parameters import Number, ValueRange
from .regions import Region, read_region


def region_generator(seed: int, region: Region) -> torch.Generator:
    """A generator for the per-voxel draws of one region, from the operation's ``seed`` and
    the region's position: the same region gets the same draws wherever it is evaluated."""
    entropy = np.random.SeedSequence([seed, *(value + 1 for value in region.key)])
    return torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))


class AddNoise(IntensityOperation):
    """Add Gaussian noise ``N(mean, std)``, drawn per voxel."""

    def __init__(self, selection: Selection, mean: float, std: float, seed: int) -> None:
        super().__init__(selection)
        self.mean, self.std, self.seed = mean, std, seed

    def evaluate(self, data: torch.Tensor, region: Region, statistics: Any) -> torch.Tensor:
        # Drawn over the region's box, so that each voxel's draw depends on the box, not on the
        # order a mapping (a flip) lists its voxels in.
        box = region.hull()
        noise = torch.empty((data.shape[0], *box.size), dtype=data.dtype)
        noise.normal_(self.mean, self.std, generator=region_generator(self.seed, box))
        return read_region(noise, region.within(box)).add(data)


class Noise(Augmentation):
    """Add Gaussian noise to scalar images (TorchIO 2.0's ``Noise``).

    The mean and standard deviation are drawn once per subject; the noise itself per voxel.
    Evaluated on a patch, the patch gets noise of the same distribution as the whole volume's
    (two overlapping patches of one subject get independent noise where they overlap).

    Args:
        mean: the noise's mean, a number or a range ``(a, b)`` drawn from.
        std: its standard deviation (>= 0), a number or a range.
        p: the probability that the transform is applied.
        include: names of the images to add noise to (default: every scalar image).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 32, 32, 32)))
        >>> noisy = sq.Noise(std=0.5)(subject, torch.Generator().manual_seed(0))
        >>> round(noisy.t1.data.std().item(), 1)
        0.5
    """

    def __init__(
        self,
        mean: Number | Sequence[Number] = 0.0,
        std: Number | Sequence[Number] = 0.25,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.mean = ValueRange.parse(mean, "Noise mean")
        self.std = ValueRange.parse(std, "Noise std").check_at_least(0.0, "Noise std")

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        mean = self.mean.draw(generator)
        std = self.std.draw(generator)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        return [AddNoise(self.selection, mean, std, seed)]

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """One noise volume per image, to which the image is added in place."""
        return [
            VolumeCost(name, spec.nbytes, spec.nbytes)
            for name, spec in images.items()
            if self.selection(name, spec.kind)
        ]
