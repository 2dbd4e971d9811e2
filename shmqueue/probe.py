"""Probing: learning, by running it once, what a deterministic step that cannot describe its
output makes of the images.

The ring is laid out before training from what the transform's deterministic prefix says it
outputs (:meth:`~shmqueue.Transform.output_spec`). A ``Lambda`` or a deterministic adapter
cannot say, so the queue runs the prefix once on its first subject, up to that step, and takes
the channels and dtypes of what it made (a one-hot ``Lambda`` gives four channels, a label
remap to int64 gives int64): the ring then holds them, with workers as in-process, instead of
the run failing on the first subject. Such a step must keep the images' grid (its shape and
affine cannot be told for the other subjects from one of them); one that changes it is
refused, with what to do. A plain callable is taken to be random (it gets seeded global
generators) and is not probed: an output the ring cannot hold fails loudly when it is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import TransformOutputError
from .image import Image
from .specs import ImageSpec, SubjectSpec, Unknown
from .subject import Subject
from .transforms import SubjectTransform, apply_transform, described, step_name


@dataclass(frozen=True)
class Probed:
    """What running the deterministic steps once, up to the first that cannot describe its
    output (step ``index``), taught: each image's kind, channels and dtype after that step
    (every subject is taken to get the same)."""

    index: int
    images: dict[str, tuple[type[Image], int, torch.dtype]]

    def applied(self, predicted: SubjectSpec) -> dict[str, ImageSpec]:
        """``predicted`` (a subject's images before the probed step) with the learned images,
        channels and dtypes, on the predicted grid. A floating-point image stays in
        its predicted dtype where the probe made another floating-point one (a float64 result
        rounds to float32, as it always did)."""
        grid = next(iter(predicted.values()))
        learned = {}
        for name, (kind, channels, dtype) in self.images.items():
            before = predicted.get(name, grid)
            floats = before.dtype.is_floating_point and dtype.is_floating_point
            kept = before.dtype if floats and name in predicted else dtype
            learned[name] = replace(before, kind=kind, channels=channels, dtype=kept)
        return learned


def described_outputs(
    steps: Sequence[SubjectTransform], images: SubjectSpec
) -> tuple[dict[str, ImageSpec], int | None]:
    """What ``steps`` make of ``images``, as each says (:meth:`~shmqueue.Transform.output_spec`),
    up to the first whose output cannot be told: the description reached, and that step's
    index (None if every step says)."""
    current = dict(images)
    for index, step in enumerate(steps):
        output = described(step).output_spec(current)
        if isinstance(output, Unknown):
            return current, index
        current = dict(output)
    return current, None


def probe(
    subject: Subject, description: str, steps: Sequence[SubjectTransform], headers: SubjectSpec
) -> Probed | None:
    """Run the deterministic ``steps`` once on ``subject`` (whose images' headers describe as
    ``headers``), up to the first that cannot describe its output, and return what they made;
    None if every step describes its output.

    Raises:
        TransformOutputError: the steps change the images' grid where it could not be told
            (the message names the subject, the step and what to do).
    """
    before, unknown = described_outputs(steps, headers)
    if unknown is None:
        return None
    loaded = subject.copy()
    loaded.load()
    generator = torch.Generator().manual_seed(0)  # deterministic steps: never drawn from
    for step in steps[: unknown + 1]:
        loaded = apply_transform(step, loaded, generator)
    made = {name: image for name, image in loaded.images.items()}
    grid = next(iter(before.values()))
    for name, image in made.items():
        if image.spatial_shape != grid.spatial_shape or not _same_affine(image, grid):
            raise TransformOutputError(
                f"{description}: transform step {unknown + 1} ({step_name(steps[unknown])})"
                f" changes the grid of image '{name}' from"
                f" {grid.spatial_shape} to {image.spatial_shape}, which cannot be told from the"
                " headers, so the queue can neither check the other subjects nor count their"
                " patches. Use shmqueue's transform for it (CropOrPad, Resample, Reorient,"
                " ...), give yours an output_spec (subclass shmqueue.Transform), or store the"
                " images as it would make them."
            )
    return Probed(
        unknown,
        {name: (type(image), image.num_channels, image.dtype) for name, image in made.items()},
    )


def _same_affine(image: Image, spec: ImageSpec) -> bool:
    return bool(np.allclose(image.affine, spec.affine))
