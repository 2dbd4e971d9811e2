"""Samplers driven by a probability map: WeightedSampler and LabelSampler.

The map gives, for each voxel, the (unnormalised) probability that a patch is centred there. The
centre of a patch of size ``s`` starting at ``i`` is ``i + s // 2``; voxels too close to the border
to centre a whole patch get probability zero.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..errors import SamplingError
from ..image import LabelMap
from ..specs import ImageSpec, SubjectSpec
from ..subject import Subject
from .base import (
    MAP_DRAW_BYTES,
    PatchLocation,
    PatchSampler,
    spatial_voxels,
    torchio1_arguments,
)


def _draw_from_map(
    sampler: PatchSampler,
    probability: torch.Tensor,
    subject: Subject,
    map_description: str,
    num_patches: int,
    generator: torch.Generator,
) -> list[PatchLocation]:
    """Draw locations whose centres follow ``probability`` (X, Y, Z), with replacement."""
    sampler.check_fits(subject)
    size = sampler.patch_size
    shape = probability.shape
    # Restrict to the centres whose patch fits; a location's index is then the cropped coordinate.
    valid = probability[tuple(slice(s // 2, n - s + s // 2 + 1) for s, n in zip(size, shape))].to(
        torch.float64
    )
    if bool((valid < 0).any()):
        raise SamplingError(
            f"The {map_description} of {subject.describe()} has negative values; probabilities"
            " must be >= 0."
        )
    cumulative = valid.reshape(-1).cumsum(0)
    total = float(cumulative[-1])
    if not total > 0:
        raise SamplingError(
            f"The {map_description} of {subject.describe()} is zero everywhere a patch of size"
            f" {size} can be centred, so no patch can be drawn. Check the map (or the labels), or"
            " sample this subject with a UniformSampler."
        )
    draws = torch.rand(num_patches, generator=generator, dtype=torch.float64) * total
    flat = torch.searchsorted(cumulative, draws, right=True).clamp_(max=cumulative.numel() - 1)
    cropped_shape = valid.shape
    locations = []
    for position in flat.tolist():
        i, rest = divmod(position, cropped_shape[1] * cropped_shape[2])
        j, k = divmod(rest, cropped_shape[2])
        locations.append(PatchLocation((i, j, k), size))
    return locations


class WeightedSampler(PatchSampler):
    """Draw patches centred according to a probability-map image of the subject.

    Args:
        subject: optional subject, as for every sampler; TorchIO 1.x's
            ``WeightedSampler(patch_size, probability_map)`` works too.
        patch_size: an int or three ints.
        probability_map: the name of the subject's image holding the (unnormalised) map.
    """

    def __init__(
        self,
        subject: Subject | int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] | str | None = None,
        probability_map: str | None = None,
        num_patches: int | None = None,
    ) -> None:
        bound, (size, name, count) = torchio1_arguments(
            subject, [patch_size, probability_map, num_patches]
        )
        if not isinstance(name, str):
            raise TypeError(
                "WeightedSampler needs probability_map, the name of the subject's image holding"
                f" the map; got {name!r}"
            )
        self.probability_map = name
        self._bind(bound, size, count)

    def locations(
        self, subject: Subject, num_patches: int, generator: torch.Generator
    ) -> list[PatchLocation]:
        if self.probability_map not in subject.images:
            raise SamplingError(
                f"{subject.describe()} has no image named '{self.probability_map}' to use as"
                f" probability map; its images are {list(subject.images)}."
            )
        data = subject.images[self.probability_map].data
        probability = data.to(torch.float32).sum(dim=0)
        description = f"probability map '{self.probability_map}'"
        return _draw_from_map(self, probability, subject, description, num_patches, generator)

    def whole_images(self, images: SubjectSpec) -> list[str]:
        """The probability map."""
        return [self.probability_map] if self.probability_map in images else []

    def memory_cost(self, images: SubjectSpec) -> int:
        """The map summed over channels (after a float32 copy of a map of another dtype), or
        the draw from it, whichever is larger."""
        voxels = spatial_voxels(images)
        image = images.get(self.probability_map)
        converted = 0 if image is None or image.dtype.itemsize == 4 else 4 * image.channels * voxels
        return max(converted + 4 * voxels, MAP_DRAW_BYTES * voxels)


class LabelSampler(PatchSampler):
    """Draw patches centred on labelled voxels.

    Args:
        subject: optional subject, as for every sampler.
        patch_size: an int or three ints.
        label_name: the name of the subject's :class:`~shmqueue.LabelMap`; ``None``: the
            subject's first LabelMap (as in TorchIO 1.x).
        label_probabilities: ``{label: probability}`` of centring a patch on each label. ``None``
            centres patches uniformly on the foreground (label > 0). Multi-channel label maps are
            read as one-hot: channel ``c`` is label ``c``.

    TorchIO 1.x's ``LabelSampler(patch_size, label_name, label_probabilities)`` works too.

    Raises:
        SamplingError: a label named in ``label_probabilities`` is absent from a subject, or no
            labelled voxel can centre a patch.
    """

    def __init__(
        self,
        subject: Subject | int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] | str | None = None,
        label_name: str | Mapping[int, float] | None = None,
        label_probabilities: Mapping[int, float] | None = None,
        num_patches: int | None = None,
    ) -> None:
        bound, (size, name, probabilities, count) = torchio1_arguments(
            subject, [patch_size, label_name, label_probabilities, num_patches]
        )
        if name is not None and not isinstance(name, str):
            raise TypeError(f"label_name must be the name of a LabelMap, got {name!r}")
        if probabilities is not None and any(p < 0 for p in probabilities.values()):
            raise ValueError(f"label_probabilities must be >= 0, got {probabilities}")
        self.label_name: str | None = name
        self.label_probabilities = None if probabilities is None else dict(probabilities)
        self._bind(bound, size, count)

    def locations(
        self, subject: Subject, num_patches: int, generator: torch.Generator
    ) -> list[PatchLocation]:
        label_name = self._label_name(subject.images)
        image = subject.images.get(label_name) if label_name is not None else None
        if not isinstance(image, LabelMap):
            wanted = "no LabelMap" if label_name is None else f"no LabelMap named '{label_name}'"
            raise SamplingError(
                f"{subject.describe()} has {wanted}; its images are"
                f" {[f'{n} ({type(i).__name__})' for n, i in subject.images.items()]}."
            )
        data = image.data
        labels = data.argmax(dim=0) if data.shape[0] > 1 else data[0]
        if self.label_probabilities is None:
            probability = (labels > 0).to(torch.float32)
        else:
            probability = torch.zeros(labels.shape, dtype=torch.float32)
            counts = torch.bincount(labels.reshape(-1).to(torch.int64).clamp(min=0))
            absent = [
                label
                for label in self.label_probabilities
                if label >= len(counts) or counts[label] == 0
            ]
            if absent:
                present = torch.nonzero(counts).reshape(-1).tolist()
                raise SamplingError(
                    f"label_probabilities names labels {absent} that are absent from the label"
                    f" map '{label_name}' of {subject.describe()}; labels present:"
                    f" {present}. Remove them or check the label map."
                )
            for label, weight in self.label_probabilities.items():
                mask = labels == label
                probability[mask] = weight / float(counts[label])
        description = f"label map '{label_name}'"
        return _draw_from_map(self, probability, subject, description, num_patches, generator)

    def whole_images(self, images: SubjectSpec) -> list[str]:
        """The label map."""
        label_name = self._label_name(images)
        return [] if label_name is None or label_name not in images else [label_name]

    def memory_cost(self, images: SubjectSpec) -> int:
        """The draw from the label probability map, after an int64 argmax over the channels of a
        multi-channel (one-hot) label map."""
        voxels = spatial_voxels(images)
        label_name = self._label_name(images)
        image = None if label_name is None else images.get(label_name)
        argmax = 8 * voxels if image is not None and image.channels > 1 else 0
        return argmax + MAP_DRAW_BYTES * voxels

    def _label_name(self, images: Mapping[str, object]) -> str | None:
        """``label_name``, or else the name of the first label map among ``images`` (images or
        their descriptions), if any."""
        if self.label_name is not None:
            return self.label_name
        for name, image in images.items():
            kind = image.kind if isinstance(image, ImageSpec) else type(image)
            if isinstance(kind, type) and issubclass(kind, LabelMap):
                return name
        return None
