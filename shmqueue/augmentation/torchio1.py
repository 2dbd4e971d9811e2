"""TorchIO 1.x's ``Random*`` names and arguments for the augmentations.

Each is the TorchIO 2.0-named class with 1.x's defaults and 1.x's reading of ranges: a single
number ``x`` is the range ``(-x, x)`` (``(1 - x, 1 + x)`` for scales, ``(0, x)`` for a standard
deviation, ``(1, x)`` for a downsampling factor), three numbers are three such per-axis ranges.
They draw from the queue's generator, once per subject (1.x draws some parameters per image),
and are evaluated at the patches like the classes they name, by those classes' arithmetic
(where 1.x computes differently, the class says how).
"""

from __future__ import annotations

from collections.abc import Sequence

from ..image import ScalarImage
from .intensity import Anisotropy, BiasField, Blur, Gamma, Noise
from .operations import Fill, Selection
from .parameters import Number, RangeLike, torchio1_range
from .spatial import Affine, ElasticDeformation, Flip


def _per_axis(value: RangeLike, around: float | None = 0.0, name: str = "") -> RangeLike:
    """1.x's per-axis reading: a number or three numbers, each ``x`` meaning ``(around - x,
    around + x)``, or ``(0, x)`` when ``around`` is None (a standard deviation, ``name``, as 1.x's
    ``to_range``); a pair or six numbers are ranges already."""

    def reading(entry: Number) -> RangeLike:
        return _nonnegative(entry, name) if around is None else torchio1_range(entry, around)

    if isinstance(value, (int, float)):
        return reading(value)
    entries = tuple(value)
    if len(entries) == 3 and all(isinstance(entry, (int, float)) for entry in entries):
        return tuple(reading(entry) for entry in entries)  # type: ignore[arg-type,misc]
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


class RandomBiasField(BiasField):
    """TorchIO 1.x's ``RandomBiasField``: each coefficient of the polynomial of degree ``order``
    drawn from ``coefficients`` (``c`` for ``(-c, c)``), once per subject (1.x: per image).

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.ones(1, 8, 8, 8)))
        >>> biased = sq.RandomBiasField(order=1)(subject, torch.Generator().manual_seed(0))
        >>> bool((biased.t1.data > 0).all())
        True
    """


class RandomGamma(Gamma):
    """TorchIO 1.x's ``RandomGamma``: ``gamma = exp(beta)``, ``beta`` drawn from ``log_gamma``
    (``d`` for ``(-d, d)``; default ``(-0.3, 0.3)``), once per subject (1.x: per image and
    channel).

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.full((1, 2, 2, 2), 4.0)))
        >>> value = sq.RandomGamma()(subject, torch.Generator().manual_seed(0)).t1.data[0, 0, 0, 0]
        >>> bool(4.0 ** 0.74 <= value <= 4.0 ** 1.35)
        True
    """

    def __init__(
        self,
        log_gamma: Number | Sequence[Number] = (-0.3, 0.3),
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        log_gamma_range = (
            torchio1_range(log_gamma) if isinstance(log_gamma, (int, float)) else log_gamma
        )
        super().__init__(log_gamma_range, p, include, exclude)  # type: ignore[arg-type]


class RandomBlur(Blur):
    """TorchIO 1.x's ``RandomBlur``: the standard deviations in mm drawn per axis from ``std``
    (``x`` for ``(0, x)``, three numbers for three such ranges, a pair or six numbers as
    ranges; default ``(0, 2)``), once per subject (1.x: per image). The kernel is
    :class:`~shmqueue.Blur`'s (TorchIO 2.0's), not SciPy's ``gaussian_filter`` that 1.x uses.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)))
        >>> blurred = sq.RandomBlur(std=(1, 1))(subject).t1.data
        >>> bool(blurred.std() < subject.t1.data.std())
        True
    """

    def __init__(
        self,
        std: RangeLike = (0, 2),
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(_per_axis(std, None, "std"), p, include, exclude)


class RandomAnisotropy(Anisotropy):
    """TorchIO 1.x's ``RandomAnisotropy``: one of ``axes`` downsampled by a factor drawn from
    ``downsampling`` (``m`` for ``(1, m)``; factors >= 1) and upsampled back, once per subject.

    With ``scalars_only`` (the default, as in 1.x) label maps are left alone; otherwise they are
    resampled by nearest neighbour. The resampling is :class:`~shmqueue.Anisotropy`'s (TorchIO
    2.0's), not 1.x's SimpleITK one.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(
        ...     t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)), seg=sq.LabelMap(torch.ones(1, 8, 8, 8))
        ... )
        >>> low = sq.RandomAnisotropy(axes=0, downsampling=(2, 2))(subject)
        >>> low.seg.data is subject.seg.data, torch.equal(low.t1.data, subject.t1.data)
        (True, False)
    """

    def __init__(
        self,
        axes: int | Sequence[int] = (0, 1, 2),
        downsampling: Number | Sequence[Number] = (1.5, 5),
        image_interpolation: str = "linear",
        scalars_only: bool = True,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        if isinstance(downsampling, (int, float)):
            downsampling = (1.0, float(downsampling))
        super().__init__(axes, downsampling, image_interpolation, p, include, exclude)
        if self.downsampling.bounds[0] < 1:
            raise ValueError(
                f"RandomAnisotropy downsampling must be >= 1, got {self.downsampling.bounds}"
            )
        if scalars_only:
            self.selection = Selection((ScalarImage,), include, exclude)
        self.scalars_only = scalars_only
