"""Operations: an augmentation's drawn parameters for one subject, evaluable on any region.

Two kinds cover what training pipelines use:

- :class:`SpatialOperation`: a coordinate mapping on the image's own grid, from output voxel
  coordinates to input voxel coordinates (an affine, an elastic field, a flip). Consecutive
  ones are composed and the image is resampled once (:mod:`shmqueue.augmentation.deferred`).
- :class:`IntensityOperation`: new values from the input's values at the same voxels, plus a
  known neighbourhood (``margin``, e.g. a blur), the voxel's position in the volume (a bias
  field), per-voxel random draws (noise), and statistics of the whole input computed once per
  subject (``needs_statistics``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from ..image import Image, LabelMap
from ..specs import ImageSpec, SubjectSpec
from ..subject import Subject
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
        """Input voxel coordinates (``(..., 3)``, :data:`COORDINATES`) of the output voxel
        coordinates ``points``. Every voxel is computed by the same arithmetic whatever the
        region, so a patch's coordinates are the whole volume's, bit for bit."""
        raise NotImplementedError

    def map_grid(self, region: Region) -> torch.Tensor:
        """:meth:`map_points` of every voxel of ``region`` (``(*region.size, 3)``), for the
        mapping applied first to an output region; a subclass may compute it axis by axis, by
        the same arithmetic per voxel whatever the region."""
        i, j, k = voxel_coordinates(region)
        size = region.size
        return self.map_points(torch.stack([axis.expand(size) for axis in (i, j, k)], dim=-1))

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


COORDINATES = torch.float32
"""The dtype of voxel coordinates: exact for indices, within 1e-4 voxel for the coordinates a
mapping gives on volumes of up to a few hundred voxels, and half the memory of float64."""


def voxel_coordinates(region: Region) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The region's voxel indices along each axis as :data:`COORDINATES`, shaped to broadcast
    over the region: ``(X, 1, 1)``, ``(1, Y, 1)``, ``(1, 1, Z)``."""
    i, j, k = (axis.to(COORDINATES) for axis in region.axes)
    return i.reshape(-1, 1, 1), j.reshape(1, -1, 1), k.reshape(1, 1, -1)


def affine_points(
    matrix: np.ndarray, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """``matrix`` (4x4, voxel to voxel) applied to the points of coordinates ``x``, ``y``, ``z``
    (tensors that broadcast together), component by component in a fixed order, so that every
    voxel's result is the same whatever region it is computed in. Returns ``(..., 3)``."""
    rows = [
        x * float(matrix[row, 0])
        + y * float(matrix[row, 1])
        + z * float(matrix[row, 2])
        + float(matrix[row, 3])
        for row in range(3)
    ]
    return torch.stack(torch.broadcast_tensors(*rows), dim=-1)  # type: ignore[no-untyped-call]
