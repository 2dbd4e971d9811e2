"""What the preprocessing transforms share: applying to chosen images of the subject while keeping
their grid (:class:`_GridPreserving`), and selecting voxels by a ``masking_method``
(:class:`_Masked`; see the package's description).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..image import Image, LabelMap, ScalarImage
from ..specs import (
    VOXELWISE,
    WHOLE_VOLUME,
    ImageSpec,
    Locality,
    SubjectSpec,
    Unknown,
    VolumeCost,
)
from ..subject import Subject
from ..transforms import Transform

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
    draws = False

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
