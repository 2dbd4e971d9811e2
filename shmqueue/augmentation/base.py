"""Augmentations: transforms that say how to compute any region of their output.

An :class:`Augmentation` draws its parameters for a subject once (:meth:`~Augmentation.operations`)
and returns them as :class:`Operation` objects that can be evaluated on any region of the volume.
Two kinds cover what training pipelines use:

- :class:`SpatialOperation`: a coordinate mapping on the image's own grid, from output voxel
  coordinates to input voxel coordinates (an affine, an elastic field, a flip). Consecutive
  ones are composed and the image is resampled once (:mod:`shmqueue.augmentation.deferred`).
- :class:`IntensityOperation`: new values from the input's values at the same voxels, plus a
  known neighbourhood (``margin``, e.g. a blur), the voxel's position in the volume (a bias
  field), per-voxel random draws (noise), and statistics of the whole input computed once per
  subject (``needs_statistics``).

Applied as a transform (``augmentation(subject, generator)``), an augmentation evaluates its
operations on the whole volume. The queue instead defers them: its patches are evaluated at
their own voxels only, with the same values (contract 11 of DESIGN.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..image import Image, LabelMap, ScalarImage
from ..specs import ImageSpec, Locality, SubjectSpec, Unknown, VolumeCost
from ..subject import Subject
from ..transforms import Transform
from .regions import Region, Triple

Interpolation = str
"""``'linear'`` or ``'nearest'``."""

Fill = float | str
"""What fills voxels mapped from outside the volume: a number, or a statistic of the input
image: ``'minimum'``, ``'mean'`` (of its border voxels) or ``'otsu'`` (the mean of its border
voxels below their Otsu threshold), as TorchIO's ``default_pad_value``."""


class Selection:
    """Which images of a subject an operation applies to: those of ``kinds``, narrowed by
    ``include`` or ``exclude`` (image names), as TorchIO chooses them."""

    def __init__(
        self,
        kinds: tuple[type[Image], ...],
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        if include is not None and exclude is not None:
            raise ValueError("Give include or exclude, not both")
        for names in (include, exclude):
            if isinstance(names, str):
                raise TypeError(f"include and exclude are sequences of names, got {names!r}")
        self.kinds = kinds
        self.include = None if include is None else tuple(include)
        self.exclude = None if exclude is None else tuple(exclude)

    def __call__(self, name: str, kind: type[Image]) -> bool:
        if not issubclass(kind, self.kinds):
            return False
        if self.include is not None:
            return name in self.include
        return self.exclude is None or name not in self.exclude

    def __repr__(self) -> str:
        return f"Selection(include={self.include!r}, exclude={self.exclude!r})"


class Operation:
    """One augmentation's drawn parameters for one subject, evaluable on any region."""

    def __init__(self, selection: Selection) -> None:
        self.selection = selection

    def applies_to(self, name: str, kind: type[Image]) -> bool:
        return self.selection(name, kind)


class SpatialOperation(Operation):
    """A coordinate mapping on the image's grid: output voxel coordinates to the input voxel
    coordinates whose (interpolated) value the output takes.

    Attributes:
        integral: the mapping sends every voxel to a voxel, axis by axis (a flip): it is
            evaluated with :meth:`map_axis` and no interpolation, exactly.
    """

    integral: ClassVar[bool] = False

    def __init__(
        self,
        selection: Selection,
        image_interpolation: Interpolation = "linear",
        label_interpolation: Interpolation = "nearest",
        default_pad_value: Fill = "minimum",
        default_pad_label: float = 0.0,
    ) -> None:
        super().__init__(selection)
        self.image_interpolation = image_interpolation
        self.label_interpolation = label_interpolation
        self.default_pad_value = default_pad_value
        self.default_pad_label = default_pad_label

    def map_points(self, points: torch.Tensor) -> torch.Tensor:
        """Input voxel coordinates (float64, ``(..., 3)``) of the output voxel coordinates
        ``points``. Every voxel is computed by the same arithmetic whatever the region, so a
        patch's coordinates are the whole volume's, bit for bit."""
        raise NotImplementedError

    def map_axis(self, axis: int, indices: torch.Tensor) -> torch.Tensor:
        """For an :attr:`integral` mapping: the input indices of the output ``indices`` along
        ``axis``."""
        raise NotImplementedError

    def interpolation(self, kind: type[Image]) -> Interpolation:
        return self.label_interpolation if issubclass(kind, LabelMap) else self.image_interpolation

    def fill(self, kind: type[Image]) -> Fill:
        return self.default_pad_label if issubclass(kind, LabelMap) else self.default_pad_value


class IntensityOperation(Operation):
    """New values at each voxel from the input's values there and ``margin`` voxels around it.

    Attributes:
        margin: voxels of neighbourhood each side, per axis, that a voxel's value depends on.
        border: how the neighbourhood continues past the volume's border (see
            :meth:`~shmqueue.augmentation.regions.Region.extended`).
        needs_statistics: :meth:`evaluate` needs :meth:`statistics` of the whole input image.
    """

    margin: Triple = (0, 0, 0)
    border: str = "replicate"
    needs_statistics: bool = False

    def statistics(self, volume: torch.Tensor) -> Any:
        """What :meth:`evaluate` needs of the whole input image ``volume`` ``(C, X, Y, Z)``,
        computed once per subject."""
        return None

    def evaluate(self, data: torch.Tensor, region: Region, statistics: Any) -> torch.Tensor:
        """The output at ``region`` (a new tensor ``(C, *region.size)``), given the input at
        ``region`` grown by :attr:`margin` (``data``; never written into)."""
        raise NotImplementedError


def subject_specs(subject: Subject) -> dict[str, ImageSpec]:
    """The subject's images as descriptions (from their headers and shapes; no voxel read)."""
    return {
        name: ImageSpec(
            type(image), image.num_channels, image.spatial_shape, image.dtype, image.affine
        )
        for name, image in subject.images.items()
    }


def grid_of(images: SubjectSpec) -> ImageSpec:
    """The grid a spatial augmentation maps on: the first image's (the subject's images share
    it: the queue checks it)."""
    return next(iter(images.values()))


class Augmentation(Transform):
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

    def draw(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        """The operations of one application, as applying it draws them: whether it happens
        (``p``), then :meth:`operations`."""
        return self.operations(images, generator) if self.happens(generator) else []

    @property
    def deferrable(self) -> bool:
        """Whether the queue can evaluate it at the patches only (a transform choosing among
        others can when they all can)."""
        return True

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        from .deferred import evaluated

        return evaluated(subject, self.operations(subject_specs(subject), generator))

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """The input's: augmentations keep every image's grid, channels and dtype."""
        return dict(images)

    @property
    def locality(self) -> Locality:
        return Locality(0)

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """Evaluated on the whole volume: the new volume of every image it applies to, and as
        much again for the values in flight while it is made slab by slab."""
        return [
            VolumeCost(name, 2 * spec.nbytes, spec.nbytes)
            for name, spec in images.items()
            if self.selection(name, spec.kind)
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


def voxel_coordinates(region: Region) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The region's voxel indices along each axis as float64, shaped to broadcast over the
    region: ``(X, 1, 1)``, ``(1, Y, 1)``, ``(1, 1, Z)``."""
    i, j, k = (axis.to(torch.float64) for axis in region.axes)
    return i.reshape(-1, 1, 1), j.reshape(1, -1, 1), k.reshape(1, 1, -1)


def affine_points(matrix: np.ndarray, points: torch.Tensor) -> torch.Tensor:
    """``matrix`` (4x4, voxel to voxel) applied to ``points`` ``(..., 3)``, component by
    component in a fixed order (so that every voxel's result is the same whatever the region)."""
    x, y, z = points[..., 0], points[..., 1], points[..., 2]
    rows = [
        x * float(matrix[row, 0])
        + y * float(matrix[row, 1])
        + z * float(matrix[row, 2])
        + float(matrix[row, 3])
        for row in range(3)
    ]
    return torch.stack(rows, dim=-1)
