"""The catalog: a queue's subjects as their headers describe them, read and checked in one pass.

Built once per queue (and by :func:`shmqueue.estimate_memory` for its configuration) before any
voxel is read, opening each image file once. It holds, for every image, what its header says
(:class:`ImageEntry`); for every subject, how many patches an epoch draws from it
(:func:`patch_count`, the one place that rule lives); and the ring's
:class:`~shmqueue.engine.layout.SlotLayout`. The queue, its planner, the memory estimator and
the testing harness read it instead of the subjects' headers.

What the patches are drawn from is the subject after the transform, so the catalog predicts it
(:func:`predict`): each image's header, passed through what the transform's deterministic
prefix (:func:`~shmqueue.transforms.deterministic_prefix`) says it outputs
(:meth:`~shmqueue.Transform.output_spec`). If a step of the prefix cannot tell, the prefix is
run once on the first subject (:mod:`~shmqueue.probe`) and its images' channels and dtypes are
taken from what it made. The random steps after the prefix are taken to keep the images as
they are; the pipeline refuses at run time an output the ring was not laid out for
(:class:`~shmqueue.errors.TransformOutputError`), never changing a value to fit.

Building it checks every subject on that prediction, naming ``subjects[i]``, the subject and
what to do: it is a :class:`~shmqueue.Subject`, its headers can be read, its images share one
grid, the patch fits it, and it has the images of ``subjects[0]`` with the same channels.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine.layout import SlotLayout
from .errors import ImageFileError, InvalidImageError, SubjectError
from .image import Image, ImageHeader
from .probe import Probed, described_outputs, probe
from .sampling.base import PatchSampler, Triple
from .specs import ImageSpec, SubjectSpec
from .subject import Subject
from .transforms import SubjectTransform, deterministic_prefix


def patch_count(sampler: PatchSampler, spatial_shape: Triple, patches_per_volume: int) -> int:
    """Patches an epoch draws from a subject of this spatial shape: ``patches_per_volume``, or
    fewer when the sampler is finite and has fewer (``sampler.max_patches``, e.g. a grid).

    Example:
        >>> import shmqueue as sq
        >>> patch_count(sq.UniformSampler(None, 8), (16, 16, 16), 10)
        10
        >>> patch_count(sq.GridSampler(None, 8), (16, 16, 16), 10)
        8
    """
    limit = sampler.max_patches(spatial_shape)
    return patches_per_volume if limit is None else min(patches_per_volume, limit)


@dataclass(frozen=True, eq=False)
class ImageEntry:
    """What the catalog knows of one image: its header's facts (no voxel read).

    Attributes:
        name: the image's name in its subject.
        kind: its class (:class:`~shmqueue.ScalarImage`, :class:`~shmqueue.LabelMap`).
        path: its file; None for in-memory data.
        shape: ``(C, X, Y, Z)``.
        dtype: the dtype its data loads as.
        header: the header it was read from: stored dtype, affine, scaling, compression.
    """

    name: str
    kind: type[Image]
    path: Path | None
    shape: tuple[int, int, int, int]
    dtype: torch.dtype
    header: ImageHeader

    @classmethod
    def read(cls, name: str, image: Image) -> ImageEntry:
        """The entry of ``image``, reading its header if it has not been read."""
        return cls(name, type(image), image.path, image.shape, image.dtype, image.header)

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def spatial_shape(self) -> Triple:
        _, x, y, z = self.shape
        return (x, y, z)

    @property
    def voxels(self) -> int:
        """Spatial voxels."""
        _, x, y, z = self.shape
        return x * y * z

    @property
    def affine(self) -> np.ndarray:
        return self.header.affine

    @property
    def stored_dtype(self) -> np.dtype[Any]:
        """The voxels' dtype in the file (for in-memory data, its own)."""
        return self.header.stored_dtype

    @property
    def scaling(self) -> tuple[float, float]:
        """``(slope, intercept)`` applied to the stored voxels as they are read."""
        return self.header.scaling

    @property
    def compressed(self) -> bool:
        return self.header.compressed

    @property
    def in_memory(self) -> bool:
        return self.path is None

    @property
    def raw_bytes(self) -> int:
        """Bytes of the voxels as stored."""
        return self.channels * self.voxels * self.stored_dtype.itemsize

    @property
    def loaded_bytes(self) -> int:
        """Bytes of the voxels as loaded."""
        return self.channels * self.voxels * self.dtype.itemsize

    @functools.cached_property
    def spec(self) -> ImageSpec:
        """The image as a transform sees it before running (spacing: ``spec.spacing``)."""
        return ImageSpec(self.kind, self.channels, self.spatial_shape, self.dtype, self.affine)


@dataclass(frozen=True)
class SubjectEntry:
    """One subject in the catalog.

    Attributes:
        index: its position in the queue's subjects.
        description: ``subject.describe(index)``, for messages.
        images: its images, in the subject's order, as their headers describe them.
        transformed: its images as the transform is predicted to make them, by name
            (:func:`predict`); the headers' descriptions if nothing can be predicted.
        num_patches: patches an epoch draws from it (:func:`patch_count`).
    """

    index: int
    description: str
    images: tuple[ImageEntry, ...]
    transformed: Mapping[str, ImageSpec]
    num_patches: int

    @property
    def spatial_shape(self) -> Triple:
        """The grid the subject's images share after the transform, where patches are drawn."""
        return next(iter(self.transformed.values())).spatial_shape

    @property
    def specs(self) -> dict[str, ImageSpec]:
        """The subject's images as a transform sees them, by name."""
        return {image.name: image.spec for image in self.images}


@dataclass(frozen=True)
class Catalog:
    """A queue's subjects as their headers describe them, with their patch counts and the ring's
    layout; :meth:`build` reads and checks them.

    Attributes:
        subjects: one entry per subject, in order.
        layout: the ring's slot layout: the first subject's images after the transform
            (:func:`predict`) with the channels every subject shares, in a dtype that holds
            every subject's (promoted).
        patches_per_volume: the queue's ``patches_per_volume``.

    Example:
        >>> import torch, shmqueue as sq
        >>> subjects = [sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 12, 12, 4 * size)))
        ...             for size in (1, 2)]
        >>> catalog = Catalog.build(subjects, sq.GridSampler(None, 4), 30, 12)
        >>> catalog.patch_counts, catalog.layout.images
        ((9, 12), {'t1': (1, torch.float32)})
    """

    subjects: tuple[SubjectEntry, ...]
    layout: SlotLayout
    patches_per_volume: int

    @property
    def patch_counts(self) -> tuple[int, ...]:
        """Patches per epoch of each subject, by subject index."""
        return tuple(subject.num_patches for subject in self.subjects)

    @classmethod
    def build(
        cls,
        subjects: Sequence[Subject],
        sampler: PatchSampler,
        max_length: int,
        patches_per_volume: int,
        transform: SubjectTransform | None = None,
    ) -> Catalog:
        """Read every subject's headers once, predict what ``transform`` makes of each subject,
        check the subjects, count their patches and lay out a ring of ``max_length`` slots for
        ``sampler``'s patches, all on that prediction.

        Raises:
            TypeError: an element of ``subjects`` is not a Subject.
            ImageFileError: a header cannot be read (the message names the file).
            InvalidImageError: an image has the wrong number of dimensions.
            SubjectError: a subject's images lie on different grids, or its images or their
                channels differ from ``subjects[0]``'s; :class:`~shmqueue.PatchSizeError` if
                the patch does not fit a subject. Said of the images after the transform when
                part of it was predicted.
        """
        steps = deterministic_prefix(transform)
        entries: list[SubjectEntry] = []
        images: dict[str, tuple[int, torch.dtype]] = {}
        probed: Probed | None = None
        for index, subject in enumerate(subjects):
            if index == 0:
                probed = _probe_first(subject, steps)
            entry, predicted = _read_subject(
                index, subject, sampler, patches_per_volume, steps, probed
            )
            found = {name: (spec.channels, spec.dtype) for name, spec in entry.transformed.items()}
            if not images:
                images = found
            elif _channels(found) != _channels(images):
                raise SubjectError(
                    f"subjects[{index}]: {subject.describe()} has images"
                    f" {_describe_images(found)}{_AFTER if predicted else ''} but subjects[0]"
                    f" has {_describe_images(images)}. Every subject needs the same images with"
                    " the same channels to be batched."
                )
            else:
                images = {
                    name: (channels, torch.promote_types(dtype, found[name][1]))
                    for name, (channels, dtype) in images.items()
                }
            entries.append(entry)
        layout = SlotLayout.build(sampler.patch_size, images, max_length)
        return cls(tuple(entries), layout, patches_per_volume)


_AFTER = " after the transform"


def predict(steps: Sequence[SubjectTransform], images: SubjectSpec) -> dict[str, ImageSpec]:
    """What the deterministic ``steps`` (:func:`~shmqueue.transforms.deterministic_prefix`)
    make of ``images``, as each step says (:meth:`~shmqueue.Transform.output_spec`), up to the
    first whose output cannot be told: that step and the rest are taken to keep the images.

    Example:
        >>> import numpy as np, torch, shmqueue as sq
        >>> seg = ImageSpec(sq.LabelMap, 1, (8, 8, 8), torch.uint8, np.eye(4))
        >>> predict([sq.OneHot(num_classes=3), sq.Lambda(abs)], {"seg": seg})["seg"].channels
        3
    """
    return described_outputs(steps, images)[0]


def _probe_first(subject: Subject, steps: Sequence[SubjectTransform]) -> Probed | None:
    """What the deterministic ``steps`` make of the first subject, run once if one of them
    cannot describe its output (:mod:`~shmqueue.probe`); errors name ``subjects[0]``."""
    if not isinstance(subject, Subject):
        return None  # refused by _read_subject
    try:
        headers = {
            name: ImageEntry.read(name, image).spec for name, image in subject.images.items()
        }
        return probe(subject, subject.describe(0), steps, headers)
    except (SubjectError, ImageFileError, InvalidImageError) as error:
        raise type(error)(f"subjects[0]: {error}") from error


def _read_subject(
    index: int,
    subject: Subject,
    sampler: PatchSampler,
    patches_per_volume: int,
    steps: Sequence[SubjectTransform],
    probed: Probed | None,
) -> tuple[SubjectEntry, bool]:
    """The entry of ``subjects[index]``, checked on its own after ``steps`` (errors name it),
    and whether the steps change its images (then messages say "after the transform");
    ``probed``, what running them on the first subject made, completes the prediction."""
    if not isinstance(subject, Subject):
        raise TypeError(f"subjects[{index}] is a {type(subject).__name__}, not a Subject")
    try:
        images = tuple(ImageEntry.read(name, image) for name, image in subject.images.items())
        headers = {image.name: image.spec for image in images}
        if probed is None:
            transformed = predict(steps, headers)
        else:  # what the steps say, what the probe made of its step, what the rest say
            before = predict(steps[: probed.index], headers)
            transformed = predict(steps[probed.index + 1 :], probed.applied(before))
        predicted = transformed != headers
        shapes = {name: spec.spatial_shape for name, spec in transformed.items()}
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"{name}: {shape}" for name, shape in shapes.items())
            raise SubjectError(
                f"The images of {subject.describe()} have different spatial shapes"
                f"{_AFTER if predicted else ''} ({listing}). Bring them onto one grid in the"
                f" transform, before any random step: shmqueue.Resample('{next(iter(shapes))}')"
                " resamples the others onto the first image's grid (or CropOrPad to one shape"
                " if they share their voxel spacing and origin)."
            )
        shape = next(iter(shapes.values()))
        sampler.check_fits(subject, shape if predicted else None)
    except (SubjectError, ImageFileError, InvalidImageError) as error:
        raise type(error)(f"subjects[{index}]: {error}") from error
    count = patch_count(sampler, shape, patches_per_volume)
    return SubjectEntry(index, subject.describe(index), images, transformed, count), predicted


def _channels(images: Mapping[str, tuple[int, torch.dtype]]) -> dict[str, int]:
    return {name: channels for name, (channels, _) in images.items()}


def _describe_images(images: Mapping[str, tuple[int, torch.dtype]]) -> str:
    return "{" + ", ".join(f"{name}: {c} channel(s)" for name, c in _channels(images).items()) + "}"
