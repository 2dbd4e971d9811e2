"""Intensity augmentations, evaluated voxel by voxel (or with a known neighbourhood) so that a
patch needs only its own voxels: :class:`Noise`, :class:`BiasField`, :class:`Gamma`,
:class:`Blur`, :class:`Brightness`, :class:`Contrast` and :class:`Anisotropy`.

Their parameters are drawn once per subject and applied alike to every scalar image (label maps
are left alone, except by :class:`Anisotropy`, which resamples them as TorchIO 2.0 does). Each is
written so that a patch's values are the whole volume's result cropped: a voxel's value depends
on its own input value, its position in the whole volume (a bias field), a neighbourhood of known
size (a blur, a resampling along one axis) and statistics of the whole image computed once per
subject (contrast).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as functional

from ..image import Image, LabelMap, ScalarImage
from ..reductions import channel_means
from ..specs import ImageSpec, Locality, SubjectSpec
from .base import Augmentation
from .operations import IntensityOperation, Interpolation, Operation, Selection, grid_of
from .parameters import AxisRange, Number, RangeLike, ValueRange
from .regions import Region, Triple, read_region

CONVOLUTION_KERNEL_BYTES = 9 << 19
"""What a process keeps after its first ``conv3d`` (measured: 4.3 MiB)."""


def region_generator(seed: int, region: Region) -> torch.Generator:
    """A generator for the per-voxel draws of one region, from the operation's ``seed`` and
    the region's position: the same region gets the same draws wherever it is evaluated."""
    entropy = np.random.SeedSequence([seed, *(value + 1 for value in region.key)])
    return torch.Generator().manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))


class _Intensity(Augmentation):
    """What the intensity augmentations here share: random when ``p < 1`` or when one of their
    parameters' ranges is not a single value; unless a subclass says otherwise, evaluated voxel
    by voxel into the new volume alone."""

    def _ranges(self) -> tuple[ValueRange | AxisRange, ...]:
        """The ranges its parameters are drawn from."""
        raise NotImplementedError

    @property
    def is_random(self) -> bool:
        return self.p < 1.0 or not all(drawn.is_constant for drawn in self._ranges())

    @property
    def locality(self) -> Locality:
        """Voxel by voxel."""
        return Locality(0)


# Noise -----------------------------------------------------------------------------------------


class AddNoise(IntensityOperation):
    """Add Gaussian noise ``N(mean, std)``, drawn per voxel."""

    def __init__(self, selection: Selection, mean: float, std: float, seed: int) -> None:
        super().__init__(selection)
        self.mean, self.std, self.seed = mean, std, seed

    def evaluate(self, data: torch.Tensor, region: Region, statistics: Any) -> torch.Tensor:
        # Drawn over the region's box, so that each voxel's draw depends on the box, not on the
        # order a mapping (a flip) lists its voxels in.
        box = region.hull()
        noise = torch.empty((data.shape[0], *box.size), dtype=data.dtype)
        noise.normal_(self.mean, self.std, generator=region_generator(self.seed, box))
        return read_region(noise, region.within(box)).add(data)


class Noise(Augmentation):
    """Add Gaussian noise to scalar images (TorchIO 2.0's ``Noise``).

    The mean and standard deviation are drawn once per subject; the noise itself per voxel.
    Evaluated on a patch, the patch gets noise of the same distribution as the whole volume's
    (two overlapping patches of one subject get independent noise where they overlap).

    Args:
        mean: the noise's mean, a number or a range ``(a, b)`` drawn from.
        std: its standard deviation (>= 0), a number or a range.
        p: the probability that the transform is applied.
        include: names of the images to add noise to (default: every scalar image).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 32, 32, 32)))
        >>> noisy = sq.Noise(std=0.5)(subject, torch.Generator().manual_seed(0))
        >>> round(noisy.t1.data.std().item(), 1)
        0.5
    """

    def __init__(
        self,
        mean: Number | Sequence[Number] = 0.0,
        std: Number | Sequence[Number] = 0.25,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.mean = ValueRange.parse(mean, "Noise mean")
        self.std = ValueRange.parse(std, "Noise std").check_at_least(0.0, "Noise std")

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        mean = self.mean.draw(generator)
        std = self.std.draw(generator)
        seed = int(torch.randint(0, 2**62, (), generator=generator))
        return [AddNoise(self.selection, mean, std, seed)]


# Bias field ------------------------------------------------------------------------------------


def monomials(order: int) -> list[tuple[int, int, int]]:
    """The exponents ``(i, j, k)`` of the monomials ``x^i y^j z^k`` of degree at most ``order``,
    in TorchIO 1.x's order (``i``, then ``j``, then ``k`` increasing): its coefficients' order.

    Example:
        >>> monomials(1)
        [(0, 0, 0), (0, 0, 1), (0, 1, 0), (1, 0, 0)]
    """
    return [
        (i, j, k)
        for i in range(order + 1)
        for j in range(order + 1 - i)
        for k in range(order + 1 - i - j)
    ]


def bias_coordinates(indices: torch.Tensor, length: int) -> torch.Tensor:
    """Voxel ``indices`` along an axis of ``length`` voxels as TorchIO 1.x's bias field places
    them: ``-1`` at the first voxel, ``1`` at the last, ``0`` throughout a single voxel (float64,
    the same arithmetic as TorchIO's, so the same bits).

    Example:
        >>> bias_coordinates(torch.arange(5), 5).tolist()
        [-1.0, -0.5, 0.0, 0.5, 1.0]
    """
    half = (length - 1) / 2
    centred = indices.to(torch.float64) - half
    return centred / half if half > 0 else centred


class MultiplyBiasField(IntensityOperation):
    """Multiply by ``exp`` of a polynomial of the voxel's position in the whole volume.

    Args:
        coefficients: one per monomial of :func:`monomials` ``(order)``, in that order.
        order: the polynomial's degree.
        shape: the whole volume's spatial shape, over which the coordinates span ``[-1, 1]``.
    """

    def __init__(
        self, selection: Selection, coefficients: Sequence[float], order: int, shape: Triple
    ) -> None:
        super().__init__(selection)
        self.coefficients = tuple(float(value) for value in coefficients)
        self.order = order
        self.shape = shape

    def evaluate(self, data: torch.Tensor, region: Region, statistics: Any) -> torch.Tensor:
        x, y, z = (bias_coordinates(axis, n) for axis, n in zip(region.axes, self.shape))
        # sum c_ijk x^i y^j z^k = sum_i x^i Q_i(y, z): the Q_i are planes (float64, cheap); only
        # Horner's rule in x runs over every voxel, in place in the field.
        planes = torch.zeros((self.order + 1, len(y), len(z)), dtype=torch.float64)
        for (i, j, k), coefficient in zip(monomials(self.order), self.coefficients):
            planes[i] += coefficient * torch.outer(y**j, z**k)
        planes_in_dtype = planes.to(data.dtype)
        column = x.to(data.dtype).reshape(-1, 1, 1)
        field = torch.empty(region.size, dtype=data.dtype)
        field.copy_(planes_in_dtype[self.order])
        for i in reversed(range(self.order)):
            field.mul_(column).add_(planes_in_dtype[i])
        field.exp_()
        if data.shape[0] == 1:  # the field becomes the output: no second volume
            return field.mul_(data[0]).unsqueeze(0)
        return data * field


class BiasField(_Intensity):
    """Multiply scalar images by a smooth random field, as MRI's field inhomogeneity does
    (TorchIO 1.x's ``RandomBiasField`` model).

    The field is ``exp`` of a polynomial of degree ``order`` in the voxel's coordinates, which
    span ``[-1, 1]`` from the first to the last voxel of the whole volume along each axis:
    ``exp(sum c_ijk x^i y^j z^k)`` over ``i + j + k <= order`` (Van Leemput et al., 1999). Each
    coefficient is drawn uniformly from ``coefficients``, once per subject and the same for all
    its images and channels (TorchIO 1.x draws them per image). A patch's field is computed from
    its voxels' positions in the whole volume, so it is the whole field cropped.

    TorchIO 2.0's ``BiasField`` is another model (SynthSeg's: a coarse Gaussian random grid
    upsampled, arguments ``std`` and ``scale``); it is not implemented here.

    Args:
        coefficients: the range of each coefficient: a number ``c`` for ``(-c, c)`` (TorchIO
            1.x's reading), or a pair ``(a, b)``.
        order: the polynomial's degree (an int >= 0); ``(order + 1)(order + 2)(order + 3) / 6``
            coefficients.
        p: the probability that the transform is applied.
        include: names of the images to apply it to (default: every scalar image).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.ones(1, 8, 8, 8)))
        >>> biased = sq.BiasField(coefficients=0.5)(subject, torch.Generator().manual_seed(0))
        >>> bool((biased.t1.data > 0).all()), bool(biased.t1.data.std() > 0)
        (True, True)
    """

    def __init__(
        self,
        coefficients: Number | Sequence[Number] = 0.5,
        order: int = 3,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        if isinstance(coefficients, (int, float)):
            if coefficients < 0:
                raise ValueError(
                    "BiasField coefficients given as one number c mean (-c, c): c must be >= 0,"
                    f" got {coefficients}"
                )
            coefficients = (-coefficients, coefficients)
        self.coefficients = ValueRange.parse(coefficients, "BiasField coefficients")
        if isinstance(order, bool) or not isinstance(order, int) or order < 0:
            raise ValueError(f"BiasField order must be an int >= 0, got {order!r}")
        self.order = order

    def _ranges(self) -> tuple[ValueRange | AxisRange, ...]:
        return (self.coefficients,)

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        coefficients = [self.coefficients.draw(generator) for _ in monomials(self.order)]
        if not any(coefficients):
            return []
        shape = grid_of(images).spatial_shape
        return [MultiplyBiasField(self.selection, coefficients, self.order, shape)]


# Gamma -----------------------------------------------------------------------------------------


class RaiseToPower(IntensityOperation):
    """``sign(x) |x|^gamma`` at every voxel."""

    def __init__(self, selection: Selection, gamma: float) -> None:
        super().__init__(selection)
        self.gamma = gamma

    def evaluate(self, data: torch.Tensor, region: Region, statistics: Any) -> torch.Tensor:
        return data.abs().pow_(self.gamma).copysign_(data)


class Gamma(_Intensity):
    """Change the contrast of scalar images by raising their values to a power ``gamma``
    (TorchIO 2.0's ``Gamma``).

    ``gamma = exp(beta)``, ``beta`` drawn from ``log_gamma`` once per subject (the same for all
    its images and channels; TorchIO 1.x's ``RandomGamma`` draws one per image and channel).
    Negative values become ``sign(x) |x|^gamma``, as in TorchIO 2.0 (1.x does the same for an
    image channel with a negative value, and ``x^gamma`` otherwise: the same values).

    Args:
        log_gamma: ``beta``: a number, or a range ``(a, b)`` drawn from uniformly. Positive
            values expand the contrast, negative ones compress it; the default 0 does nothing.
        p: the probability that the transform is applied.
        include: names of the images to apply it to (default: every scalar image).
        exclude: names of images to leave alone.

    Example:
        >>> import math, torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.full((1, 2, 2, 2), 4.0)))
        >>> sq.Gamma(log_gamma=math.log(0.5))(subject).t1.data.flatten()[0].item()
        2.0
    """

    def __init__(
        self,
        log_gamma: Number | Sequence[Number] = 0.0,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.log_gamma = ValueRange.parse(log_gamma, "Gamma log_gamma")

    def _ranges(self) -> tuple[ValueRange | AxisRange, ...]:
        return (self.log_gamma,)

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        beta = self.log_gamma.draw(generator)
        return [RaiseToPower(self.selection, math.exp(beta))] if beta != 0 else []


# Blur ------------------------------------------------------------------------------------------


def gaussian_radius(sigma: float) -> int:
    """TorchIO 2.0's Gaussian kernel radius for ``sigma`` voxels: ``ceil(3 sigma)``, at least 1
    (0 for no blur)."""
    return max(math.ceil(3 * sigma), 1) if sigma > 0 else 0


def gaussian_kernel(sigma: float) -> torch.Tensor:
    """TorchIO 2.0's 1D Gaussian kernel for ``sigma > 0`` voxels: ``exp(-x^2 / 2 sigma^2)`` at
    the offsets ``-radius .. radius``, normalised to sum 1 (float32, as TorchIO computes it).

    Example:
        >>> kernel = gaussian_kernel(1.0)
        >>> len(kernel), round(kernel.sum().item(), 6)
        (7, 1.0)
    """
    radius = gaussian_radius(sigma)
    offsets = torch.arange(2 * radius + 1, dtype=torch.float32) - radius
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def _voxel_sigmas(std: Sequence[float], spacing: Sequence[float]) -> tuple[float, float, float]:
    """Standard deviations in mm as voxels of ``spacing`` (0 for a spacing of 0, as TorchIO)."""
    x, y, z = (s / d if d > 0 else 0.0 for s, d in zip(std, spacing))
    return (x, y, z)


class SeparableBlur(IntensityOperation):
    """A separable Gaussian blur of ``sigmas`` voxels per axis, the border replicated.

    Evaluated on the region grown by the kernels' radii, by 'valid' convolutions axis by axis:
    the same values as padding the whole volume (``'replicate'``) before each axis's
    convolution, as TorchIO 2.0 does, since replicating commutes with blurring along the other
    axes.
    """

    def __init__(self, selection: Selection, sigmas: tuple[float, float, float]) -> None:
        super().__init__(selection)
        self.sigmas = sigmas
        x, y, z = (gaussian_radius(sigma) for sigma in sigmas)
        self.margin = (x, y, z)
        self.kernels: list[torch.Tensor | None] = []
        for axis, sigma in enumerate(sigmas):
            if sigma <= 0:
                self.kernels.append(None)
                continue
            shape = [1, 1, 1, 1, 1]
            shape[axis + 2] = -1
            self.kernels.append(gaussian_kernel(sigma).reshape(shape))

    def evaluate(self, data: torch.Tensor, region: Region, statistics: Any) -> torch.Tensor:
        values = data.to(torch.float32).unsqueeze(1)  # channels as the batch: (C, 1, X, Y, Z)
        for kernel in self.kernels:
            if kernel is not None:
                values = functional.conv3d(values, kernel)
        return values.squeeze(1).to(data.dtype)


class Blur(_Intensity):
    """Blur scalar images with a Gaussian filter (TorchIO 2.0's ``Blur``).

    The standard deviations (in mm, one per axis, each drawn from its range once per subject)
    are divided by the image's spacing; each axis is convolved in turn with a Gaussian kernel of
    radius ``ceil(3 sigma)`` voxels (at least 1), normalised to sum 1, the image's border
    replicated beyond it. A patch is computed from its voxels and that many around it, and is
    the whole blurred volume cropped. (TorchIO 1.x's ``RandomBlur`` uses SciPy's
    ``gaussian_filter`` instead: a radius of ``4 sigma`` and the border mirrored; its values
    differ slightly near edges and in the tails.)

    Args:
        std: the standard deviations in mm, a TorchIO 2.0 range: a number for all three axes,
            a pair ``(a, b)`` drawn from for each axis, three per-axis entries (numbers or
            pairs) or six numbers (a pair per axis); >= 0. The default 0 does nothing.
        p: the probability that the transform is applied.
        include: names of the images to blur (default: every scalar image).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> data = torch.zeros(1, 9, 9, 9)
        >>> data[0, 4, 4, 4] = 1.0
        >>> blurred = sq.Blur(std=1.0)(sq.Subject(t1=sq.ScalarImage(data))).t1.data
        >>> round(blurred.sum().item(), 4), bool(blurred[0, 4, 4, 4] < 0.1)
        (1.0, True)
    """

    def __init__(
        self,
        std: RangeLike = 0.0,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.std = AxisRange.parse(std, "Blur std").check_at_least(0.0, "Blur std")

    def _ranges(self) -> tuple[ValueRange | AxisRange, ...]:
        return (self.std,)

    @property
    def locality(self) -> Locality:
        """The largest kernel radius, in voxels of 1 mm (the radius of an image is
        ``ceil(3 sigma / spacing)``, which its operation states as its margin)."""
        return Locality(max(gaussian_radius(high) for _, high in self.std.axes))

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        std = self.std.draw(generator)
        sigmas = _voxel_sigmas(std, grid_of(images).spacing)
        if not any(sigma > 0 for sigma in sigmas):
            return []
        return [SeparableBlur(self.selection, sigmas)]

    def process_cost(self) -> int:
        """torch's convolution kernels (oneDNN), initialised on the first blur."""
        return CONVOLUTION_KERNEL_BYTES

    def region_cost(self, name: str, spec: ImageSpec) -> int:
        """The region grown by the kernels' radii, read as a copy, and the passes along each
        axis (some ten values per voxel, measured)."""
        if not self.selection(name, spec.kind):
            return 0
        return 10 * spec.channels * spec.dtype.itemsize


# Brightness and contrast -----------------------------------------------------------------------


class Multiply(IntensityOperation):
    """Multiply every voxel by ``factor``."""

    def __init__(self, selection: Selection, factor: float) -> None:
        super().__init__(selection)
        self.factor = factor

    def evaluate(self, data: torch.Tensor, region: Region, statistics: Any) -> torch.Tensor:
        return torch.mul(data, self.factor)


class Brightness(_Intensity):
    """Multiply scalar images by a random factor (nnU-Net's ``MultiplicativeBrightnessTransform``,
    batchgeneratorsv2).

    The factor is drawn uniformly from ``factor`` once per subject, the same for all its images
    and channels (nnU-Net's default draws one per channel, from ``BGContrast((0.75, 1.25))``:
    the same distribution as this uniform range).

    Args:
        factor: the multiplier: a number, or a range ``(a, b)`` drawn from uniformly.
        p: the probability that the transform is applied (nnU-Net uses 0.15).
        include: names of the images to apply it to (default: every scalar image).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.ones(1, 2, 2, 2)))
        >>> sq.Brightness(factor=1.5)(subject).t1.data.flatten()[0].item()
        1.5
    """

    def __init__(
        self,
        factor: Number | Sequence[Number] = (0.75, 1.25),
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.factor = ValueRange.parse(factor, "Brightness factor")

    def _ranges(self) -> tuple[ValueRange | AxisRange, ...]:
        return (self.factor,)

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        factor = self.factor.draw(generator)
        return [Multiply(self.selection, factor)] if factor != 1 else []


class ScaleContrast(IntensityOperation):
    """``(x - mean) * factor + mean`` per channel, clamped to the channel's range if
    ``preserve_range``; the mean, minimum and maximum are the whole input image's."""

    needs_statistics = True

    def __init__(self, selection: Selection, factor: float, preserve_range: bool) -> None:
        super().__init__(selection)
        self.factor = factor
        self.preserve_range = preserve_range

    def statistics(self, volume: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per channel, shaped ``(C, 1, 1, 1)``: ``mean * (1 - factor)``, minimum, maximum."""
        flat = volume.flatten(1)
        low, high = flat.aminmax(dim=1)
        offset = (channel_means(flat) * (1 - self.factor)).to(flat.dtype)
        return tuple(value.reshape(-1, 1, 1, 1) for value in (offset, low, high))

    def evaluate(
        self, data: torch.Tensor, region: Region, statistics: tuple[torch.Tensor, ...]
    ) -> torch.Tensor:
        offset, low, high = statistics
        result = torch.add(offset, data, alpha=self.factor)  # x * factor + mean * (1 - factor)
        return result.clamp_(low, high) if self.preserve_range else result


class Contrast(_Intensity):
    """Scale the contrast of scalar images about their mean (nnU-Net's ``ContrastTransform``,
    batchgeneratorsv2).

    Each channel becomes ``(x - mean) * factor + mean``, then, with ``preserve_range``, is
    clamped to the channel's original minimum and maximum. The factor is drawn uniformly from
    ``factor`` once per subject, the same for all its images and channels (nnU-Net's default
    draws one per channel, from ``BGContrast((0.75, 1.25))``: the same distribution as this
    uniform range). nnU-Net computes the mean, minimum and maximum on the patch it augments;
    here they are the whole image's, computed once per subject, so that a patch evaluated alone
    is the whole augmented volume cropped (and every patch of a subject gets the same mapping).

    Args:
        factor: the contrast factor: a number, or a range ``(a, b)`` drawn from uniformly.
        preserve_range: clamp the result to each channel's minimum and maximum.
        p: the probability that the transform is applied (nnU-Net uses 0.15).
        include: names of the images to apply it to (default: every scalar image).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> data = torch.tensor([0.0, 1, 2, 3]).reshape(1, 4, 1, 1)
        >>> sq.Contrast(factor=2.0)(sq.Subject(t1=sq.ScalarImage(data))).t1.data.flatten().tolist()
        [0.0, 0.5, 2.5, 3.0]
    """

    def __init__(
        self,
        factor: Number | Sequence[Number] = (0.75, 1.25),
        preserve_range: bool = True,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.factor = ValueRange.parse(factor, "Contrast factor")
        self.preserve_range = preserve_range

    def _ranges(self) -> tuple[ValueRange | AxisRange, ...]:
        return (self.factor,)

    @property
    def locality(self) -> Locality:
        """Voxel by voxel, given each image's mean, minimum and maximum."""
        return Locality(0, statistics=True)

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        factor = self.factor.draw(generator)
        if factor == 1:
            return []
        return [ScaleContrast(self.selection, factor, self.preserve_range)]


# Anisotropy ------------------------------------------------------------------------------------


def coarse_length(length: int, factor: float) -> int:
    """The length of an axis of ``length`` voxels downsampled by ``factor``, as TorchIO 2.0
    computes it: ``max(1, round(length / factor))`` (Python's rounding, half to even)."""
    return max(1, round(length / factor))


def anisotropy_sources(
    length: int, factor: float, interpolation: Interpolation
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each voxel along an axis of ``length`` voxels takes its value from, downsampled by
    ``factor`` and back as TorchIO 2.0 does it with ``torch.nn.functional.interpolate``.

    The coarse axis has ``max(1, round(length / factor))`` voxels, coarse voxel ``j`` the
    value of voxel ``floor(j * length / coarse)`` (nearest); upsampling takes, for voxel ``i``,
    the coarse voxels at ``i * (coarse - 1) / (length - 1)`` (linear, aligned corners) or at
    ``floor(i * coarse / length)`` (nearest). All in float32, as PyTorch computes them.

    Returns:
        ``(lower, upper, weight)``: voxel ``i`` is ``(1 - weight[i]) * input[lower[i]] +
        weight[i] * input[upper[i]]`` (for ``'nearest'``, ``upper`` is ``lower`` and the weight
        0).

    Example:
        >>> lower, upper, weight = anisotropy_sources(6, 2.0, "nearest")
        >>> lower.tolist()
        [0, 0, 2, 2, 4, 4]
    """
    coarse = coarse_length(length, factor)
    if coarse == length:
        down = torch.arange(length)
    else:
        scale = torch.tensor(float(length), dtype=torch.float32) / coarse
        down = torch.arange(coarse, dtype=torch.float32).mul_(scale).floor_().long()
        down = down.clamp_(max=length - 1)
    positions = torch.arange(length, dtype=torch.float32)
    if interpolation == "nearest":
        if length == 2 * coarse:
            up = torch.arange(length) >> 1
        else:
            scale = torch.tensor(float(coarse), dtype=torch.float32) / length
            up = positions.mul_(scale).floor_().long().clamp_(max=coarse - 1)
        lower = down[up]
        return lower, lower, torch.zeros(length, dtype=torch.float32)
    scale = (
        torch.tensor(float(coarse - 1), dtype=torch.float32) / (length - 1)
        if length > 1
        else torch.tensor(0.0)
    )
    real = positions.mul_(scale)
    low = real.floor().long().clamp_(max=coarse - 1)
    weight = (real - low.to(torch.float32)).clamp_(0, 1)
    high = low + (low < coarse - 1).long()
    return down[low], down[high], weight


class ResampleAxis(IntensityOperation):
    """Downsample along ``axis`` by ``factor`` and back (:func:`anisotropy_sources`): each
    voxel from two voxels along that axis, computed from the region grown along it by the
    farthest source's distance."""

    def __init__(
        self, selection: Selection, axis: int, length: int, factor: float, interpolation: str
    ) -> None:
        super().__init__(selection)
        self.axis, self.factor, self.interpolation = axis, factor, interpolation
        self.lower, self.upper, weight = anisotropy_sources(length, factor, interpolation)
        self.linear = bool((weight > 0).any())
        shape = [1, 1, 1, 1]
        shape[axis + 1] = -1
        self.weight_lower = (1 - weight).reshape(shape)  # as PyTorch: 1 - lambda, lambda
        self.weight_upper = weight.reshape(shape)
        positions = torch.arange(length)
        distances = torch.maximum((self.lower - positions).abs(), (self.upper - positions).abs())
        margin = [0, 0, 0]
        margin[axis] = int(distances.max())
        self.margin = (margin[0], margin[1], margin[2])

    def evaluate(self, data: torch.Tensor, region: Region, statistics: Any) -> torch.Tensor:
        dimension = self.axis + 1
        indices = region.axes[self.axis]
        # ``data`` holds the region grown by the margin: global voxel g is at g - offset.
        offset = int(indices[0]) - self.margin[self.axis]
        lower = data.index_select(dimension, self.lower[indices] - offset)
        if not self.linear:
            return lower
        upper = data.index_select(dimension, self.upper[indices] - offset)
        weight_lower = self.weight_lower.index_select(dimension, indices)
        weight_upper = self.weight_upper.index_select(dimension, indices)
        return lower.mul_(weight_lower).addcmul_(upper, weight_upper)


def _of_kind(selection: Selection, kind: type[Image]) -> Selection:
    """``selection`` narrowed to the images of ``kind``."""
    kinds = tuple(each for each in selection.kinds if issubclass(each, kind))
    return Selection(kinds, selection.include, selection.exclude)


class Anisotropy(_Intensity):
    """Simulate a low-resolution acquisition along one axis: downsample and upsample back
    (TorchIO 2.0's ``Anisotropy``).

    One of ``axes`` is chosen at random, and a factor ``m`` drawn from ``downsampling`` (below 1
    counts as 1), once per subject. Along that axis the volume is resampled to ``max(1,
    round(n / m))`` voxels by nearest neighbour, then back to ``n`` voxels, as TorchIO 2.0 does
    it with ``torch.nn.functional.interpolate``: trilinearly with aligned corners for scalar
    images (or by nearest neighbour), by nearest neighbour for label maps (which TorchIO 2.0
    resamples too; TorchIO 1.x's ``RandomAnisotropy`` leaves them alone by default). The coarse
    grid spans the whole volume, so a voxel's value comes from at most ``2.5 m`` voxels away
    along the axis: a patch is computed from its voxels and that many around it, and is the
    whole result cropped, exactly.

    TorchIO 1.x resamples with SimpleITK instead, to a coarse grid of ``floor(n / m)`` voxels
    centred on the volume, and leaves a voxel beyond that grid's extent 0; the values differ.

    Args:
        axes: the spatial axes to choose from (0, 1, 2).
        downsampling: the factor ``m``: a number, or a range ``(a, b)`` drawn from uniformly;
            >= 0, the upper bound >= 1. (TorchIO 2.0's default, 1, does nothing.)
        image_interpolation: ``'linear'`` or ``'nearest'``: how scalar images are upsampled.
        p: the probability that the transform is applied.
        include: names of the images to apply it to (default: all, label maps included).
        exclude: names of images to leave alone.

    Example:
        >>> import torch, shmqueue as sq
        >>> data = torch.arange(8.0).reshape(1, 8, 1, 1)
        >>> subject = sq.Subject(t1=sq.ScalarImage(data))
        >>> low = sq.Anisotropy(axes=(0,), downsampling=2, image_interpolation="nearest")
        >>> low(subject).t1.data.flatten().tolist()
        [0.0, 0.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0]
    """

    kinds = (ScalarImage, LabelMap)

    def __init__(
        self,
        axes: int | Sequence[int] = (0, 1, 2),
        downsampling: Number | Sequence[Number] = (1.5, 5),
        image_interpolation: str = "linear",
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        listed = (axes,) if isinstance(axes, int) else tuple(axes)
        if not listed or any(axis not in (0, 1, 2) for axis in listed):
            raise ValueError(
                f"Anisotropy axes must be among the spatial axes 0, 1, 2; got {axes!r}"
            )
        self.axes = listed
        self.downsampling = ValueRange.parse(downsampling, "Anisotropy downsampling")
        self.downsampling.check_at_least(0.0, "Anisotropy downsampling")
        if self.downsampling.bounds[1] < 1:
            raise ValueError(
                "Anisotropy downsampling's upper bound must be >= 1, got"
                f" {self.downsampling.bounds}"
            )
        if image_interpolation not in ("linear", "nearest"):
            raise ValueError(
                f"image_interpolation must be 'linear' or 'nearest', got {image_interpolation!r}"
            )
        self.image_interpolation = image_interpolation

    def _ranges(self) -> tuple[ValueRange | AxisRange, ...]:
        return (self.downsampling,)

    @property
    def is_random(self) -> bool:
        return super().is_random or len(self.axes) > 1

    @property
    def locality(self) -> Locality:
        """A resampling along one axis: voxels come from up to ``2.5 m`` voxels away."""
        return Locality(math.ceil(2.5 * self.downsampling.bounds[1]) + 1, moves_voxels=True)

    def operations(self, images: SubjectSpec, generator: torch.Generator) -> list[Operation]:
        if len(self.axes) == 1:
            axis = self.axes[0]
        else:
            axis = self.axes[int(torch.randint(len(self.axes), (), generator=generator))]
        factor = max(1.0, self.downsampling.draw(generator))
        length = grid_of(images).spatial_shape[axis]
        if coarse_length(length, factor) == length:
            return []  # the coarse grid is the volume's: nothing changes
        operations: list[Operation] = []
        for kind, interpolation in (
            (ScalarImage, self.image_interpolation),
            (LabelMap, "nearest"),
        ):
            selection = _of_kind(self.selection, kind)
            if selection.kinds:
                operations.append(ResampleAxis(selection, axis, length, factor, interpolation))
        return operations
