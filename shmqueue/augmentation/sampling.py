"""Sampling a volume at arbitrary voxel coordinates, as TorchIO 2.0 resamples.

Trilinear interpolation with zeros outside the volume (``grid_sample``'s padding), label maps
by nearest neighbour (exactly: no label is invented), and the fill value wherever less than
half of a point's interpolation weight lies inside the volume. The volume is read through a
callable, a box at a time, so that a deferred stage computes only the box the points need.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as functional

from .regions import Region, Triple

Reader = Callable[[Region], torch.Tensor]
"""Reads the ``(C, *box.size)`` voxels of a box of the volume sampled."""


def sample(
    read: Reader,
    shape: Triple,
    channels: int,
    dtype: torch.dtype,
    points: torch.Tensor,
    interpolation: str,
    fill: float,
) -> torch.Tensor:
    """The volume of spatial ``shape`` (read by ``read``) at voxel coordinates ``points``
    ``(*size, 3)``: ``(channels, *size)`` values of ``dtype``.

    Example:
        >>> from shmqueue.augmentation.regions import read_region
        >>> volume = torch.arange(8.0).reshape(1, 2, 2, 2)
        >>> points = torch.tensor([[[[0.5, 0.0, 0.0], [5.0, 5.0, 5.0]]]])
        >>> read = lambda box: read_region(volume, box)
        >>> sample(read, (2, 2, 2), 1, torch.float32, points, "linear", -1.0).tolist()
        [[[[2.0, -1.0]]]]
    """
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"interpolation must be 'linear' or 'nearest', got {interpolation!r}")
    size = points.shape[:-1]
    flat_points = points.reshape(-1, 3)
    lowest, highest = flat_points.amin(dim=0), flat_points.amax(dim=0)
    last = torch.tensor(shape, dtype=points.dtype) - 1
    valid: torch.Tensor | None = None  # None: every point is inside the volume
    if bool((lowest < 0).any() or (highest > last).any()):
        outside = (-points).clamp_(min=0).add_((points - last).clamp_(min=0))
        # As TorchIO: a point is filled unless most of its weight lies inside the volume.
        valid = (1 - outside).clamp_(min=0).prod(dim=-1) > 0.5
        if not bool(valid.any()):
            return torch.full((channels, *size), fill, dtype=dtype)
    if interpolation == "nearest":
        values = _nearest(read, shape, dtype, points, lowest, highest)
    else:
        values = _linear(read, shape, dtype, points, lowest, highest)
    if valid is None:
        return values
    return torch.where(valid, values, torch.tensor(fill, dtype=dtype))


def _box(shape: Triple, low: torch.Tensor, high: torch.Tensor) -> Region:
    """The box ``low..high`` (inclusive), within the volume."""
    limits = torch.tensor(shape, dtype=torch.int64) - 1
    start = torch.minimum(low.clamp(min=0), limits)
    stop = torch.maximum(torch.minimum(high, limits), start)
    return Region.box(_triple(start), _triple(stop - start + 1), shape)


def _nearest(
    read: Reader,
    shape: Triple,
    dtype: torch.dtype,
    points: torch.Tensor,
    lowest: torch.Tensor,
    highest: torch.Tensor,
) -> torch.Tensor:
    """Nearest-neighbour values at ``points`` (a point outside the volume gets a border
    voxel's: the caller fills it)."""
    rounded = torch.floor(points + 0.5)
    box = _box(
        shape,
        torch.floor(lowest + 0.5).to(torch.int64),
        torch.floor(highest + 0.5).to(torch.int64),
    )
    data = read(box)
    channels, bx, by, bz = data.shape
    start = torch.tensor([int(axis[0]) for axis in box.axes], dtype=points.dtype)
    top = torch.tensor([bx - 1, by - 1, bz - 1], dtype=points.dtype)
    relative = torch.minimum((rounded - start).clamp_(min=0), top).to(torch.int64)
    flat = (relative[..., 0] * by + relative[..., 1]) * bz + relative[..., 2]
    values = data.reshape(channels, -1)[:, flat.reshape(-1)]
    return values.reshape(channels, *points.shape[:-1]).to(dtype)


def _linear(
    read: Reader,
    shape: Triple,
    dtype: torch.dtype,
    points: torch.Tensor,
    lowest: torch.Tensor,
    highest: torch.Tensor,
) -> torch.Tensor:
    """Trilinear values at ``points``, zeros outside the volume as grid_sample's padding
    (a point with most of its weight outside is filled by the caller)."""
    low = torch.floor(lowest).to(torch.int64).clamp(min=-1)
    high = torch.minimum(
        torch.floor(highest).to(torch.int64) + 1, torch.tensor(shape, dtype=torch.int64)
    )
    box = _box(shape, low, high)
    data = read(box).to(torch.float32)
    start = torch.tensor([int(axis[0]) for axis in box.axes], dtype=torch.int64)
    stop = start + torch.tensor(box.size, dtype=torch.int64) - 1
    before, after = (start - low).tolist(), (high - stop).tolist()
    if any(before) or any(after):
        data = functional.pad(data, (before[2], after[2], before[1], after[1], before[0], after[0]))
    scale = (2 / (high - low).clamp(min=1)).to(points.dtype)
    normalised = (points - low.to(points.dtype)).mul_(scale).sub_(1)
    grid = normalised.flip(-1).to(torch.float32).unsqueeze(0)  # (1, X, Y, Z, (z, y, x))
    sampled = functional.grid_sample(
        data.unsqueeze(0), grid, mode="bilinear", padding_mode="zeros", align_corners=True
    )[0]
    if not dtype.is_floating_point:
        sampled = sampled.round_()
    return sampled.to(dtype)


def _triple(values: torch.Tensor) -> Triple:
    x, y, z = (int(value) for value in values.tolist())
    return (x, y, z)
