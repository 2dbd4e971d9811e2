"""The patch-sampler contract: where patches go (:class:`PatchLocation`) and how they are cut.

A sampler's core is :meth:`PatchSampler.locations`: given a (loaded, transformed) subject, a patch
count and a generator, it returns where the patches are. Cutting is separate
(:func:`extract_patch`), so the engine's workers can copy each region straight into a
shared-memory slot and the in-process path can make patch Subjects; both cut the same regions.
A sampler also states its working memory (:meth:`PatchSampler.memory_cost`) from the subject's
description, for the memory estimator.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch

from ..errors import PatchSizeError
from ..specs import SubjectSpec
from ..subject import Subject
from ..transforms import fresh_generator

Triple = tuple[int, int, int]

PATCH_LOCATION_KEY = "patch_location"

MAP_DRAW_BYTES = 4 + 8 + 8 + 1
"""Bytes per voxel of drawing patch centres from a probability map: the float32 map, its
float64 copy restricted to the valid centres, their cumulative sum, and the test for negative
values."""


def as_patch_size(patch_size: int | Sequence[int]) -> Triple:
    """Normalise ``64`` or ``(64, 64, 1)`` to a 3-tuple of positive ints."""
    size = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(int(s) for s in patch_size)
    if len(size) != 3 or any(s < 1 for s in size):
        raise ValueError(
            f"patch_size must be a positive int or 3 positive ints, got {patch_size!r}"
        )
    return (size[0], size[1], size[2])


class PatchLocation(NamedTuple):
    """Where a patch lies in its subject: the first voxel ``index`` and the ``size``, in voxels.

    A NamedTuple, not a frozen dataclass, because it travels in batches: libraries that move a
    batch to a device rebuild every container in it (PyTorch Lightning's ``apply_to_collection``
    refuses frozen dataclasses, and rebuilds NamedTuples).
    """

    # Shadows tuple.index(value), which nothing asks of a location.
    index: Triple  # type: ignore[assignment]
    size: Triple

    def to_slices(self) -> tuple[slice, slice, slice]:
        """Spatial slices: ``image.data[(slice(None), *location.to_slices())]`` is the patch."""
        i, j, k = (slice(start, start + length) for start, length in zip(self.index, self.size))
        return (i, j, k)

    @property
    def stop(self) -> Triple:
        i, j, k = (start + length for start, length in zip(self.index, self.size))
        return (i, j, k)


def spatial_voxels(images: SubjectSpec) -> int:
    """The spatial voxels of a subject's images (which share their grid)."""
    return next(iter(images.values())).voxels


def extract_patch(subject: Subject, location: PatchLocation) -> Subject:
    """A patch Subject: copied image regions (affines shifted), the metadata and the location."""
    patch = {
        name: image.crop(location.index, location.size) for name, image in subject.images.items()
    }
    return Subject({**subject.metadata, **patch, PATCH_LOCATION_KEY: location})


def torchio1_arguments(first: Any, later: Sequence[Any]) -> tuple[Subject | None, list[Any]]:
    """A sampler's arguments in either call form: ``(subject, patch_size, ...)`` (2.0) or, when
    the first argument is not a Subject, TorchIO 1.x's ``(patch_size, ...)``.

    ``later`` holds the values bound to the parameters after ``subject`` (``patch_size`` first).
    In a 1.x call the arguments given by position sit one parameter early, and those given by
    keyword where they belong; a 1.x call passes its leading arguments by position, so the
    leading non-None values are shifted one parameter on. Returns the subject (None in 1.x) and
    the values of the parameters after it.

    Example:
        >>> torchio1_arguments(64, ["seg", None, {1: 1.0}, None])  # LabelSampler(64, "seg", ...)
        (None, [64, 'seg', {1: 1.0}, None])
    """
    if first is None or isinstance(first, Subject):
        return first, list(later)
    given = next((number for number, value in enumerate(later) if value is None), len(later))
    if given == len(later):
        raise TypeError(
            f"Too many positional arguments for a sampler built from a patch size ({first!r})"
            " without a subject, as in TorchIO 1.x: pass the later ones by keyword."
        )
    return None, [first, *later[:given], *later[given + 1 :]]


class PatchSampler:
    """Base class of samplers: ``sampler(subject, num_patches, generator)`` yields patch Subjects.

    TorchIO 1.x's form, from the patch size alone (``UniformSampler(64)``), works too: the first
    argument is the subject only if it is a :class:`~shmqueue.Subject` (or None).

    Args:
        subject: optional subject to check the patch size against now and to draw from when the
            sampler itself is iterated; the queue calls the sampler on each of its subjects.
        patch_size: an int for cubes, or three ints.
        num_patches: how many patches iterating the sampler yields (``None``: endless).
    """

    def __init__(
        self,
        subject: Subject | int | Sequence[int] | None = None,
        patch_size: int | Sequence[int] | None = None,
        num_patches: int | None = None,
    ) -> None:
        bound, (size, count) = torchio1_arguments(subject, [patch_size, num_patches])
        self._bind(bound, size, count)

    def _bind(
        self, subject: Subject | None, patch_size: int | Sequence[int] | None, num_patches: Any
    ) -> None:
        """Set the arguments every sampler has and check the patch fits the subject, if any."""
        if patch_size is None:
            raise TypeError(f"{type(self).__name__} needs a patch_size")
        self.patch_size = as_patch_size(patch_size)
        self.subject = subject
        self.num_patches = num_patches
        if subject is not None:
            self.check_fits(subject)

    def prepare(self, subject: Subject) -> Subject:
        """Adapt a subject before sampling (the grid sampler pads); the default keeps it."""
        return subject

    def max_patches(self, spatial_shape: Triple) -> int | None:
        """How many patches the sampler can draw from a volume of this (unprepared) spatial shape.

        ``None`` means unlimited (random samplers); finite samplers such as the grid give a count,
        which the queue uses to plan an epoch from headers alone.
        """
        return None

    def locations(
        self, subject: Subject, num_patches: int, generator: torch.Generator
    ) -> list[PatchLocation]:
        """Where ``num_patches`` patches lie in a prepared subject, drawn from ``generator``."""
        raise NotImplementedError

    def __call__(
        self,
        subject: Subject,
        num_patches: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[Subject]:
        generator = fresh_generator() if generator is None else generator
        prepared = self.prepare(subject)
        count = num_patches if num_patches is not None else self.max_patches(subject.spatial_shape)
        while True:
            batch = 1 if count is None else count
            for location in self.locations(prepared, batch, generator):
                yield extract_patch(prepared, location)
            if count is not None:
                return

    def __iter__(self) -> Iterator[Subject]:
        if self.subject is None:
            raise TypeError(f"{type(self).__name__} was built without a subject to iterate over")
        return self(self.subject, self.num_patches)

    def check_fits(self, subject: Subject, transformed: Triple | None = None) -> None:
        """Raise :class:`PatchSizeError` if the patch is larger than the volume on any axis.

        Args:
            subject: the subject, named in the message.
            transformed: its spatial shape after the transform, if that is not its headers'
                (the queue's prediction); None for the headers'.
        """
        after = "" if transformed is None else " after the transform"
        shape = self.prepare_shape(subject.spatial_shape if transformed is None else transformed)
        too_large = [axis for axis in range(3) if self.patch_size[axis] > shape[axis]]
        if too_large:
            raise PatchSizeError(
                f"The patch size {self.patch_size} is larger than the volume {shape} of"
                f" {subject.describe()}{after} along axis {too_large}. Use a smaller patch_size,"
                " or pad the images to at least the patch size first (in the files, or in the"
                " transform with a deterministic step whose output_spec states the padded"
                " shape), or use GridSampler(padding_mode=...) for inference."
            )

    def prepare_shape(self, spatial_shape: Triple) -> Triple:
        """The spatial shape after :meth:`prepare` (known from the header alone)."""
        return spatial_shape

    def whole_images(self, images: SubjectSpec) -> list[str]:
        """The images whose every voxel it reads to prepare the subject and draw locations
        (given the transformed subject's description): a deferred augmentation computes those
        on the whole volume, the others only at the patches. The base class answers for a
        sampler it knows nothing of: all of them."""
        return list(images)

    def memory_cost(self, images: SubjectSpec) -> int:
        """Bytes the sampler holds beyond the subject while it prepares it and draws locations,
        given the (transformed) subject's description.

        The base class answers for a sampler it knows nothing of: as much as drawing from a
        probability map made by an argmax over channels (an int64 volume). Subclasses that
        know better say so.
        """
        return (MAP_DRAW_BYTES + 8) * spatial_voxels(images)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(patch_size={self.patch_size})"
