"""Label-map edits: :class:`RemapLabels`, :class:`RemoveLabels`, :class:`SequentialLabels` and
:class:`OneHot`, with TorchIO 1.2.1's arguments and results; a label map keeps its integer
dtype, and a label it cannot hold is refused rather than wrapped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch

from ..image import LabelMap
from ..specs import (
    UNKNOWN,
    ImageSpec,
    Locality,
    SubjectSpec,
    Unknown,
    VolumeCost,
)
from ..subject import Subject
from .base import (
    _BOOL_BYTES,
    MaskingMethod,
    _GridPreserving,
    _Masked,
)


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


# Transforms that change the grid -----------------------------------------------------------------
