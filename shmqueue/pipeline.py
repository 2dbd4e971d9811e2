"""SubjectPipeline: what happens to one subject in an epoch, wherever it runs.

Load the subject, augment it with the task's seed, prepare it for the sampler and draw the task's
patch locations. The in-process path and the engine's workers both call :meth:`run`, so a patch is
the same region of the same augmented volume in both (contracts 2 and 6 of DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .errors import SamplingError
from .machine import return_free_memory
from .plan import SubjectTask
from .sampling.base import PatchLocation, PatchSampler
from .subject import Subject
from .transforms import SubjectTransform, apply_transform, transform_steps


class SubjectPipeline:
    """The subjects, the transform and the sampler: everything a worker needs, and picklable."""

    def __init__(
        self,
        subjects: Sequence[Subject],
        transform: SubjectTransform | None,
        sampler: PatchSampler,
    ) -> None:
        self.subjects = subjects
        self.transform = transform
        self.sampler = sampler

    def run(self, task: SubjectTask) -> tuple[Subject, list[PatchLocation]]:
        """The augmented, prepared subject and exactly ``task.num_patches`` patch locations."""
        return_free_memory()  # the previous subject's volumes, so that the process stays its size
        subject = self.subjects[task.subject_index].copy()
        subject.load()
        generator = torch.Generator().manual_seed(task.seed)
        for step in transform_steps(self.transform, generator):
            subject = apply_transform(step, subject, generator)  # frees the step's input
        subject = self.sampler.prepare(subject)
        subject.spatial_shape  # noqa: B018 -- raises if the transform broke the alignment
        locations = self.sampler.locations(subject, task.num_patches, generator)
        if len(locations) != task.num_patches:
            raise SamplingError(
                f"{type(self.sampler).__name__} gave {len(locations)} patches for"
                f" {subject.describe(task.subject_index)} where {task.num_patches} were planned"
                " from the header's shape. Does the transform change the spatial shape?"
            )
        return subject, locations
