"""Resampling to a voxel spacing or onto another image's grid: :class:`Resample` (TorchIO's).

The output grid is TorchIO's (1.2.1 and 2.0 alike): for a spacing, the input's directions with
the new spacing, ``floor(size * old spacing / new spacing)`` voxels along each axis, centred on
the input's centre; for an image, that image's shape and affine. Values are sampled as TorchIO
2.0 resamples (:mod:`shmqueue.augmentation.sampling`): trilinear for scalar images, nearest
neighbour for label maps (no label is invented), a slab of the output at a time.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..augmentation.deferred import in_slabs, slab_voxels
from ..augmentation.operations import subject_specs
from ..augmentation.regions import Region, Triple, read_region
from ..augmentation.sampling import sample
from ..augmentation.spatial import RESAMPLING_BYTES_PER_VOXEL, checked_interpolation
from ..image import Image, LabelMap, ScalarImage
from ..specs import ImageSpec, Locality, SubjectSpec, Unknown, VolumeCost
from ..subject import Subject
from .base import _GridPreserving
from .spatial import _regridded

Grid = tuple[Triple, np.ndarray]
"""A spatial shape and the affine of its voxels."""

Target = float | Sequence[float] | str | os.PathLike[str] | Image | tuple[Sequence[int], np.ndarray]
"""A spacing in mm (one number or three), an image of the subject by name, a file or an Image
whose grid to take, or a ``(shape, affine)`` pair."""


def spacing_grid(shape: Sequence[int], affine: np.ndarray, spacing: Sequence[float]) -> Grid:
    """The grid of ``spacing`` (mm per voxel along each axis) over the volume of ``shape`` and
    ``affine``, as TorchIO computes it: the same directions and centre, and ``floor(size * old
    spacing / new spacing)`` voxels (an axis of one voxel keeps one).

    Example:
        >>> shape, affine = spacing_grid((10, 10, 1), np.diag([1.3, 1.3, 2.0, 1.0]), (1, 1, 1))
        >>> shape, affine[0].round(2).tolist()
        ((13, 13, 1), [1.0, 0.0, 0.0, -0.15])
    """
    old_shape = np.asarray(shape, dtype=np.float64)
    old_spacing = np.linalg.norm(affine[:3, :3], axis=0)
    new_spacing = np.asarray(spacing, dtype=np.float64)
    new_shape = np.floor(old_shape * old_spacing / new_spacing)
    new_shape[old_shape == 1] = 1
    rotation = affine[:3, :3] / old_spacing
    centre = affine[:3, 3] + rotation @ ((old_shape - 1) / 2 * old_spacing)
    new_affine = np.eye(4)
    new_affine[:3, :3] = rotation * new_spacing
    new_affine[:3, 3] = centre - rotation @ ((new_shape - 1) / 2 * new_spacing)
    x, y, z = (int(size) for size in new_shape)
    return (x, y, z), new_affine


class Resample(_GridPreserving):
    """Resample every image to a voxel spacing, or onto another image's grid (TorchIO's
    ``Resample``, 1.x and 2.0).

    Each voxel keeps its world position: a voxel of the output takes the input's value at the
    same point of the world (trilinear for scalar images, nearest neighbour for label maps),
    and the fill value where most of its interpolation weight would fall outside the input
    (the image's minimum; 0 for label maps). The output's shape and affine are known from the
    headers, so the queue lays out its ring for them: subjects whose images lie on different
    grids go through ``Resample('t1')`` with workers.

    Args:
        target: the output's spacing in mm (a number, or three); or the name of an image of
            the subject (which is left as it is), a path to an image file, an Image, or a
            ``(shape, affine)`` pair, whose grid every image is resampled onto.
        image_interpolation: ``'linear'`` or ``'nearest'``, for scalar images.
        label_interpolation: ``'nearest'`` or ``'linear'``, for label maps.
        p: probability of applying the transform.
        include: names of the only images to resample.
        exclude: names of images not to resample.

    Example:
        >>> import numpy as np, torch, shmqueue as sq
        >>> t1 = sq.ScalarImage(torch.rand(1, 10, 10, 10), affine=np.diag([1.3, 1.3, 1.3, 1]))
        >>> sq.Resample(1.0)(sq.Subject(t1=t1)).t1.spatial_shape
        (13, 13, 13)
    """

    kind = Image

    def __init__(
        self,
        target: Target = 1.0,
        image_interpolation: str = "linear",
        label_interpolation: str = "nearest",
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.target = target
        self.image_interpolation = checked_interpolation(
            image_interpolation, "Resample's image_interpolation"
        )
        self.label_interpolation = checked_interpolation(
            label_interpolation, "Resample's label_interpolation"
        )
        self._spacing = _spacing(target)
        self._grid = _fixed_grid(target)

    # The output grid ----------------------------------------------------------------------

    def _target_grid(self, name: str, spec: ImageSpec, images: SubjectSpec) -> Grid | None:
        """The grid image ``name`` is resampled onto; None: it is the target, left alone."""
        if self._spacing is not None:
            return spacing_grid(spec.spatial_shape, spec.affine, self._spacing)
        if self._grid is not None:
            return self._grid
        assert isinstance(self.target, str)
        if self.target == name:
            return None
        if self.target not in images:
            raise ValueError(
                f"Resample's target {self.target!r} is neither an image of the subject (its"
                f" images are {list(images)}) nor a file."
            )
        reference = images[self.target]
        return reference.spatial_shape, reference.affine

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """Each chosen image on its target grid; channels and dtype are kept."""
        output = dict(images)
        for name, spec in self._chosen_specs(images).items():
            grid = self._target_grid(name, spec, images)
            if grid is not None:
                shape, affine = grid
                output[name] = dataclasses.replace(spec, spatial_shape=shape, affine=affine)
        return output

    # Resampling ---------------------------------------------------------------------------

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        images = subject_specs(subject)
        for name, image in list(subject.images.items()):
            if not self._chosen(name, type(image)):
                continue
            grid = self._target_grid(name, images[name], images)
            if grid is None or _same_grid(grid, image):
                continue
            shape, affine = grid
            subject[name] = _regridded(image, self._resampled(image, shape, affine), affine)
        return subject

    def _resampled(self, image: Image, shape: Triple, affine: np.ndarray) -> torch.Tensor:
        """``image``'s voxels at the world positions of the grid ``shape``, ``affine``."""
        data = image.data
        label = isinstance(image, LabelMap)
        interpolation = self.label_interpolation if label else self.image_interpolation
        fill = 0.0 if label else float(data.min()) if data.numel() else 0.0
        to_input = np.linalg.inv(image.affine) @ affine  # output voxel -> input voxel
        matrix = torch.from_numpy(to_input[:3, :3].T.copy())
        offset = torch.from_numpy(to_input[:3, 3].copy())
        channels, x, y, z = data.shape

        def resampled(slab: Region) -> torch.Tensor:
            i, j, k = (axis.to(torch.float64) for axis in slab.axes)
            points = (
                i[:, None, None, None] * matrix[0]
                + j[None, :, None, None] * matrix[1]
                + k[None, None, :, None] * matrix[2]
                + offset
            ).to(torch.float32)
            read = functools.partial(read_region, data)
            return sample(read, (x, y, z), channels, data.dtype, points, interpolation, fill)

        return in_slabs(Region.whole(shape), channels, data.dtype, resampled)

    @property
    def locality(self) -> Locality:
        """A coordinate mapping onto another grid."""
        return Locality(0, moves_voxels=True)

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """The new volume, made slab by slab with a resampling's values in flight."""
        costs = []
        for name, spec in self._chosen_specs(images).items():
            grid = self._target_grid(name, spec, images)
            if grid is None:
                continue
            new = dataclasses.replace(spec, spatial_shape=grid[0], affine=grid[1])
            label = issubclass(spec.kind, LabelMap)
            interpolation = self.label_interpolation if label else self.image_interpolation
            in_flight = slab_voxels(new) * RESAMPLING_BYTES_PER_VOXEL[interpolation]
            costs.append(VolumeCost(name, new.nbytes + in_flight, new.nbytes))
        return costs


def _spacing(target: Target) -> tuple[float, float, float] | None:
    """The spacing ``target`` asks for, if it is one; refuses one that is not positive."""
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        values = [float(target)] * 3
    elif (
        isinstance(target, Sequence)
        and not isinstance(target, str)
        and len(target) == 3
        and all(isinstance(value, (int, float)) for value in target)
    ):
        values = [float(value) for value in target]
    else:
        return None
    if not all(value > 0 for value in values):
        raise ValueError(f"Resample's spacing must be positive (mm per voxel), got {target!r}")
    return values[0], values[1], values[2]


def _fixed_grid(target: Target) -> Grid | None:
    """The grid ``target`` names by itself (a file, an Image, a shape and affine), if any."""
    if isinstance(target, Image):
        return target.spatial_shape, target.affine
    if isinstance(target, (str, os.PathLike)) and Path(target).is_file():
        reference = ScalarImage(Path(target))
        return reference.spatial_shape, reference.affine
    if isinstance(target, os.PathLike):
        raise FileNotFoundError(f"Resample's target file {os.fspath(target)!r} does not exist.")
    if isinstance(target, tuple) and len(target) == 2 and isinstance(target[1], np.ndarray):
        shape, affine = target
        if len(shape) != 3 or affine.shape != (4, 4):
            raise ValueError(
                "Resample's target (shape, affine) needs three sizes and a 4x4 affine, got"
                f" {tuple(shape)} and an array of shape {affine.shape}."
            )
        x, y, z = (int(size) for size in shape)
        return (x, y, z), np.asarray(affine, dtype=np.float64)
    if isinstance(target, str) or _spacing(target) is not None:
        return None
    raise TypeError(
        "Resample's target must be a spacing (a number or three), an image name, a file, an"
        f" Image or a (shape, affine) pair; got {target!r}."
    )


def _same_grid(grid: Grid, image: Image) -> bool:
    shape, affine = grid
    return tuple(shape) == tuple(image.spatial_shape) and np.allclose(affine, image.affine)
