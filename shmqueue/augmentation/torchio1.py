"""TorchIO 1.x's ``Random*`` names and arguments for the augmentations.

Each is the TorchIO 2.0-named class with 1.x's defaults and 1.x's reading of ranges: a single
number ``x`` is the range ``(-x, x)`` (``(1 - x, 1 + x)`` for scales, ``(0, x)`` for a standard
deviation), three numbers are three such per-axis ranges. They draw from the queue's generator
and are evaluated at the patches like the classes they name.
"""

from __future__ import annotations

from collections.abc import Sequence

from .intensity import Noise
from .operations import Fill
from .parameters import Number, RangeLike, torchio1_range
from .spatial import Affine, ElasticDeformation, Flip


def _per_axis(value: RangeLike, around: float = 0.0) -> RangeLike:
    """1.x's per-axis reading: a number or three numbers, each ``x`` meaning ``(around - x,
    around + x)``; a pair or six numbers are ranges already."""
    if isinstance(value, (int, float)):
        return torchio1_range(value, around)
    entries = tuple(value)
    if len(entries) == 3 and all(isinstance(entry, (int, float)) for entry in entries):
        return tuple(torchio1_range(entry, around) for entry in entries)  # type: ignore[misc]
    return value


def _nonnegative(value: Number | Sequence[Number], name: str) -> Number | Sequence[Number]:
    """1.x's reading of a standard deviation: ``x`` is ``(0, x)``."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"If {name} is a single number, it must be >= 0, got {value}")
        return (0.0, float(value))
    return value


class RandomFlip(Flip):
    """TorchIO 1.x's ``RandomFlip``: each of ``axes`` flipped with probability
    ``flip_probability`` (default 0.5), drawn per axis.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.arange(4.0).reshape(1, 4, 1, 1)))
        >>> flip = sq.RandomFlip(axes=(0,), flip_probability=1.0)
        >>> flip(subject, torch.Generator().manual_seed(0)).t1.data.flatten().tolist()
        [3.0, 2.0, 1.0, 0.0]
    """

    def __init__(
        self,
        axes: int | str | Sequence[int | str] = 0,
        flip_probability: float = 0.5,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(axes, flip_probability, p, include, exclude)


class RandomNoise(Noise):
    """TorchIO 1.x's ``RandomNoise``: the mean drawn from ``mean`` (``m`` for ``(-m, m)``), the
    standard deviation from ``std`` (``s`` for ``(0, s)``), once per subject.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 8, 8, 8)))
        >>> noisy = sq.RandomNoise(std=(0.5, 0.5))(subject, torch.Generator().manual_seed(0))
        >>> round(noisy.t1.data.std().item(), 1)
        0.5
    """

    def __init__(
        self,
        mean: Number | Sequence[Number] = 0.0,
        std: Number | Sequence[Number] = (0.0, 0.25),
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        mean_range = torchio1_range(mean) if isinstance(mean, (int, float)) else mean
        super().__init__(mean_range, _nonnegative(std, "std"), p, include, exclude)  # type: ignore[arg-type]


class RandomAffine(Affine):
    """TorchIO 1.x's ``RandomAffine``: ``scales=0.1`` is ``(0.9, 1.1)``, ``degrees=10`` is
    ``(-10, 10)``, per axis; translation in mm likewise."""

    def __init__(
        self,
        scales: RangeLike = 0.1,
        degrees: RangeLike = 10,
        translation: RangeLike = 0,
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
        scale_range = torchio1_range(scales, 1.0) if isotropic else _per_axis(scales, 1.0)
        super().__init__(
            scale_range,
            _per_axis(degrees),
            _per_axis(translation),
            isotropic,
            center,
            default_pad_value,
            default_pad_label,
            image_interpolation,
            label_interpolation,
            p,
            include,
            exclude,
        )


class RandomElasticDeformation(ElasticDeformation):
    """TorchIO 1.x's ``RandomElasticDeformation``: ``max_displacement`` is the largest
    displacement per axis (each control point's uniform on ``[-max, max]``)."""

    def __init__(
        self,
        num_control_points: int | tuple[int, int, int] = 7,
        max_displacement: RangeLike = 7.5,
        locked_borders: int = 2,
        image_interpolation: str = "linear",
        label_interpolation: str = "nearest",
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(
            None,
            num_control_points,
            max_displacement,
            locked_borders,
            "minimum",
            0,
            image_interpolation,
            label_interpolation,
            p,
            include,
            exclude,
        )
