"""Regions of a volume's grid, as the deferred evaluation asks for them.

A :class:`Region` is a set of voxels given axis by axis: the voxel indices along X, Y and Z, whose
outer product is the region. A patch is a box (three contiguous ranges); a blur's margin at the
border of the volume is a box whose indices reflect back into the volume; a flip maps a box to a
reversed box. Every index lies inside the volume, so reading a region of a loaded volume is
slicing (or, for indices that are not a range, a gather along that axis).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Triple = tuple[int, int, int]


@dataclass(frozen=True, eq=False)
class Region:
    """The voxels ``axes[0] x axes[1] x axes[2]`` of a volume of spatial shape ``shape``.

    Attributes:
        axes: the voxel indices along each spatial axis (int64, each within the volume).
        shape: the volume's spatial shape ``(X, Y, Z)``.
    """

    axes: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    shape: Triple

    @classmethod
    def box(cls, index: Triple, size: Triple, shape: Triple) -> Region:
        """The box ``index : index + size`` (a patch)."""
        i, j, k = (
            torch.arange(start, start + length, dtype=torch.int64)
            for start, length in zip(index, size)
        )
        return cls((i, j, k), shape)

    @classmethod
    def whole(cls, shape: Triple) -> Region:
        """Every voxel of the volume."""
        return cls.box((0, 0, 0), shape, shape)

    @property
    def size(self) -> Triple:
        """Voxels along each axis."""
        x, y, z = (int(axis.numel()) for axis in self.axes)
        return (x, y, z)

    @property
    def voxels(self) -> int:
        x, y, z = self.size
        return x * y * z

    @property
    def key(self) -> tuple[int, ...]:
        """Identifies the region for per-region random draws: its first and last indices."""
        return tuple(value for axis in self.axes for value in (int(axis[0]), int(axis[-1])))

    def along(self, axis: int, indices: torch.Tensor) -> Region:
        """This region with ``indices`` along ``axis``."""
        axes = list(self.axes)
        axes[axis] = indices
        return Region((axes[0], axes[1], axes[2]), self.shape)

    def slabs(self, voxels: int) -> list[Region]:
        """This region cut along X into pieces of about ``voxels`` voxels each, to bound the
        memory of evaluating a whole volume."""
        _, y, z = self.size
        step = max(1, voxels // max(1, y * z))
        first = self.axes[0]
        return [self.along(0, first[start : start + step]) for start in range(0, len(first), step)]

    def hull(self) -> Region:
        """The smallest box holding this region (each axis as an increasing range)."""
        i, j, k = (
            torch.arange(int(axis.min()), int(axis.max()) + 1, dtype=torch.int64)
            for axis in self.axes
        )
        return Region((i, j, k), self.shape)

    def within(self, box: Region) -> Region:
        """This region's indices relative to ``box`` (which holds it), as a region of a volume
        shaped like the box: what to read of a tensor holding the box."""
        i, j, k = (axis - int(start[0]) for axis, start in zip(self.axes, box.axes))
        return Region((i, j, k), box.size)

    def extended(self, margin: Triple, border: str = "replicate") -> Region:
        """This box (see :meth:`hull`) grown by ``margin`` voxels on each side of each axis,
        indices outside the volume brought back into it by ``border``: ``'replicate'``
        repeats the border voxel (``torch.nn.functional.pad``'s ``'replicate'``, TorchIO 2.0's
        Blur), ``'reflect'`` mirrors the volume about its border, repeating the border voxel
        once (``d c b a | a b c d``, ``scipy.ndimage``'s ``'reflect'``)."""
        axes = []
        for number, (axis, extra) in enumerate(zip(self.axes, margin)):
            if extra == 0:
                axes.append(axis)
                continue
            first, last = int(axis[0]), int(axis[-1])
            grown = torch.arange(first - extra, last + extra + 1, dtype=torch.int64)
            axes.append(into_volume(grown, self.shape[number], border))
        return Region((axes[0], axes[1], axes[2]), self.shape)


def into_volume(indices: torch.Tensor, length: int, border: str) -> torch.Tensor:
    """``indices`` brought into ``[0, length)`` as :meth:`Region.extended` says."""
    if border == "replicate":
        return indices.clamp(0, length - 1)
    if border == "reflect":
        period = 2 * length
        folded = torch.remainder(indices, period)
        return torch.where(folded >= length, period - 1 - folded, folded)
    raise ValueError(f"border must be 'replicate' or 'reflect', got {border!r}")


def read_region(data: torch.Tensor, region: Region) -> torch.Tensor:
    """``data[:, region]`` of a ``(C, X, Y, Z)`` tensor: a view where each axis of the region is
    an increasing range, a copy along the axes that are not."""
    result = data
    for dimension, indices in enumerate(region.axes, start=1):
        count = int(indices.numel())
        first = int(indices[0])
        if count == data.shape[dimension] and first == 0 and _is_range(indices, 1):
            continue
        if _is_range(indices, 1):
            result = result.narrow(dimension, first, count)
        elif _is_range(indices, -1):
            result = result.narrow(dimension, first - count + 1, count).flip(dimension)
        else:
            result = result.index_select(dimension, indices)
    return result


def _is_range(indices: torch.Tensor, step: int) -> bool:
    count = int(indices.numel())
    if count == 1:
        return step == 1
    first, last = int(indices[0]), int(indices[-1])
    if last - first != step * (count - 1):
        return False
    return bool((indices.diff() == step).all())
