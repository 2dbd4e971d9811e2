"""Preprocessing and label transforms that keep every image's grid: TorchIO's intensity
normalisations (:class:`ZNormalization`, :class:`RescaleIntensity`), :class:`Clamp`,
:class:`Mask`, the label-map edits :class:`RemapLabels`, :class:`RemoveLabels` and
:class:`SequentialLabels`, and :class:`OneHot`.

They have TorchIO 1.2.1's names, arguments and results, and none is random: they form the
deterministic part of a pipeline. Each keeps every image's shape, affine and dtype, and all but
:class:`OneHot` its channels (scalar images are float32 in shmqueue, as TorchIO makes them; a
label map keeps its integer dtype, and a label it cannot hold is refused rather than wrapped).

Like TorchIO's, they take ``include`` or ``exclude`` (image names) and, where TorchIO does, a
``masking_method``: None (every voxel), the name of a label map of the subject (its non-zero
voxels), an anatomical half (``'Left'``, ``'Right'``, ``'Posterior'``, ``'Anterior'``,
``'Inferior'``, ``'Superior'``, of an image taken to be in RAS orientation), or a callable
``tensor -> bool tensor`` given the image's data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from .image import Image, LabelMap, ScalarImage
from .specs import (
    UNKNOWN,
    VOXELWISE,
    WHOLE_VOLUME,
    ImageSpec,
    Locality,
    SubjectSpec,
    Unknown,
    VolumeCost,
)
from .subject import Subject
from .transforms import Transform

MaskingMethod = str | Callable[[torch.Tensor], torch.Tensor] | None
"""What selects the voxels a transform uses or changes (see the module's description)."""

_ANATOMICAL_HALVES = {
    # axis of (C, X, Y, Z), and whether the half is the upper one (RAS: X grows to the right...)
    "Left": (1, False),
    "Right": (1, True),
    "Posterior": (2, False),
    "Anterior": (2, True),
    "Inferior": (3, False),
    "Superior": (3, True),
}

_BOOL_BYTES = torch.bool.itemsize


class _GridPreserving(Transform):
    """A deterministic transform of some images of one kind that keeps their grid (and, unless
    a subclass says otherwise, their description); ``include`` or ``exclude`` choose the images
    by name, as in TorchIO."""

    kind: type[Image] = ScalarImage

    def __init__(
        self,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p)
        if include is not None and exclude is not None:
            raise ValueError("Give include or exclude, not both")
        for names in (include, exclude):
            if isinstance(names, str):
                raise TypeError(f"include and exclude are sequences of names, got {names!r}")
        self.include = None if include is None else list(include)
        self.exclude = None if exclude is None else list(exclude)

    def _chosen(self, name: str, kind: type[Image]) -> bool:
        if not issubclass(kind, self.kind):
            return False
        if self.include is not None:
            return name in self.include
        return self.exclude is None or name not in self.exclude

    def _chosen_specs(self, images: SubjectSpec) -> dict[str, ImageSpec]:
        return {name: spec for name, spec in images.items() if self._chosen(name, spec.kind)}

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        # In order, each seeing the images changed before it (a label map that masks a later
        # one is read as changed), as TorchIO does.
        for name in list(subject.images):
            image = subject.images[name]
            if self._chosen(name, type(image)):
                subject[name] = image.with_data(self._transform(subject, name, image.data))
        return subject

    def _transform(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor:
        """The image's new data, a new tensor (``data`` is never written into)."""
        raise NotImplementedError

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """The input's: voxel values change, nothing else does."""
        return dict(images)

    @property
    def is_random(self) -> bool:
        return self.p < 1.0

    @property
    def locality(self) -> Locality:
        return VOXELWISE

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        return [
            VolumeCost(name, spec.nbytes + self._working_bytes(spec), spec.nbytes)
            for name, spec in self._chosen_specs(images).items()
        ]

    def _working_bytes(self, spec: ImageSpec) -> int:
        """What one image's transform holds beside its new volume, at the peak."""
        return 0


class _Masked(_GridPreserving):
    """A transform whose voxels are chosen by a ``masking_method``."""

    def __init__(
        self,
        masking_method: MaskingMethod = None,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        if not (masking_method is None or callable(masking_method)) and not isinstance(
            masking_method, str
        ):
            raise TypeError(
                "masking_method must be None, the name of a label map, an anatomical half"
                f" or a callable; got {masking_method!r}"
            )
        self.masking_method = masking_method

    def _mask(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor | None:
        """The voxels to use, as a bool tensor shaped like ``data``; None for every voxel."""
        method = self.masking_method
        if method is None:
            return None
        if callable(method):
            mask = torch.as_tensor(method(data)).bool()
        elif isinstance(subject.images.get(method), LabelMap):
            mask = self._label_mask(subject.images[method].data)
        elif method.capitalize() in _ANATOMICAL_HALVES:
            axis, upper = _ANATOMICAL_HALVES[method.capitalize()]
            mask = torch.zeros(data.shape, dtype=torch.bool)
            half = data.shape[axis] // 2
            start, length = (half, data.shape[axis] - half) if upper else (0, half)
            mask.narrow(axis, start, length).fill_(True)
        else:
            raise ValueError(
                f"masking_method {method!r} of {type(self).__name__} is neither a label map of"
                f" the subject ({', '.join(subject.images)}) nor an anatomical half"
                f" ({', '.join(_ANATOMICAL_HALVES)})"
            )
        if mask.shape[1:] != data.shape[1:] or mask.shape[0] not in (1, data.shape[0]):
            raise ValueError(
                f"The mask from masking_method {method!r} has shape {tuple(mask.shape)}, which"
                f" does not fit image {name!r} of shape {tuple(data.shape)}"
            )
        return mask.expand(data.shape)

    def _label_mask(self, labels: torch.Tensor) -> torch.Tensor:
        return labels != 0

    @property
    def locality(self) -> Locality:
        """Voxel by voxel with a label map or no mask; a callable or an anatomical half may
        need the whole image."""
        if self.masking_method is None or self._mask_is_label_map:
            return self._masked_locality
        return WHOLE_VOLUME

    @property
    def _mask_is_label_map(self) -> bool:
        method = self.masking_method
        return isinstance(method, str) and method.capitalize() not in _ANATOMICAL_HALVES

    @property
    def _masked_locality(self) -> Locality:
        return VOXELWISE

    def _mask_bytes(self, spec: ImageSpec) -> int:
        return 0 if self.masking_method is None else spec.channels * spec.voxels * _BOOL_BYTES


def _selected(data: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
    """The voxels of ``data`` in ``mask`` (every voxel without one); refuses an empty mask."""
    if mask is None:
        return data
    values = data[mask]
    if values.numel() == 0:
        raise ValueError(
            f"The mask for image {name!r} is empty: no voxel to compute its statistics from"
        )
    return values


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
        mean, std = values.mean(), values.std()
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


class _LabelEdit(_Masked):
    """A change of label values in label maps, within ``masking_method``'s mask."""

    kind = LabelMap

    def _relabelled(
        self, subject: Subject, name: str, data: torch.Tensor, remapping: Mapping[int, int]
    ) -> torch.Tensor:
        """``data`` with every voxel labelled ``old`` (in the mask) labelled ``remapping[old]``,
        each voxel's old label read from ``data`` (so labels can be swapped)."""
        info = torch.iinfo(data.dtype)
        unfit = sorted({new for new in remapping.values() if not info.min <= new <= info.max})
        if unfit:
            raise ValueError(
                f"{type(self).__name__} cannot write labels {unfit} into label map {name!r}:"
                f" its dtype {data.dtype} holds {info.min} to {info.max}. Store the labels in a"
                " wider integer type."
            )
        relabelled = data.clone()
        mask = self._mask(subject, name, data)
        for old, new in remapping.items():
            if info.min <= old <= info.max:
                where = data == old
                relabelled[where if mask is None else where & mask] = new
        return relabelled

    def _working_bytes(self, spec: ImageSpec) -> int:
        """The mask and two bool volumes (where one label lies, within the mask)."""
        return self._mask_bytes(spec) + 2 * spec.channels * spec.voxels * _BOOL_BYTES


class RemapLabels(_LabelEdit):
    """Relabel label maps: every voxel labelled ``old`` becomes ``remapping[old]``.

    Labels are swapped correctly (``{1: 2, 2: 1}``). A label the map's dtype cannot hold is
    refused with a ValueError rather than wrapped around.

    Args:
        remapping: new label by old label.
        masking_method: the voxels to relabel (see :mod:`shmqueue.preprocessing`); None for all.
        p: probability of applying the transform.
        include: names of the only label maps to relabel.
        exclude: names of label maps not to relabel.

    Example:
        >>> import torch, shmqueue as sq
        >>> seg = sq.LabelMap(torch.tensor([0, 1, 2, 3]).reshape(1, 4, 1, 1))
        >>> sq.RemapLabels({1: 2, 2: 1})(sq.Subject(seg=seg)).seg.data.flatten().tolist()
        [0, 2, 1, 3]
    """

    def __init__(
        self,
        remapping: Mapping[int, int],
        masking_method: MaskingMethod = None,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(masking_method, p, include, exclude)
        self.remapping = {int(old): int(new) for old, new in remapping.items()}

    def _transform(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor:
        return self._relabelled(subject, name, data, self.remapping)


class RemoveLabels(RemapLabels):
    """Relabel the given labels as ``background_label`` in label maps.

    Args:
        labels: the labels to remove.
        background_label: the label they become.
        masking_method: the voxels to relabel (see :mod:`shmqueue.preprocessing`); None for all.
        p: probability of applying the transform.
        include: names of the only label maps to relabel.
        exclude: names of label maps not to relabel.

    Example:
        >>> import torch, shmqueue as sq
        >>> seg = sq.LabelMap(torch.tensor([0, 1, 2, 3]).reshape(1, 4, 1, 1))
        >>> sq.RemoveLabels([1, 3])(sq.Subject(seg=seg)).seg.data.flatten().tolist()
        [0, 0, 2, 0]
    """

    def __init__(
        self,
        labels: Sequence[int],
        background_label: int = 0,
        masking_method: MaskingMethod = None,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        remapping = {int(label): int(background_label) for label in labels}
        super().__init__(remapping, masking_method, p, include, exclude)
        self.labels = [int(label) for label in labels]
        self.background_label = int(background_label)


class SequentialLabels(_LabelEdit):
    """Relabel label maps so that their labels, in increasing order, become 0, 1, 2...

    Labels ``(0, 3, 5)`` become ``(0, 1, 2)``; the lowest label becomes 0 even if it is not 0.

    Args:
        masking_method: the voxels to relabel (see :mod:`shmqueue.preprocessing`); None for all.
        p: probability of applying the transform.
        include: names of the only label maps to relabel.
        exclude: names of label maps not to relabel.

    Example:
        >>> import torch, shmqueue as sq
        >>> seg = sq.LabelMap(torch.tensor([0, 3, 5, 3]).reshape(1, 4, 1, 1))
        >>> sq.SequentialLabels()(sq.Subject(seg=seg)).seg.data.flatten().tolist()
        [0, 1, 2, 1]
    """

    def _transform(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor:
        labels = torch.unique(data).tolist()
        return self._relabelled(subject, name, data, {old: new for new, old in enumerate(labels)})


class OneHot(_GridPreserving):
    """Encode each single-channel label map with one channel per class: channel ``k`` is 1
    where the label is ``k`` and 0 elsewhere, in the label map's dtype (TorchIO's ``OneHot``).

    The grid stays; the channels change, so the queue must know their number before reading any
    voxel to lay out its ring: give ``num_classes``. With ``num_classes=-1`` (the largest label
    plus one, as in ``torch.nn.functional.one_hot``) the number depends on the voxels: the
    output is :data:`~shmqueue.specs.UNKNOWN`, and a queue with workers refuses it when it runs.

    Args:
        num_classes: the number of classes (channels out); -1 for the largest label plus one.
        p: probability of applying the transform.
        include: names of the only label maps to encode.
        exclude: names of label maps not to encode.

    Raises:
        ValueError: when applied, a chosen label map has more than one channel, or a label
            outside ``[0, num_classes)``.

    Example:
        >>> import torch, shmqueue as sq
        >>> seg = sq.LabelMap(torch.tensor([0, 2, 1]).reshape(1, 3, 1, 1))
        >>> sq.OneHot(num_classes=3)(sq.Subject(seg=seg)).seg.data.flatten(1).tolist()
        [[1, 0, 0], [0, 0, 1], [0, 1, 0]]
    """

    kind = LabelMap

    def __init__(
        self,
        num_classes: int = -1,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        if num_classes != -1 and num_classes < 1:
            raise ValueError(f"num_classes must be positive, or -1; got {num_classes}")
        self.num_classes = num_classes

    def _transform(self, subject: Subject, name: str, data: torch.Tensor) -> torch.Tensor:
        if data.shape[0] != 1:
            raise ValueError(
                f"OneHot encodes label maps of one channel, but {name!r} has {data.shape[0]}"
            )
        low, high = int(data.min()), int(data.max())
        classes = high + 1 if self.num_classes == -1 else self.num_classes
        if low < 0 or high >= classes:
            raise ValueError(
                f"OneHot(num_classes={self.num_classes}) cannot encode the labels {low} to"
                f" {high} of {name!r}: they must lie in [0, {classes})"
            )
        encoded = torch.zeros((classes, *data.shape[1:]), dtype=data.dtype)
        return encoded.scatter_(0, data.long(), 1)

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """Each chosen label map with ``num_classes`` channels; unknown for ``num_classes=-1``
        or a chosen label map of several channels (refused when applied)."""
        chosen = self._chosen_specs(images)
        if self.num_classes == -1 or any(spec.channels != 1 for spec in chosen.values()):
            return UNKNOWN
        encoded = {
            name: dataclasses.replace(spec, channels=self.num_classes)
            for name, spec in chosen.items()
        }
        return {**images, **encoded}

    @property
    def locality(self) -> Locality:
        """Voxel by voxel; the largest label first with ``num_classes=-1``."""
        return Locality(0, statistics=self.num_classes == -1)

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """The encoded volume and the labels as int64 (``scatter_``'s index)."""
        costs = []
        for name, spec in self._chosen_specs(images).items():
            classes = max(self.num_classes, 1)  # -1: the number is unknown; at least one
            output = classes * spec.voxels * spec.dtype.itemsize
            index = 0 if spec.dtype == torch.int64 else spec.voxels * torch.int64.itemsize
            costs.append(VolumeCost(name, output + index, output))
        return costs
