"""Intensity transforms of scalar images: :class:`ZNormalization`, :class:`RescaleIntensity`,
:class:`Clamp` and :class:`Mask`, with TorchIO 1.2.1's arguments and results.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..reductions import mean_and_std
from ..specs import (
    ImageSpec,
    Locality,
)
from ..subject import Subject
from .base import (
    MaskingMethod,
    _GridPreserving,
    _Masked,
    _selected,
)


class ZNormalization(_Masked):
    """Subtract the mean and divide by the standard deviation of each scalar image's voxels
    (all channels together, as TorchIO does), or of those in ``masking_method``'s mask.

    Unlike TorchIO, which raises, an image whose selected voxels are all equal is only centred.

    Args:
        masking_method: the voxels whose statistics are used (see :mod:`shmqueue.preprocessing`);
            None for all.
        p: probability of applying the transform.
        include: names of the only images to transform.
        exclude: names of images not to transform.

    Example:
        >>> import torch, shmqueue as sq
        >>> t1 = torch.tensor([1.0, 2.0, 3.0, 100.0]).reshape(1, 4, 1, 1)
        >>> brain = sq.LabelMap(torch.tensor([1, 1, 1, 0]).reshape(1, 4, 1, 1))
        >>> subject = sq.Subject(t1=sq.ScalarImage(t1), brain=brain)
        >>> sq.ZNormalization(masking_method="brain")(subject).t1.data.flatten().tolist()
        [-1.0, 0.0, 1.0, 98.0]
    """

    def _transform(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor:
        values = _selected(data, self._mask(subject, name, data), name)
        mean, std = mean_and_std(values)
        centred = data - mean
        return centred.div_(std) if std > 0 else centred

    @property
    def _masked_locality(self) -> Locality:
        return Locality(0, statistics=True)

    def _working_bytes(self, spec: ImageSpec) -> int:
        """The mask and the voxels it selects (a copy); without a mask, nothing: the statistics
        are reductions and the new volume is divided in place."""
        return self._mask_bytes(spec) + (0 if self.masking_method is None else spec.nbytes)


class RescaleIntensity(_Masked):
    """Map each scalar image's intensities linearly from ``in_min_max`` onto ``out_min_max``.

    The image is first clipped to the ``percentiles`` of its voxels (of those in
    ``masking_method``'s mask); ``in_min_max`` defaults to the clipped image's minimum and
    maximum. A CT window: ``RescaleIntensity((-1, 1), in_min_max=(-1000, 1000))``. Unlike
    TorchIO, which warns and leaves the image as it was, a constant image becomes ``out_min``
    everywhere, and an empty mask is refused.

    Args:
        out_min_max: the output range.
        percentiles: the input percentiles (in [0, 100]) to clip the image to.
        masking_method: the voxels whose percentiles are used (see
            :mod:`shmqueue.preprocessing`); None for all.
        in_min_max: the input range mapped onto ``out_min_max`` (values outside it map outside
            ``out_min_max``); None for the clipped image's minimum and maximum.
        p: probability of applying the transform.
        include: names of the only images to transform.
        exclude: names of images not to transform.

    Example:
        >>> import torch, shmqueue as sq
        >>> ct = sq.ScalarImage(torch.tensor([-2000.0, -1000.0, 0.0, 500.0]).reshape(1, 4, 1, 1))
        >>> window = sq.RescaleIntensity((-1, 1), in_min_max=(-1000, 1000))
        >>> window(sq.Subject(ct=ct)).ct.data.flatten().tolist()
        [-2.0, -1.0, 0.0, 0.5]
    """

    def __init__(
        self,
        out_min_max: tuple[float, float] = (0.0, 1.0),
        percentiles: tuple[float, float] = (0.0, 100.0),
        in_min_max: tuple[float, float] | None = None,
        masking_method: MaskingMethod = None,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(masking_method, p, include, exclude)
        self.out_min_max = _increasing(out_min_max, "out_min_max")
        low, high = _increasing(percentiles, "percentiles", strict=False)
        if not 0 <= low <= high <= 100:
            raise ValueError(f"percentiles must lie in [0, 100], got {percentiles}")
        self.percentiles = (low, high)
        self.in_min_max = None if in_min_max is None else _increasing(in_min_max, "in_min_max")

    def _transform(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor:
        values = _selected(data, self._mask(subject, name, data), name)
        if self.percentiles == (0.0, 100.0):
            low, high = values.min().item(), values.max().item()
        else:  # numpy's percentiles, as TorchIO's (torch.quantile refuses large inputs)
            low, high = np.percentile(values.numpy(), self.percentiles).tolist()
        clipped = data.clamp(low, high)
        if self.in_min_max is None:
            in_min, in_max = clipped.min().item(), clipped.max().item()
        else:
            in_min, in_max = self.in_min_max
        out_min, out_max = self.out_min_max
        if in_max == in_min:
            return clipped.fill_(out_min)
        return clipped.sub_(in_min).div_(in_max - in_min).mul_(out_max - out_min).add_(out_min)

    def _working_bytes(self, spec: ImageSpec) -> int:
        """The mask, the voxels it selects and numpy's partitioned copy of them."""
        selecting = self.masking_method is not None or self.percentiles != (0.0, 100.0)
        return self._mask_bytes(spec) + (2 * spec.nbytes if selecting else 0)

    @property
    def _masked_locality(self) -> Locality:
        return Locality(0, statistics=True)


def _increasing(bounds: tuple[float, float], name: str, strict: bool = True) -> tuple[float, float]:
    low, high = (float(value) for value in bounds)
    if not (low < high if strict else low <= high):
        raise ValueError(f"{name} must be increasing, got {bounds}")
    return low, high


class Clamp(_GridPreserving):
    """Clamp each scalar image's intensities into ``[out_min, out_max]`` (``torch.clamp``).

    Args:
        out_min: the lowest output value; None for no lower bound.
        out_max: the highest output value; None for no upper bound.
        p: probability of applying the transform.
        include: names of the only images to transform.
        exclude: names of images not to transform.

    Example:
        >>> import torch, shmqueue as sq
        >>> ct = sq.ScalarImage(torch.tensor([-3000.0, 0.0, 2000.0]).reshape(1, 3, 1, 1))
        >>> sq.Clamp(-1000, 1000)(sq.Subject(ct=ct)).ct.data.flatten().tolist()
        [-1000.0, 0.0, 1000.0]
    """

    def __init__(
        self,
        out_min: float | None = None,
        out_max: float | None = None,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        if out_min is None and out_max is None:
            raise ValueError("Clamp needs out_min, out_max or both")
        if out_min is not None and out_max is not None and out_min > out_max:
            raise ValueError(f"Clamp's out_min {out_min} is above its out_max {out_max}")
        self.out_min = out_min
        self.out_max = out_max

    def _transform(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor:
        return data.clamp(self.out_min, self.out_max)


class Mask(_Masked):
    """Set each scalar image's voxels outside a mask to ``outside_value``.

    Args:
        masking_method: the voxels to keep (see :mod:`shmqueue.preprocessing`).
        outside_value: the value of every other voxel.
        labels: with a label map as the mask, the labels to keep; None for every non-zero label.
        p: probability of applying the transform.
        include: names of the only images to transform.
        exclude: names of images not to transform.

    Example:
        >>> import torch, shmqueue as sq
        >>> t1 = sq.ScalarImage(torch.tensor([5.0, 6.0, 7.0]).reshape(1, 3, 1, 1))
        >>> brain = sq.LabelMap(torch.tensor([0, 1, 2]).reshape(1, 3, 1, 1))
        >>> sq.Mask("brain", labels=[2])(sq.Subject(t1=t1, brain=brain)).t1.data.flatten()
        tensor([0., 0., 7.])
    """

    def __init__(
        self,
        masking_method: MaskingMethod,
        outside_value: float = 0.0,
        labels: Sequence[int] | None = None,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(masking_method, p, include, exclude)
        self.outside_value = outside_value
        self.labels = None if labels is None else [int(label) for label in labels]

    def _label_mask(self, labels: torch.Tensor) -> torch.Tensor:
        if self.labels is None:
            return labels != 0
        return torch.isin(labels, torch.tensor(self.labels, dtype=labels.dtype))

    def _transform(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor:
        mask = self._mask(subject, name, data)
        if mask is None:
            return data.clone()
        return data.masked_fill(~mask, self.outside_value)

    def _working_bytes(self, spec: ImageSpec) -> int:
        """The mask and its complement."""
        return 2 * self._mask_bytes(spec)
