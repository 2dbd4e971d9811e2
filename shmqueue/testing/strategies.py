"""Hypothesis strategies for shmqueue: volumes, images, subjects, samplers, transforms, queues.

Everything is sized for fast examples: volumes of at most ``MAX_VOXELS`` (32^3) voxels, sides up
to ``MAX_SIDE`` so that thin and anisotropic shapes such as ``(40, 3, 17)`` occur, a few
subjects, a few patches. Voxel values come from a numpy generator seeded by hypothesis, so a
failing example replays exactly (hypothesis shrinks the seed, the shape and the options, not
single voxels).

Every generated label map has label 1 on its central voxels (the one or two middle indices of
each axis, a block that flips map onto itself), so a :class:`~shmqueue.LabelSampler` can centre
a patch of any size that fits, before and after a :class:`~shmqueue.Flip`.

Example:
    >>> from hypothesis import given, settings, strategies as st
    >>> from shmqueue.testing import check_queue, strategies
    >>> @settings(max_examples=3, deadline=None)
    ... @given(config=strategies.queue_configs(num_workers=st.just(0)))
    ... def test_queue_keeps_its_contracts(config):
    ...     check_queue(config.build).raise_for_failures()
    >>> test_queue_keeps_its_contracts()
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import strategies as st

from ..augmentation import Flip, Noise
from ..image import LabelMap, ScalarImage
from ..preprocessing import RescaleIntensity, ZNormalization
from ..queue import Queue
from ..sampling import GridSampler, LabelSampler, PatchSampler, UniformSampler, WeightedSampler
from ..sampling.grid import PADDING_MODES
from ..subject import Subject
from ..transforms import Compose, Transform

__all__ = [
    "LABEL_DTYPES",
    "MAX_SIDE",
    "MAX_VOXELS",
    "SAMPLER_KINDS",
    "SCALAR_DTYPES",
    "QueueConfig",
    "affines",
    "label_maps",
    "patch_sizes",
    "probability_maps",
    "queue_configs",
    "samplers",
    "scalar_images",
    "spatial_shapes",
    "subjects",
    "transforms",
    "volumes",
]

MAX_SIDE = 40
MAX_VOXELS = 32**3
SCALAR_DTYPES = (np.int16, np.uint8, np.float32, np.float64, np.int32)
LABEL_DTYPES = (np.uint8, np.int8, np.int16, np.int32, np.int64)
SAMPLER_KINDS = ("uniform", "weighted", "label", "grid")
LABEL_NAME = "seg"
PROBABILITY_NAME = "prob"

Shape = tuple[int, int, int]


@st.composite
def spatial_shapes(
    draw: st.DrawFn,
    min_shape: Shape = (1, 1, 1),
    max_side: int = MAX_SIDE,
    max_voxels: int = MAX_VOXELS,
) -> Shape:
    """``(X, Y, Z)`` with ``min_shape <= side <= max_side`` and at most ``max_voxels`` voxels.

    Small, thin (a side of 1-3) and anisotropic shapes are all likely.
    """
    if math.prod(min_shape) > max_voxels or max(min_shape) > max_side:
        raise ValueError(f"no shape of at most {max_voxels} voxels contains {min_shape}")
    sides: list[int] = []
    for axis in range(3):
        rest = math.prod(min_shape[axis + 1 :])
        budget = max_voxels // (math.prod(sides) * rest)
        sides.append(draw(st.integers(min_shape[axis], min(max_side, budget))))
    return (sides[0], sides[1], sides[2])


@st.composite
def volumes(
    draw: st.DrawFn,
    shape: Shape | None = None,
    dtype: Any = None,
    channels: int | None = None,
) -> np.ndarray:
    """A ``(C, X, Y, Z)`` array: noise, a ramp or a constant, of a scalar dtype.

    Args:
        shape: the spatial shape (drawn when None).
        dtype: a numpy dtype (drawn from ``SCALAR_DTYPES`` when None).
        channels: the channel count (1-3 when None).
    """
    shape = draw(spatial_shapes()) if shape is None else shape
    dtype = np.dtype(draw(st.sampled_from(SCALAR_DTYPES)) if dtype is None else dtype)
    channels = draw(st.integers(1, 3)) if channels is None else channels
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    pattern = draw(st.sampled_from(("noise", "ramp", "constant")))
    full = (channels, *shape)
    if pattern == "constant":
        return np.full(full, draw(st.integers(0, 100)), dtype=dtype)
    if pattern == "ramp":
        return (np.arange(math.prod(full)) % 97).reshape(full).astype(dtype)
    if dtype.kind == "f":
        return (rng.standard_normal(full) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(max(info.min, -1000), min(info.max, 1000), size=full, endpoint=True).astype(
        dtype
    )


@st.composite
def affines(draw: st.DrawFn) -> np.ndarray:
    """A 4x4 affine with anisotropic spacing and an offset origin."""
    spacing = draw(st.lists(st.sampled_from((0.5, 1.0, 1.2, 3.0)), min_size=3, max_size=3))
    origin = draw(st.lists(st.integers(-50, 50), min_size=3, max_size=3))
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    return affine


@st.composite
def scalar_images(
    draw: st.DrawFn, shape: Shape | None = None, channels: int | None = None
) -> ScalarImage:
    """A :class:`~shmqueue.ScalarImage` from a volume of any scalar dtype (loaded as float32)."""
    return ScalarImage(draw(volumes(shape=shape, channels=channels)), affine=draw(affines()))


def _central_block(shape: Shape) -> tuple[slice, slice, slice]:
    """The middle one or two indices of each axis: flips map this block onto itself."""
    x, y, z = (slice((side - 1) // 2, side // 2 + 1) for side in shape)
    return (x, y, z)


@st.composite
def label_maps(
    draw: st.DrawFn,
    shape: Shape | None = None,
    num_labels: int | None = None,
    dtype: Any = None,
) -> LabelMap:
    """A one-channel :class:`~shmqueue.LabelMap` with labels ``0..num_labels``, label 1 central.

    Args:
        shape: the spatial shape (drawn when None).
        num_labels: the foreground labels (1-3 when None).
        dtype: a numpy integer dtype (drawn from ``LABEL_DTYPES`` when None).
    """
    shape = draw(spatial_shapes()) if shape is None else shape
    num_labels = draw(st.integers(1, 3)) if num_labels is None else num_labels
    dtype = draw(st.sampled_from(LABEL_DTYPES)) if dtype is None else dtype
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    labels = rng.integers(0, num_labels, size=shape, endpoint=True).astype(dtype)
    labels[_central_block(shape)] = 1
    return LabelMap(labels[None], affine=draw(affines()))


@st.composite
def probability_maps(draw: st.DrawFn, shape: Shape) -> LabelMap:
    """Positive integer weights (1-4) for a :class:`~shmqueue.WeightedSampler`.

    A LabelMap, so intensity transforms (noise, normalisation) leave the probabilities alone.
    """
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return LabelMap(rng.integers(1, 4, size=shape, endpoint=True).astype(np.uint8)[None])


@st.composite
def subjects(
    draw: st.DrawFn,
    shape: Shape | None = None,
    channels: int | None = None,
    with_label: bool | None = None,
    with_probability: bool = False,
    name: str | None = None,
) -> Subject:
    """A subject with a ``t1`` scalar image, optionally a ``seg`` label map and a ``prob`` map,
    all of one spatial shape, and metadata (``name``, ``age``).

    Args:
        shape: the spatial shape (drawn when None).
        channels: channels of ``t1`` (1-3 when None).
        with_label: include the ``seg`` label map (drawn when None).
        with_probability: include a ``prob`` map for a :class:`~shmqueue.WeightedSampler`.
        name: the ``name`` metadata (drawn when None).
    """
    shape = draw(spatial_shapes()) if shape is None else shape
    with_label = draw(st.booleans()) if with_label is None else with_label
    images: dict[str, Any] = {"t1": draw(scalar_images(shape=shape, channels=channels))}
    if with_label:
        images[LABEL_NAME] = draw(label_maps(shape=shape))
    if with_probability:
        images[PROBABILITY_NAME] = draw(probability_maps(shape))
    if name is None:
        name = draw(st.from_regex(r"sub-[0-9]{2}", fullmatch=True))
    return Subject(images, name=name, age=draw(st.integers(18, 90)))


@st.composite
def patch_sizes(draw: st.DrawFn, fits: Shape, max_side: int = 8) -> Shape:
    """A patch size that fits in ``fits``, each side at most ``max_side``."""
    x, y, z = (draw(st.integers(1, min(side, max_side))) for side in fits)
    return (x, y, z)


@st.composite
def samplers(
    draw: st.DrawFn,
    patch_size: Shape,
    kind: str | None = None,
    padding_modes: Sequence[str | None] = (None, *PADDING_MODES),
) -> PatchSampler:
    """A sampler of ``patch_size`` for subjects from :func:`subjects` (with the maps it needs).

    Args:
        patch_size: the patch size.
        kind: one of ``SAMPLER_KINDS`` (drawn when None). ``"label"`` needs subjects with the
            ``seg`` label map, ``"weighted"`` with the ``prob`` map.
        padding_modes: the grid's padding modes to draw from (None: no padding).
    """
    kind = draw(st.sampled_from(SAMPLER_KINDS)) if kind is None else kind
    if kind == "uniform":
        return UniformSampler(None, patch_size)
    if kind == "weighted":
        return WeightedSampler(None, patch_size, probability_map=PROBABILITY_NAME)
    if kind == "label":
        # Label 1 is central in every map; other labels may be absent, so only 1 is named.
        probabilities = draw(st.none() | st.just({1: 1.0}))
        return LabelSampler(None, patch_size, LABEL_NAME, label_probabilities=probabilities)
    if kind == "grid":
        overlap = tuple(draw(st.integers(0, (side - 1) // 2)) * 2 for side in patch_size)
        padding = draw(st.sampled_from(tuple(padding_modes)))
        return GridSampler(None, patch_size, patch_overlap=overlap, padding_mode=padding)
    raise ValueError(f"kind must be one of {SAMPLER_KINDS}, got {kind!r}")


@st.composite
def transforms(draw: st.DrawFn) -> Transform | None:
    """None or a :class:`~shmqueue.Compose` of flips, noise and intensity transforms.

    All draw from the generator they are given and pickle, so they are valid in every worker.
    """
    options = [
        st.builds(
            Flip,
            axes=st.lists(st.integers(0, 2), min_size=1, max_size=3, unique=True),
            p=st.sampled_from((0.5, 1.0)),
        ),
        st.builds(Noise, std=st.sampled_from((0.1, 10.0)), p=st.sampled_from((0.5, 1.0))),
        st.just(ZNormalization()),
        st.just(RescaleIntensity((-1.0, 1.0))),
    ]
    chosen = draw(st.lists(st.one_of(options), max_size=3))
    return Compose(chosen) if chosen else None


@dataclass(frozen=True)
class QueueConfig:
    """A queue's arguments, drawn by :func:`queue_configs`; :meth:`build` is a queue factory.

    Pass ``config.build`` to :func:`~shmqueue.testing.check_queue`, which builds two queues with
    it to check that the same seed gives the same patches.
    """

    subjects: tuple[Subject, ...]
    sampler: PatchSampler
    transform: Transform | None
    max_length: int
    patches_per_volume: int
    num_workers: int
    shuffle_subjects: bool
    shuffle_patches: bool
    seed: int
    deterministic: bool
    subject_sampler: tuple[int, ...] | None = None
    multiprocessing_context: str = "fork"

    def build(self) -> Queue:
        """A new :class:`~shmqueue.Queue` with these arguments."""
        return Queue(
            list(self.subjects),
            self.sampler,
            max_length=self.max_length,
            patches_per_volume=self.patches_per_volume,
            num_workers=self.num_workers,
            shuffle_subjects=self.shuffle_subjects,
            shuffle_patches=self.shuffle_patches,
            transform=self.transform,
            subject_sampler=None if self.subject_sampler is None else list(self.subject_sampler),
            seed=self.seed,
            deterministic=self.deterministic,
            multiprocessing_context=self.multiprocessing_context,
        )


@st.composite
def queue_configs(
    draw: st.DrawFn,
    num_workers: st.SearchStrategy[int] | None = None,
    sampler_kinds: Sequence[str] = SAMPLER_KINDS,
    padding_modes: Sequence[str | None] = (None, *PADDING_MODES),
    max_subjects: int = 4,
    multiprocessing_context: str = "fork",
) -> QueueConfig:
    """A valid queue configuration: subjects, sampler, transform and the queue's options.

    ``max_length >= patches_per_volume``; subjects share their images and channels but not
    their spatial shapes; the subject list may repeat a subject; a ``subject_sampler`` (a list
    of indices, possibly with repeats) is drawn now and then.

    Args:
        num_workers: the strategy for ``num_workers``; by default mostly 0, sometimes 1 or 2
            (worker processes are the slow part of an example).
        sampler_kinds: the sampler kinds to draw from.
        padding_modes: the grid sampler's padding modes to draw from.
        max_subjects: at most this many subjects.
        multiprocessing_context: the start method for configurations with workers.
    """
    kind = draw(st.sampled_from(tuple(sampler_kinds)))
    patch_size = draw(patch_sizes(fits=(8, 8, 8)))
    sampler = draw(samplers(patch_size, kind=kind, padding_modes=padding_modes))
    channels = draw(st.integers(1, 2))
    with_label = kind == "label" or draw(st.booleans())
    count = draw(st.integers(1, max_subjects))
    budget = MAX_VOXELS // 4
    subject_list: list[Subject] = []
    for index in range(count):
        if subject_list and draw(st.integers(0, 5)) == 0:
            subject_list.append(subject_list[draw(st.integers(0, len(subject_list) - 1))])
            continue
        shape = draw(spatial_shapes(min_shape=patch_size, max_voxels=budget))
        subject_list.append(
            draw(
                subjects(
                    shape=shape,
                    channels=channels,
                    with_label=with_label,
                    with_probability=kind == "weighted",
                    name=f"sub-{index:02d}",
                )
            )
        )
    patches_per_volume = draw(st.integers(1, 5))
    max_length = draw(st.integers(patches_per_volume, 3 * patches_per_volume + 2))
    workers = draw(
        num_workers if num_workers is not None else st.sampled_from((0, 0, 0, 0, 0, 1, 2))
    )
    subject_sampler = None
    if draw(st.integers(0, 4)) == 0:
        subject_sampler = tuple(
            draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=count + 2))
        )
    return QueueConfig(
        subjects=tuple(subject_list),
        sampler=sampler,
        transform=draw(transforms()),
        max_length=max_length,
        patches_per_volume=patches_per_volume,
        num_workers=workers,
        shuffle_subjects=subject_sampler is None and draw(st.booleans()),
        shuffle_patches=draw(st.booleans()),
        seed=draw(st.integers(0, 2**63 - 1)),
        deterministic=draw(st.booleans()),
        subject_sampler=subject_sampler,
        multiprocessing_context=multiprocessing_context,
    )
