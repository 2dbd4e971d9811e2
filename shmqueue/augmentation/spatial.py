"""Spatial augmentations with TorchIO 2.0's names, arguments and geometry: :class:`Flip`,
:class:`Affine` and :class:`ElasticDeformation`.

Each maps output voxels to input voxels on the image's own grid (the grid and the affine stay),
the same mapping for every image of the subject; scalar images are resampled trilinearly and
label maps by nearest neighbour (no label is invented). In a queue, consecutive spatial
augmentations are composed and each patch is resampled once
(:mod:`shmqueue.augmentation.deferred`).

Geometry, as TorchIO 2.0.0a2 defines it: world coordinates are the affine's (RAS+); rotations
(Euler angles in degrees about the world X, Y and Z axes, ``R = Rz @ Ry @ Rx``) and scaling pivot
about the image centre (the world position of voxel ``(shape - 1) / 2``) or the world origin;
translations are in mm along the world axes. The forward transform is ``T(x) = R S (x - c) + c
+ t``; an output voxel takes the value of the input at ``T^-1`` of its world position. An elastic
field is a coarse grid of displacements in mm, spanning the volume from its first to its last
voxel, interpolated trilinearly at each voxel and divided by the spacing, added to the voxel's
coordinates. (TorchIO 1.x rotates in LPS with another Euler order; both agree for rotations about
one axis and isotropic scaling.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from nibabel import orientations

from ..image import LabelMap, ScalarImage
from ..specs import ImageSpec, Locality, SubjectSpec
from .base import Augmentation
from .operations import (
    COORDINATES,
    Fill,
    Interpolation,
    Operation,
    Selection,
    SpatialOperation,
    affine_points,
    grid_of,
    voxel_coordinates,
)
from .parameters import AxisRange, RangeLike, ValueRange
from .regions import Region

_INTERPOLATIONS = ("linear", "nearest")
_ANATOMICAL_AXES = {"L": "LR", "R": "LR", "A": "AP", "P": "AP", "I": "IS", "S": "IS"}


def checked_interpolation(value: str, name: str) -> Interpolation:
    """``value`` if it names an interpolation shmqueue resamples with (``'linear'``,
    ``'nearest'``); else a ValueError naming the argument ``name``."""
    if value not in _INTERPOLATIONS:
        raise ValueError(f"{name} must be one of {_INTERPOLATIONS}, got {value!r}")
    return value


def _fill(value: Fill) -> Fill:
    if isinstance(value, str) and value not in ("minimum", "mean", "otsu"):
        raise ValueError(
            f'default_pad_value must be "minimum", "mean", "otsu" or a number, got {value!r}'
        )
    return value


RESAMPLING_BYTES_PER_VOXEL = {"linear": 80, "nearest": 160}
"""Bytes in flight per output voxel of a one-channel resampling, by interpolation (measured
through an affine, an elastic deformation and both: 50-80 bytes trilinear on 128^3 regions;
115 by nearest neighbour on 128^3 regions and 160 on a label map made whole slab by slab)."""


class _Spatial(Augmentation):
    """What the spatial augmentations share: every image by default, interpolation and fill."""

    kinds = (ScalarImage, LabelMap)

    def __init__(
        self,
        default_pad_value: Fill = "minimum",
        default_pad_label: float = 0,
        image_interpolation: str = "linear",
        label_interpolation: str = "nearest",
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.default_pad_value = _fill(default_pad_value)
        self.default_pad_label = float(default_pad_label)
        self.image_interpolation = checked_interpolation(image_interpolation, "image_interpolation")
        self.label_interpolation = checked_interpolation(label_interpolation, "label_interpolation")

    def _resampling(self) -> dict[str, Any]:
        return {
            "image_interpolation": self.image_interpolation,
            "label_interpolation": self.label_interpolation,
            "default_pad_value": self.default_pad_value,
            "default_pad_label": self.default_pad_label,
        }

    def region_cost(self, name: str, spec: ImageSpec) -> int:
        """A resampling: the region's input coordinates, the corners they fall between and
        their weights, and the values gathered, per voxel (measured: some 80 bytes for
        trilinear interpolation, 160 for nearest neighbour, which indexes in int64), plus each
        further channel's values."""
        if not self.selection(name, spec.kind):
            return 0
        interpolation = (
            self.label_interpolation
            if issubclass(spec.kind, LabelMap)
            else self.image_interpolation
        )
        per_voxel = RESAMPLING_BYTES_PER_VOXEL[interpolation]
        return per_voxel + 2 * (spec.channels - 1) * spec.dtype.itemsize

    @property
    def locality(self) -> Locality:
        """A coordinate mapping; the fill value may be a statistic of the whole image."""
        return Locality(0, statistics=isinstance(self.default_pad_value, str), moves_voxels=True)


# Flip ------------------------------------------------------------------------------------------


class FlipAxes(SpatialOperation):
    """Reverse the volume along ``axes``: voxel ``i`` takes voxel ``n - 1 - i``'s value."""

    integral = True

    def __init__(self, selection: Selection, axes: tuple[int, ...], shape: tuple[int, ...]):
        super().__init__(selection)
        self.axes = axes
        self.shape = shape

    def map_axis(self, axis: int, indices: torch.Tensor) -> torch.Tensor:
        return self.shape[axis] - 1 - indices if axis in self.axes else indices

    def map_points(self, points: torch.Tensor) -> torch.Tensor:
        mapped = points.clone()
        for axis in self.axes:
            mapped[..., axis] = (self.shape[axis] - 1) - points[..., axis]
        return mapped


def _resolve_axes(axes: Sequence[int | str], affine: np.ndarray) -> tuple[int, ...]:
    """Axis indices of ``axes``, anatomical names (``'LR'``, ``'Left'``...) resolved by the
    orientation of ``affine``, as TorchIO does (only the first letter counts)."""
    codes = orientations.aff2axcodes(affine)
    resolved = set()
    for axis in axes:
        if isinstance(axis, str):
            pair = _ANATOMICAL_AXES[axis[0].upper()]
            resolved.add(next(number for number, code in enumerate(codes) if code in pair))
        else:
            resolved.add(int(axis))
    return tuple(sorted(resolved))


class Flip(_Spatial):
    """Reverse the images along spatial axes, each with probability ``flip_probability``.

    Args:
        axes: spatial axes, as indices (0, 1, 2 for X, Y, Z) or anatomical names (``'LR'``,
            ``'Left'``, ``'AP'``, ``'IS'``...: only the first letter counts), resolved by each
            subject's orientation.
        flip_probability: the probability that each axis is flipped, drawn per axis and per
            subject (TorchIO 2.0); with the default 1, every axis is flipped.
        p: the probability that the transform is applied at all.
        include: names of the images to flip (default: all, label maps included).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.arange(4.0).reshape(1, 4, 1, 1)))
        >>> sq.Flip(axes=0)(subject).t1.data.flatten().tolist()
        [3.0, 2.0, 1.0, 0.0]
    """

    def __init__(
        self,
        axes: int | str | Sequence[int | str] = 0,
        flip_probability: float = 1.0,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p=p, include=include, exclude=exclude)
        listed = (axes,) if isinstance(axes, (int, str)) else tuple(axes)
        for axis in listed:
            valid_name = isinstance(axis, str) and axis[:1].upper() in _ANATOMICAL_AXES
            if not (valid_name or (isinstance(axis, int) and axis in (0, 1, 2))):
                raise ValueError(
                    f"Flip axes must be spatial axes among 0, 1, 2 or anatomical names (L, R, A,"
                    f" P, I, S, Left, ...); got {axes!r}"
                )
        if not listed:
            raise ValueError("Flip needs at least one axis among the spatial axes 0, 1, 2")
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability}")
        self.axes = listed
        self.flip_probability = flip_probability

    @property
    def is_random(self) -> bool:
        return self.p < 1.0 or 0.0 < self.flip_probability < 1.0

    @property
    def locality(self) -> Locality:
        """A patch's voxels come from its mirror image: a coordinate mapping, no neighbourhood."""
        return Locality(0, moves_voxels=True)

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        grid = grid_of(images)
        axes = _resolve_axes(self.axes, grid.affine)
        if 0.0 < self.flip_probability < 1.0:
            drawn = (torch.rand(3, generator=generator) < self.flip_probability).tolist()
            axes = tuple(axis for axis in axes if drawn[axis])
        elif self.flip_probability == 0.0:
            axes = ()
        if not axes:
            return []
        return [FlipAxes(self.selection, axes, grid.spatial_shape)]

    def region_cost(self, name: str, spec: ImageSpec) -> int:
        """A flip reads the region's mirror image: its input and its result, no coordinates."""
        if not self.selection(name, spec.kind):
            return 0
        return 2 * spec.channels * spec.dtype.itemsize


# Affine ----------------------------------------------------------------------------------------


class AffineMapping(SpatialOperation):
    """Output voxel coordinates to input voxel coordinates by a 4x4 matrix."""

    def __init__(self, selection: Selection, matrix: np.ndarray, **resampling: Any) -> None:
        super().__init__(selection, **resampling)
        self.matrix = np.asarray(matrix, dtype=np.float64)

    def map_points(self, points: torch.Tensor) -> torch.Tensor:
        return affine_points(self.matrix, points[..., 0], points[..., 1], points[..., 2])

    def map_grid(self, region: Region) -> torch.Tensor:
        return affine_points(self.matrix, *voxel_coordinates(region))


def rotation_matrix(degrees: Sequence[float]) -> np.ndarray:
    """TorchIO 2.0's rotation: Euler angles (degrees) about X, Y, Z, ``R = Rz @ Ry @ Rx``."""
    x, y, z = np.radians(np.asarray(degrees, dtype=np.float64))
    rotate_x = np.array([[1, 0, 0], [0, np.cos(x), -np.sin(x)], [0, np.sin(x), np.cos(x)]])
    rotate_y = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rotate_z = np.array([[np.cos(z), -np.sin(z), 0], [np.sin(z), np.cos(z), 0], [0, 0, 1]])
    result: np.ndarray = rotate_z @ rotate_y @ rotate_x
    return result


def world_transform(
    scales: Sequence[float],
    degrees: Sequence[float],
    translation: Sequence[float],
    center: np.ndarray | None,
) -> np.ndarray:
    """The forward world transform ``x -> R S (x - c) + c + t`` as a 4x4 matrix (``c`` the
    pivot, the origin when None)."""
    linear = rotation_matrix(degrees) @ np.diag(np.asarray(scales, dtype=np.float64))
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    pivot = np.zeros(3) if center is None else np.asarray(center, dtype=np.float64)
    matrix[:3, 3] = pivot - linear @ pivot + np.asarray(translation, dtype=np.float64)
    return matrix


def image_center(grid: ImageSpec) -> np.ndarray:
    """World position of the image centre, voxel ``(shape - 1) / 2``."""
    index = (np.asarray(grid.spatial_shape, dtype=np.float64) - 1) / 2
    centre: np.ndarray = grid.affine[:3, :3] @ index + grid.affine[:3, 3]
    return centre


class Affine(_Spatial):
    """Scale, rotate and translate the images (TorchIO 2.0's ``Affine``).

    Parameters are TorchIO 2.0's ranges: a number is that value on every axis, ``(a, b)`` is
    uniform on ``[a, b]`` (drawn per axis), three entries give each axis its value or range, six
    numbers each axis its range. They are drawn once per subject and applied to all its images.

    Args:
        scales: scaling factors per axis (``2`` shows objects twice as large).
        degrees: rotation angles about the world X, Y and Z axes, in degrees.
        translation: translation in mm along the world axes (RAS+: ``(10, 0, 0)`` moves the
            contents 10 mm to the right).
        isotropic: draw one scaling factor for all three axes (``scales`` a number or a pair).
        center: ``'image'`` pivots rotation and scaling about the image centre, ``'origin'``
            about the world origin.
        default_pad_value: fills scalar images where the input has no voxel: ``'minimum'``
            (the image's minimum), ``'mean'`` (the mean of its border voxels), ``'otsu'`` (the
            mean of its border voxels under their Otsu threshold) or a number.
        default_pad_label: fills label maps there.
        image_interpolation: ``'linear'`` or ``'nearest'``, for scalar images.
        label_interpolation: the same, for label maps (``'nearest'``: no label is invented).
        p: the probability that the transform is applied.
        include: names of the images to transform (default: all).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)))
        >>> moved = sq.Affine(translation=(1, 0, 0))(subject)  # 1 mm along X: one voxel
        >>> torch.allclose(moved.t1.data[0, 1:], subject.t1.data[0, :-1], atol=1e-5)
        True
    """

    def __init__(
        self,
        scales: RangeLike = 1.0,
        degrees: RangeLike = 0.0,
        translation: RangeLike = 0.0,
        isotropic: bool = False,
        center: str = "image",
        default_pad_value: Fill = "minimum",
        default_pad_label: float = 0,
        image_interpolation: str = "linear",
        label_interpolation: str = "nearest",
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            default_pad_value,
            default_pad_label,
            image_interpolation,
            label_interpolation,
            p,
            include,
            exclude,
        )
        if center not in ("image", "origin"):
            raise ValueError(f'center must be "image" or "origin", got {center!r}')
        if isotropic:
            self.scales: AxisRange | ValueRange = ValueRange.parse(scales, "scales")  # type: ignore[arg-type]
        else:
            self.scales = AxisRange.parse(scales, "scales")
        self.scales.check_at_least(0.0, "scales")
        self.degrees = AxisRange.parse(degrees, "degrees")
        self.translation = AxisRange.parse(translation, "translation")
        self.isotropic = isotropic
        self.center = center

    @property
    def is_random(self) -> bool:
        constant = (self.scales, self.degrees, self.translation)
        return self.p < 1.0 or not all(parameter.is_constant for parameter in constant)

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        if isinstance(self.scales, ValueRange):
            factor = self.scales.draw(generator)
            scales = (factor, factor, factor)
        else:
            scales = self.scales.draw(generator)
        degrees = self.degrees.draw(generator)
        translation = self.translation.draw(generator)
        if scales == (1.0, 1.0, 1.0) and not any(degrees) and not any(translation):
            return []
        grid = grid_of(images)
        centre = image_center(grid) if self.center == "image" else None
        forward = world_transform(scales, degrees, translation, centre)
        voxel = np.linalg.inv(grid.affine) @ np.linalg.inv(forward) @ grid.affine
        return [AffineMapping(self.selection, voxel, **self._resampling())]


# Elastic deformation ---------------------------------------------------------------------------


class ElasticField(SpatialOperation):
    """Output voxel coordinates plus a displacement (mm, divided by the spacing) interpolated
    trilinearly from a coarse grid of control points spanning the volume."""

    def __init__(
        self,
        selection: Selection,
        control_points: torch.Tensor,
        shape: tuple[int, int, int],
        spacing: tuple[float, float, float],
        **resampling: Any,
    ) -> None:
        super().__init__(selection, **resampling)
        grid = control_points.to(COORDINATES)
        # In voxels of the image: the displacement along each axis divided by its spacing.
        self.control_points = grid / torch.tensor(spacing, dtype=COORDINATES)
        self.scale = [(c - 1) / max(n - 1, 1) for c, n in zip(grid.shape[:3], shape)]

    def map_grid(self, region: Region) -> torch.Tensor:
        """The region's voxels displaced, the field interpolated axis by axis (trilinear
        interpolation is separable on a grid)."""
        field = self.control_points  # (nx, ny, nz, 3)
        for axis, indices in enumerate(region.axes):
            low, weight = self._axis_weights(axis, indices.to(COORDINATES))
            shape = [1, 1, 1, 1]
            shape[axis] = -1
            lower = field.index_select(axis, low)
            upper = field.index_select(axis, low + 1)
            field = torch.lerp(lower, upper, weight.reshape(shape))
        i, j, k = voxel_coordinates(region)
        return field.add_(torch.stack(torch.broadcast_tensors(i, j, k), dim=-1))  # type: ignore[no-untyped-call]

    def _axis_weights(self, axis: int, position: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """For voxel coordinates along ``axis``: the control point below each and the weight
        of the one above (the last interval extends past the grid's ends, clamped)."""
        count = self.control_points.shape[axis]
        scaled = (position * self.scale[axis]).clamp(0, count - 1)
        low = scaled.floor().clamp(max=max(count - 2, 0))
        return low.to(torch.int64), scaled - low

    def map_points(self, points: torch.Tensor) -> torch.Tensor:
        """Any points displaced: the field interpolated at each (8 control points apiece)."""
        grid = self.control_points
        counts = grid.shape[:3]
        lows, weights = zip(*(self._axis_weights(axis, points[..., axis]) for axis in range(3)))
        flat = grid.reshape(-1, 3)
        displaced = points.clone()
        for corner in range(8):
            steps = ((corner >> 2) & 1, (corner >> 1) & 1, corner & 1)
            index = (lows[0] + steps[0]) * counts[1]
            index = (index + lows[1] + steps[1]) * counts[2] + lows[2] + steps[2]
            factor = torch.ones_like(weights[0])
            for step, weight in zip(steps, weights):
                factor = factor * (weight if step else 1 - weight)
            displaced += factor.unsqueeze(-1) * flat[index]
        return displaced


def draw_control_points(
    num_control_points: tuple[int, int, int],
    max_displacement: tuple[float, float, float],
    locked_borders: int,
    generator: torch.Generator,
) -> torch.Tensor:
    """TorchIO 2.0's random field: each component uniform on ``[-max, max]`` (mm), the
    ``locked_borders`` outer layers of control points zero."""
    field = torch.rand((*num_control_points, 3), generator=generator, dtype=torch.float32)
    field = (field - 0.5) * 2 * torch.tensor(max_displacement, dtype=torch.float32)
    for border in range(locked_borders):
        field[border] = 0
        field[-1 - border] = 0
        field[:, border] = 0
        field[:, -1 - border] = 0
        field[:, :, border] = 0
        field[:, :, -1 - border] = 0
    return field


class ElasticDeformation(_Spatial):
    """Deform the images smoothly with random displacements at a coarse grid of control points
    (TorchIO 2.0's ``ElasticDeformation``).

    Args:
        control_points: a fixed field ``(nx, ny, nz, 3)`` of displacements in mm (then
            ``num_control_points``, ``max_displacement`` and ``locked_borders`` are not used).
        num_control_points: control points along each axis (an int or three), at least 4.
        max_displacement: the largest displacement in mm along each axis, a TorchIO 2.0 range
            (a number, a pair drawn per subject, ...); each control point's displacement is
            uniform on ``[-max, max]``.
        locked_borders: outer layers of control points held at zero displacement (0, 1 or 2).
        default_pad_value, default_pad_label, image_interpolation, label_interpolation, p,
            include, exclude: as for :class:`Affine`.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 16, 16, 16)))
        >>> sq.ElasticDeformation(max_displacement=2)(subject).t1.data.shape
        torch.Size([1, 16, 16, 16])
    """

    def __init__(
        self,
        control_points: torch.Tensor | np.ndarray | None = None,
        num_control_points: int | tuple[int, int, int] = 7,
        max_displacement: RangeLike = 7.5,
        locked_borders: int = 2,
        default_pad_value: Fill = "minimum",
        default_pad_label: float = 0,
        image_interpolation: str = "linear",
        label_interpolation: str = "nearest",
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            default_pad_value,
            default_pad_label,
            image_interpolation,
            label_interpolation,
            p,
            include,
            exclude,
        )
        counts = (
            (num_control_points,) * 3
            if isinstance(num_control_points, int)
            else tuple(num_control_points)
        )
        if len(counts) != 3 or any(not isinstance(n, int) or n < 4 for n in counts):
            raise ValueError(
                f"num_control_points must be an int or three ints >= 4, got {num_control_points!r}"
            )
        if locked_borders not in (0, 1, 2):
            raise ValueError(f"locked_borders must be 0, 1 or 2, got {locked_borders!r}")
        if locked_borders == 2 and 4 in counts:
            raise ValueError(
                "locked_borders=2 with 4 control points on an axis locks them all: use 5 or more"
                " control points, or locked_borders=1"
            )
        self.control_points = None if control_points is None else torch.as_tensor(control_points)
        if self.control_points is not None and (
            self.control_points.ndim != 4 or self.control_points.shape[-1] != 3
        ):
            raise ValueError(
                "control_points must be shaped (nx, ny, nz, 3), got"
                f" {tuple(self.control_points.shape)}"
            )
        self.num_control_points = (counts[0], counts[1], counts[2])
        self.max_displacement = AxisRange.parse(max_displacement, "max_displacement")
        self.max_displacement.check_at_least(0.0, "max_displacement")
        self.locked_borders = locked_borders

    @property
    def is_random(self) -> bool:
        return self.p < 1.0 or self.control_points is None

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        if self.control_points is not None:
            field = self.control_points
        else:
            largest = self.max_displacement.draw(generator)
            if not any(largest):
                return []
            field = draw_control_points(
                self.num_control_points, largest, self.locked_borders, generator
            )
        grid = grid_of(images)
        return [
            ElasticField(
                self.selection, field, grid.spatial_shape, grid.spacing, **self._resampling()
            )
        ]
