"""Random parameters as TorchIO states them, drawn from the task's generator.

TorchIO 2.0's convention (:class:`AxisRange`, :class:`ValueRange`): a number is that value; a
pair ``(a, b)`` is uniform on ``[a, b]``; for per-axis parameters, three entries give each axis
its own (a number or a pair) and six numbers give each axis its pair. TorchIO 1.x's ``Random*``
transforms read a single number ``x`` as the range ``(-x, x)`` (``(1 - x, 1 + x)`` for scales);
:func:`torchio1_range` turns such an argument into the 2.0 form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

Number = int | float
Bounds = tuple[float, float]
RangeLike = Number | Sequence[Number] | Sequence[Number | Sequence[Number]]


def _bounds(value: Number | Sequence[Number], name: str) -> Bounds:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value), float(value))
    pair = tuple(value)  # type: ignore[arg-type]
    if len(pair) != 2 or not all(isinstance(v, (int, float)) for v in pair):
        raise ValueError(f"{name}: expected a number or a pair (low, high), got {value!r}")
    low, high = float(pair[0]), float(pair[1])
    if low > high:
        raise ValueError(f"{name}: the range ({low}, {high}) has low > high")
    return (low, high)


def draw_uniform(bounds: Bounds, generator: torch.Generator) -> float:
    """A value uniform on ``bounds``; a degenerate range draws nothing."""
    low, high = bounds
    if low == high:
        return low
    unit = torch.rand((), generator=generator, dtype=torch.float64).item()
    return low + (high - low) * unit


@dataclass(frozen=True)
class ValueRange:
    """One random value: a number, or uniform on a pair ``(low, high)``.

    Example:
        >>> ValueRange.parse((0.5, 1.5), "factor").bounds
        (0.5, 1.5)
    """

    bounds: Bounds

    @classmethod
    def parse(cls, value: Number | Sequence[Number], name: str) -> ValueRange:
        return cls(_bounds(value, name))

    @property
    def is_constant(self) -> bool:
        return self.bounds[0] == self.bounds[1]

    def draw(self, generator: torch.Generator) -> float:
        return draw_uniform(self.bounds, generator)

    def __repr__(self) -> str:
        low, high = self.bounds
        return repr(low) if low == high else repr(self.bounds)

    def check_at_least(self, minimum: float, name: str) -> ValueRange:
        if self.bounds[0] < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {self.bounds}")
        return self


@dataclass(frozen=True)
class AxisRange:
    """One random value per spatial axis, each drawn independently.

    Example:
        >>> AxisRange.parse(2.0, "degrees").axes
        ((2.0, 2.0), (2.0, 2.0), (2.0, 2.0))
        >>> AxisRange.parse((-10, 10), "degrees").axes
        ((-10.0, 10.0), (-10.0, 10.0), (-10.0, 10.0))
        >>> AxisRange.parse((0, (-5, 5), 1), "translation").axes
        ((0.0, 0.0), (-5.0, 5.0), (1.0, 1.0))
        >>> AxisRange.parse((0, 1, 2, 3, 4, 5), "scales").axes
        ((0.0, 1.0), (2.0, 3.0), (4.0, 5.0))
    """

    axes: tuple[Bounds, Bounds, Bounds]

    @classmethod
    def parse(cls, value: RangeLike, name: str) -> AxisRange:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            bounds = _bounds(value, name)
            return cls((bounds, bounds, bounds))
        entries = tuple(value)  # type: ignore[arg-type]
        if len(entries) == 2 and all(isinstance(v, (int, float)) for v in entries):
            bounds = _bounds(entries, name)  # type: ignore[arg-type]
            return cls((bounds, bounds, bounds))
        if len(entries) == 3:
            x, y, z = (_bounds(entry, name) for entry in entries)
            return cls((x, y, z))
        if len(entries) == 6 and all(isinstance(v, (int, float)) for v in entries):
            x, y, z = (_bounds(entries[2 * a : 2 * a + 2], name) for a in range(3))  # type: ignore[arg-type]
            return cls((x, y, z))
        raise ValueError(
            f"{name}: expected a number, a pair (low, high), three per-axis entries or six"
            f" numbers (low, high per axis), got {value!r}"
        )

    @property
    def is_constant(self) -> bool:
        return all(low == high for low, high in self.axes)

    def draw(self, generator: torch.Generator) -> tuple[float, float, float]:
        x, y, z = (draw_uniform(bounds, generator) for bounds in self.axes)
        return (x, y, z)

    def __repr__(self) -> str:
        first = self.axes[0]
        if all(bounds == first for bounds in self.axes):
            return repr(first[0]) if first[0] == first[1] else repr(first)
        return repr(tuple(low if low == high else (low, high) for low, high in self.axes))

    def check_at_least(self, minimum: float, name: str) -> AxisRange:
        if any(low < minimum for low, _ in self.axes):
            raise ValueError(f"{name} must be >= {minimum}, got {self.axes}")
        return self


def torchio1_range(value: RangeLike, around: float = 0.0) -> RangeLike:
    """TorchIO 1.x's reading of a range argument, in TorchIO 2.0's form: a number ``x`` is
    ``(around - x, around + x)``; anything else is already a range.

    Example:
        >>> torchio1_range(10), torchio1_range(0.1, around=1.0), torchio1_range((0, 5))
        ((-10.0, 10.0), (0.9, 1.1), (0, 5))
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"A TorchIO 1.x range given as one number must be >= 0, got {value}")
        return (around - float(value), around + float(value))
    return value
