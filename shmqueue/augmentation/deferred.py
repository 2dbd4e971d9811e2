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

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as functional

from ..image import Image
from ..subject import Subject
from ..transforms import SubjectTransform, apply_transform
from .base import (
    Augmentation,
    Fill,
    IntensityOperation,
    Operation,
    SpatialOperation,
    subject_specs,
    voxel_coordinates,
)
from .regions import Region, Triple, read_region

SLAB_VOXELS = 1 << 20
"""Voxels per slab when a whole image is evaluated: bounds the coordinates and values in flight
(about 50 bytes a voxel) to some 50 MiB."""


@dataclass(frozen=True)
class _Resampling:
    """Consecutive spatial operations of one image, in the order they apply."""

    operations: tuple[SpatialOperation, ...]

    @property
    def integral(self) -> bool:
        return all(operation.integral for operation in self.operations)


_Stage = _Resampling | IntensityOperation


def _stages(operations: Sequence[Operation], name: str, kind: type[Image]) -> list[_Stage]:
    stages: list[_Stage] = []
    for operation in operations:
        if not operation.applies_to(name, kind):
            continue
        if isinstance(operation, SpatialOperation):
            if stages and isinstance(stages[-1], _Resampling):
                stages[-1] = _Resampling((*stages[-1].operations, operation))
            else:
                stages.append(_Resampling((operation,)))
        elif isinstance(operation, IntensityOperation):
            stages.append(operation)
        else:
            raise TypeError(f"Not an operation: {operation!r}")
    return stages


class DeferredVoxels:
    """The voxels of image ``name`` (of ``kind``) after ``operations``, region by region.

    Args:
        source: the image's input volume ``(C, X, Y, Z)`` (never written into).
        name: the image's name, which the operations select by.
        kind: its class, which decides interpolation, fill and which operations apply.
        operations: in the order they apply.
    """

    def __init__(
        self, source: torch.Tensor, name: str, kind: type[Image], operations: Sequence[Operation]
    ) -> None:
        self.source = source
        self.kind = kind
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

    def region(self, region: Region) -> torch.Tensor:
        """The result at ``region``: ``(C, *region.size)`` (possibly a view of the input when no
        operation applies; never to be written into)."""
        return self._evaluate(len(self.stages), region)

    def patch(self, index: Triple, size: Triple) -> torch.Tensor:
        """The result in the box ``index : index + size``."""
        return self.region(Region.box(index, size, self.shape))

    def whole(self) -> torch.Tensor:
        """The whole result, evaluated slab by slab."""
        return self._whole(len(self.stages))

    # Evaluation --------------------------------------------------------------------------------

    def _whole(self, count: int) -> torch.Tensor:
        """The result of the first ``count`` stages on the whole volume."""
        if count == 0:
            return self.source
        channels = self.source.shape[0]
        result = torch.empty((channels, *self.shape), dtype=self.dtype)
        start = 0
        for slab in Region.whole(self.shape).slabs(SLAB_VOXELS):
            values = self._evaluate(count, slab)
            result[:, start : start + values.shape[1]] = values
            start += values.shape[1]
        return result

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
        i, j, k = voxel_coordinates(region)
        size = region.size
        points = torch.stack([axis.expand(size) for axis in (i, j, k)], dim=-1)
        for operation in reversed(stage.operations):
            points = operation.map_points(points)
        first = stage.operations[0]
        interpolation = first.interpolation(self.kind)
        fill = self._fill_value(count, first.fill(self.kind))
        return self._sample(count, points, size, interpolation, fill)

    def _fill_value(self, count: int, fill: Fill) -> float:
        if not isinstance(fill, str):
            return float(fill)
        return float(self._stage_statistics(count, lambda volume: _fill_statistic(volume, fill)))

    def _sample(
        self,
        count: int,
        points: torch.Tensor,
        size: Triple,
        interpolation: str,
        fill: float,
    ) -> torch.Tensor:
        """The input of stage ``count`` at input voxel coordinates ``points`` ``(*size, 3)``."""
        shape = torch.tensor(self.shape, dtype=torch.float64)
        inside = (1 - (-points).clamp(min=0) - (points - (shape - 1)).clamp(min=0)).clamp(min=0)
        valid = inside.prod(dim=-1) > 0.5  # as TorchIO: most of the weight inside the volume
        channels = self.source.shape[0]
        result = torch.full((channels, *size), fill, dtype=self.dtype)
        if not bool(valid.any()):
            return result
        chosen = points[valid]  # (N, 3)
        if interpolation == "nearest":
            indices = torch.floor(chosen + 0.5).to(torch.int64)
            low = indices.amin(dim=0)
            high = indices.amax(dim=0)
            box = Region.box(_triple(low), _triple(high - low + 1), self.shape)
            data = self._evaluate(count - 1, box)
            relative = indices - low
            _, _, by, bz = data.shape
            flat = (relative[:, 0] * by + relative[:, 1]) * bz + relative[:, 2]
            result[:, valid] = data.reshape(channels, -1)[:, flat].to(self.dtype)
            return result
        if interpolation != "linear":
            raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
        low = torch.floor(chosen.amin(dim=0)).to(torch.int64)
        high = torch.floor(chosen.amax(dim=0)).to(torch.int64) + 1
        limits = torch.tensor(self.shape, dtype=torch.int64) - 1
        start = low.clamp(min=0)
        stop = torch.minimum(high, limits)
        box = Region.box(_triple(start), _triple(stop - start + 1), self.shape)
        data = self._evaluate(count - 1, box)
        before = (start - low).tolist()
        after = (high - stop).tolist()
        data = data.to(torch.float32)
        if any(before) or any(after):  # zeros outside the volume, as grid_sample's padding
            data = functional.pad(
                data, (before[2], after[2], before[1], after[1], before[0], after[0])
            )
        extent = (high - low).to(torch.float64).clamp(min=1)
        normalised = (points - low.to(torch.float64)) / extent * 2 - 1
        grid = normalised.flip(-1).to(torch.float32).unsqueeze(0)  # (1, X, Y, Z, (z, y, x))
        sampled = functional.grid_sample(
            data.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=True
        )[0]
        if not self.dtype.is_floating_point:
            sampled = sampled.round()
        values = sampled.to(self.dtype)
        return torch.where(valid, values, result)


def _triple(values: torch.Tensor) -> Triple:
    x, y, z = (int(value) for value in values.tolist())
    return (x, y, z)


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
        return float(borders.mean())
    if fill == "otsu":
        threshold = _otsu_threshold(borders)
        below = borders[borders < threshold]
        return float(below.mean()) if below.numel() else float(borders.mean())
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


def deferred(subject: Subject, operations: Sequence[Operation]) -> Subject:
    """``subject`` with every image the operations apply to deferred: its voxels computed
    only where they are read (a patch; :attr:`~shmqueue.Image.data` computes them all)."""
    if not operations:
        return subject
    result = subject.copy()
    for name, image in subject.images.items():
        voxels = DeferredVoxels(image.data, name, type(image), operations)
        if voxels.stages:
            result[name] = image.deferred(voxels)
    return result


def evaluated(subject: Subject, operations: Sequence[Operation]) -> Subject:
    """``subject`` with the operations evaluated on the whole of every image they apply to."""
    for name, image in list(subject.images.items()):
        voxels = DeferredVoxels(image.data, name, type(image), operations)
        if voxels.stages:
            subject[name] = image.with_data(voxels.whole())
    return subject


def run_steps(
    steps: Iterable[SubjectTransform],
    subject: Subject,
    generator: torch.Generator,
    after_step: Callable[[SubjectTransform, Subject], None] | None = None,
) -> tuple[Subject, list[Operation]]:
    """Apply ``steps`` in order, drawing consecutive augmentations' operations without
    evaluating them: they are evaluated together (one resampling) before the next step of
    another kind, and those left at the end are returned, for the caller to evaluate
    (:func:`evaluated`) or defer (:func:`deferred`). ``after_step`` sees each other step's
    result.

    The generator is drawn from as applying each step in turn draws from it, so a subject's
    parameters do not depend on how its augmentations are evaluated.
    """
    pending: list[Operation] = []
    for step in steps:
        if isinstance(step, Augmentation) and step.deferrable:
            pending += step.draw(subject_specs(subject), generator)
            continue
        if pending:
            subject, pending = evaluated(subject, pending), []
        subject = apply_transform(step, subject, generator)  # frees the step's input
        if after_step is not None:
            after_step(step, subject)
    return subject, pending
