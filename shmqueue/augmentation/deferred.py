"""Deferred evaluation: an image's voxels after a list of operations, computed region by region.

:class:`DeferredVoxels` holds an image's input volume and the operations that apply to it, and
computes any region of the result (a patch) from the part of the input that region needs:

- consecutive spatial operations are composed into one mapping, and the image is resampled once
  per region (``grid_sample``, trilinear; label maps by nearest neighbour, exactly);
- an intensity operation is evaluated on the region grown by its margin, the margin continuing
  past the volume's border as the operation says;
- whole-image statistics (a fill value of ``'minimum'``, a mean) are computed once, from the
  whole input of the operation that needs them.

Each voxel is computed by the same arithmetic whatever region it is part of, so a patch equals
the same region of the whole result (evaluated slab by slab by :meth:`DeferredVoxels.whole`),
within floating-point rounding for interpolated images and exactly for label maps; per-voxel
random draws (noise) are made per region, with the same distribution.

Resampling follows TorchIO 2.0: trilinear interpolation with zeros outside the volume, and the
fill value wherever less than half of the interpolation weight lies inside it. Composing the
mappings first means one resampling instead of one per transform: the values differ from
resampling after each transform by that interpolation only (and at the border, where a point
mapped outside the volume by a middle transform is filled only if its final input point is
outside too).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..image import Image
from ..reductions import mean
from ..specs import ImageSpec
from ..subject import Subject
from .operations import (
    Fill,
    IntensityOperation,
    Operation,
    SpatialOperation,
)
from .regions import Region, Triple, read_region
from .sampling import sample

SLAB_VOXELS = 1 << 18
"""Voxels per slab when a whole image or a large patch is evaluated: bounds the coordinates and
values in flight (up to some 120 bytes a voxel for a resampled label map) to some 30 MiB."""


def in_slabs(
    region: Region,
    channels: int,
    dtype: torch.dtype,
    evaluate: Callable[[Region], torch.Tensor],
) -> torch.Tensor:
    """``evaluate`` of ``region``, called on slabs of at most :data:`SLAB_VOXELS` voxels and
    assembled, so that the values in flight stay bounded: ``(channels, *region.size)``."""
    slabs = region.slabs(SLAB_VOXELS)
    if len(slabs) == 1:
        return evaluate(region)
    result = torch.empty((channels, *region.size), dtype=dtype)
    start = 0
    for slab in slabs:
        values = evaluate(slab)
        result[:, start : start + values.shape[1]] = values
        start += values.shape[1]
    return result


def slab_voxels(spec: ImageSpec) -> int:
    """The voxels of the largest slab of an image described by ``spec``."""
    return min(spec.voxels, SLAB_VOXELS)


@dataclass(frozen=True)
class _Resampling:
    """Consecutive spatial operations of one image, in the order they apply."""

    operations: tuple[SpatialOperation, ...]

    @property
    def integral(self) -> bool:
        return all(operation.integral for operation in self.operations)


_Stage = _Resampling | IntensityOperation


def _stages(operations: Sequence[object], name: str, kind: type[Image]) -> list[_Stage]:
    stages: list[_Stage] = []
    for operation in operations:
        if not isinstance(operation, Operation):
            raise TypeError(
                f"Not an operation: {operation!r} (an augmentation's operations are"
                " SpatialOperation or IntensityOperation objects)"
            )
        if not operation.applies_to(name, kind):
            continue
        if isinstance(operation, SpatialOperation):
            if stages and isinstance(stages[-1], _Resampling):
                stages[-1] = _Resampling((*stages[-1].operations, operation))
            else:
                stages.append(_Resampling((operation,)))
        elif isinstance(operation, IntensityOperation):
            stages.append(operation)
    return stages


class MappedPoints:
    """The input coordinates of the last region a run of spatial operations mapped, shared by
    a subject's images: the label map's patch reuses the coordinates its image's computed."""

    def __init__(self) -> None:
        self._key: tuple[tuple[int, ...], Region] | None = None
        self._points = torch.empty(0)

    def points(self, operations: Sequence[SpatialOperation], region: Region) -> torch.Tensor:
        """Input voxel coordinates of ``region``'s voxels through ``operations`` (in the order
        they apply: the last is applied first to the output's coordinates)."""
        identity = tuple(id(operation) for operation in operations)
        if self._key is not None and self._key[0] == identity and _same(self._key[1], region):
            return self._points
        remaining = list(operations)
        grid = region
        while remaining[-1].integral:  # a flip maps the grid to a grid: axis by axis
            flip = remaining.pop()
            i, j, k = (flip.map_axis(axis, indices) for axis, indices in enumerate(grid.axes))
            grid = Region((i, j, k), grid.shape)
        points = remaining.pop().map_grid(grid)
        for operation in reversed(remaining):
            points = operation.map_points(points)
        self._key, self._points = (identity, region), points
        return points


def _same(first: Region, second: Region) -> bool:
    return all(
        a.shape == b.shape and bool(torch.equal(a, b)) for a, b in zip(first.axes, second.axes)
    )


class DeferredVoxels:
    """The voxels of image ``name`` (of ``kind``) after ``operations``, region by region.

    Args:
        source: the image's input volume ``(C, X, Y, Z)`` (never written into).
        name: the image's name, which the operations select by.
        kind: its class, which decides interpolation, fill and which operations apply.
        operations: in the order they apply.
        mapped: the coordinate cache shared with the subject's other images.
    """

    def __init__(
        self,
        source: torch.Tensor,
        name: str,
        kind: type[Image],
        operations: Sequence[object],
        mapped: MappedPoints | None = None,
    ) -> None:
        self.source = source
        self.kind = kind
        self.mapped = MappedPoints() if mapped is None else mapped
        self.stages = _stages(operations, name, kind)
        self._statistics: dict[int, Any] = {}
        _, x, y, z = source.shape
        self.shape: Triple = (x, y, z)

    @property
    def channels(self) -> int:
        return int(self.source.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The output's dtype: the input's (scalar images are floating point)."""
        return self.source.dtype

    def patch(self, index: Triple, size: Triple) -> torch.Tensor:
        """The result in the box ``index : index + size``, slab by slab if it is large."""
        return self._slabbed(len(self.stages), Region.box(index, size, self.shape))

    def whole(self) -> torch.Tensor:
        """The whole result, evaluated slab by slab."""
        return self._whole(len(self.stages))

    # Evaluation --------------------------------------------------------------------------------

    def _whole(self, count: int) -> torch.Tensor:
        """The result of the first ``count`` stages on the whole volume."""
        if count == 0:
            return self.source
        return self._slabbed(count, Region.whole(self.shape))

    def _slabbed(self, count: int, region: Region) -> torch.Tensor:
        """The result of the first ``count`` stages at ``region``, a slab at a time."""
        return in_slabs(region, self.channels, self.dtype, functools.partial(self._evaluate, count))

    def _evaluate(self, count: int, region: Region) -> torch.Tensor:
        if count == 0:
            return read_region(self.source, region)
        stage = self.stages[count - 1]
        if isinstance(stage, _Resampling):
            return self._resample(count, stage, region)
        return self._intensity(count, stage, region)

    def _stage_statistics(self, count: int, compute: Any) -> Any:
        """``compute(input)`` of stage ``count``'s whole input, once."""
        if count not in self._statistics:
            self._statistics[count] = compute(self._whole(count - 1))
        return self._statistics[count]

    def _intensity(self, count: int, operation: IntensityOperation, region: Region) -> torch.Tensor:
        statistics = (
            self._stage_statistics(count, operation.statistics)
            if operation.needs_statistics
            else None
        )
        if operation.margin == (0, 0, 0):
            return operation.evaluate(self._evaluate(count - 1, region), region, statistics)
        hull = region.hull()
        grown = hull.extended(operation.margin, operation.border)
        values = operation.evaluate(self._evaluate(count - 1, grown), hull, statistics)
        return read_region(values, region.within(hull))

    def _resample(self, count: int, stage: _Resampling, region: Region) -> torch.Tensor:
        if stage.integral:
            axes = list(region.axes)
            for operation in reversed(stage.operations):
                axes = [operation.map_axis(axis, indices) for axis, indices in enumerate(axes)]
            return self._evaluate(count - 1, Region((axes[0], axes[1], axes[2]), self.shape))
        points = self.mapped.points(stage.operations, region)
        first = stage.operations[0]
        interpolation = first.interpolation(self.kind)
        fill = self._fill_value(count, first.fill(self.kind))
        read = functools.partial(self._evaluate, count - 1)
        return sample(read, self.shape, self.channels, self.dtype, points, interpolation, fill)

    def _fill_value(self, count: int, fill: Fill) -> float:
        if not isinstance(fill, str):
            return float(fill)
        return float(self._stage_statistics(count, lambda volume: _fill_statistic(volume, fill)))


def _fill_statistic(volume: torch.Tensor, fill: str) -> float:
    """TorchIO's ``default_pad_value`` statistics of a whole image."""
    if fill == "minimum":
        return float(volume.min())
    borders = torch.cat(
        [
            side.reshape(-1)
            for axis in (1, 2, 3)
            for side in (volume.select(axis, 0), volume.select(axis, -1))
        ]
    ).to(torch.float64)
    if fill == "mean":
        return mean(borders)
    if fill == "otsu":
        threshold = _otsu_threshold(borders)
        below = borders[borders < threshold]
        return mean(below) if below.numel() else mean(borders)
    raise ValueError(
        f"default_pad_value must be a number, 'minimum', 'mean' or 'otsu'; got {fill!r}"
    )


def _otsu_threshold(values: torch.Tensor, bins: int = 256) -> float:
    """The value that splits ``values`` into the two classes of largest between-class variance
    (Otsu's method, on a histogram of ``bins`` bins)."""
    low, high = float(values.min()), float(values.max())
    if low == high:
        return high
    histogram = torch.histc(values, bins=bins, min=low, max=high).to(torch.float64)
    edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    below = histogram.cumsum(0)[:-1]
    above = histogram.sum() - below
    sum_below = (histogram * centres).cumsum(0)[:-1]
    sum_above = (histogram * centres).sum() - sum_below
    gap = sum_below / below.clamp(min=1) - sum_above / above.clamp(min=1)
    between = below * above * gap**2
    return float(edges[1:-1][int(between.argmax())])


def deferred(subject: Subject, operations: Sequence[object]) -> Subject:
    """``subject`` with every image the operations apply to deferred: its voxels computed
    only where they are read (a patch; :attr:`~shmqueue.Image.data` computes them all)."""
    if not operations:
        return subject
    result = subject.copy()
    mapped = MappedPoints()
    for name, image in subject.images.items():
        voxels = DeferredVoxels(image.data, name, type(image), operations, mapped)
        if voxels.stages:
            result[name] = image.deferred(voxels)
    return result


def evaluated(subject: Subject, operations: Sequence[object]) -> Subject:
    """A new subject: ``subject`` with the operations evaluated on the whole of every image
    they apply to (``subject`` itself is left as it was)."""
    result = subject.copy()
    mapped = MappedPoints()
    for name, image in subject.images.items():
        voxels = DeferredVoxels(image.data, name, type(image), operations, mapped)
        if voxels.stages:
            result[name] = image.with_data(voxels.whole())
    return result
