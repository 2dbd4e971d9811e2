"""UniformSampler: every patch position in the volume is equally likely."""

from __future__ import annotations

import torch

from ..specs import SubjectSpec
from ..subject import Subject
from .base import PatchLocation, PatchSampler


class UniformSampler(PatchSampler):
    """Draw patches whose first voxel is uniform over all positions where the patch fits.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 32, 32, 32)))
        >>> sampler = sq.UniformSampler(subject, patch_size=16, num_patches=2)
        >>> [patch.t1.data.shape for patch in sampler]
        [torch.Size([1, 16, 16, 16]), torch.Size([1, 16, 16, 16])]
    """

    def locations(
        self, subject: Subject, num_patches: int, generator: torch.Generator
    ) -> list[PatchLocation]:
        self.check_fits(subject)
        shape = subject.spatial_shape
        starts = [
            torch.randint(
                0, shape[axis] - self.patch_size[axis] + 1, (num_patches,), generator=generator
            ).tolist()
            for axis in range(3)
        ]
        return [PatchLocation((i, j, k), self.patch_size) for i, j, k in zip(*starts)]

    def whole_images(self, images: SubjectSpec) -> list[str]:
        """None: it reads the shape alone."""
        return []

    def memory_cost(self, images: SubjectSpec) -> int:
        """Nothing: a few random integers per patch."""
        return 0
