"""Augmentations: transforms that say how to compute any region of their output.

An :class:`Augmentation` draws its parameters for a subject once (:meth:`~Augmentation.operations`)
and returns them as operations (:mod:`shmqueue.augmentation.operations`) that can be evaluated on
any region of the volume. Applied as a transform (``augmentation(subject, generator)``), an
augmentation evaluates its operations on the whole volume. The queue instead defers them: its
patches are evaluated at their own voxels only, with the same values (contract 11 of DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch

from ..image import Image, ScalarImage
from ..specs import ImageSpec, Locality, SubjectSpec, Unknown, VolumeCost
from ..subject import Subject
from ..transforms import Deferrable
from .deferred import evaluated, slab_voxels
from .operations import Operation, Selection, subject_specs


class Augmentation(Deferrable):
    """Base class of transforms evaluated through :class:`Operation` objects.

    A subclass implements :meth:`operations`: its parameters for a subject, drawn from the
    generator, as operations. Applying it (``augmentation(subject, generator)``) evaluates
    them on the whole volume; the queue evaluates them at its patches only
    (:mod:`shmqueue.augmentation.deferred`). Either way the generator is drawn from in the same
    order (``p`` first, then :meth:`operations`), so a subject's parameters are the same.

    Args:
        p: probability of applying the transform.
        include: names of the images to apply it to (default: every image it applies to).
        exclude: names of images to leave alone.
    """

    kinds: ClassVar[tuple[type[Image], ...]] = (ScalarImage,)
    """The kinds of image it applies to by default (intensity augmentations: scalar images)."""

    def __init__(
        self,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p)
        self.selection = Selection(self.kinds, include, exclude)

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        """This transform's parameters for a subject whose images are ``images``, drawn from
        ``generator``, as operations (empty: nothing to do)."""
        raise NotImplementedError

    def draw(self, subject: Subject, generator: torch.Generator) -> list[object]:
        """The operations of one application to ``subject``, as applying it draws them: whether
        it happens (``p``), then :meth:`operations`."""
        if not self.happens(generator):
            return []
        return list(self.operations(subject_specs(subject), generator))

    def evaluate(self, subject: Subject, operations: Sequence[object]) -> Subject:
        """``subject`` with ``operations`` (drawn by augmentations) evaluated on the whole
        volume."""
        return evaluated(subject, operations)

    @property
    def deferrable(self) -> bool:
        """Whether the queue can evaluate it at the patches only (a transform choosing among
        others can when they all can)."""
        return True

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        return evaluated(subject, self.operations(subject_specs(subject), generator))

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """The input's: augmentations keep every image's grid, channels and dtype."""
        return dict(images)

    @property
    def locality(self) -> Locality:
        return Locality(0)

    def region_cost(self, name: str, spec: ImageSpec) -> int:
        """Unless a subclass says otherwise: the region's input and its result (the values of
        an intensity operation, computed voxel by voxel)."""
        if not self.selection(name, spec.kind):
            return 0
        return 2 * spec.channels * spec.dtype.itemsize

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """Evaluated on the whole volume: the new volume of every image it applies to, made
        slab by slab (:data:`~shmqueue.augmentation.deferred.SLAB_VOXELS`), with a slab's
        values in flight (:meth:`region_cost`)."""
        return [
            VolumeCost(name, spec.nbytes + slab_voxels(spec) * cost, spec.nbytes)
            for name, spec in images.items()
            if (cost := self.region_cost(name, spec))
        ]

    def __repr__(self) -> str:
        fields = {"p": self.p}
        for key in ("include", "exclude"):
            if getattr(self.selection, key) is not None:
                fields[key] = getattr(self.selection, key)
        fields.update(
            (key, value)
            for key, value in vars(self).items()
            if not key.startswith("_") and key not in ("p", "selection")
        )
        listing = ", ".join(f"{key}={value!r}" for key, value in fields.items())
        return f"{type(self).__name__}({listing})"
