"""What one subject costs a worker, modelled from the catalog's headers.

A worker processes one subject at a time: it loads each image (the file's bytes, inflated if
gzipped, then copied channels-first into float32 or the label dtype), runs the transform step by
step and lets the sampler draw patch locations. :func:`peak_subject` models the bytes alive at
each moment of that and returns the largest. What a transform step or a sampler allocates, it is
asked (:meth:`~shmqueue.Transform.memory_cost`, :meth:`~shmqueue.PatchSampler.memory_cost`);
loading is modelled here, from each image's stored and loaded dtype, scaling and compression.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass

from ..augmentation.deferred import SLAB_VOXELS, slab_voxels
from ..catalog import Catalog, ImageEntry
from ..image import INFLATE_CHUNK, LabelMap
from ..sampling.base import PatchSampler
from ..specs import ImageSpec
from ..transforms import (
    Deferrable,
    SubjectTransform,
    described,
    described_steps,
    is_deferrable,
    transform_steps,
)
from .breakdown import total_bytes
from .constants import HEAP_BLOCK_LIMIT


@dataclass(frozen=True)
class Moment:
    """Data bytes alive at one moment of processing a subject."""

    phase: str
    raw: int = 0
    decompression: int = 0
    loaded: int = 0
    conversion: int = 0
    transform: int = 0
    sampler: int = 0
    allocator: int = 0

    @property
    def total(self) -> int:
        return total_bytes(self)


def _load_moments(image: ImageEntry, held: int) -> Iterator[Moment]:
    """The moments of ``Image.load`` for one image, with ``held`` bytes of images loaded before.

    A ``.nii.gz`` is read and inflated 1 MiB at a time (:func:`~shmqueue.image._inflate`) into
    a buffer of the stored voxels; an uncompressed ``.nii`` is memory-mapped, which costs as much
    once its pages are read. The stored voxels are then copied once, reordered channels-first and
    converted, into the loaded volume; scaled voxels are copied to float32 and scaled in place. A
    float label map is compared with its rounded copy before its cast to int32.
    """
    name = f"'{image.name}'"
    raw = image.raw_bytes
    stored = image.stored_dtype
    label = issubclass(image.kind, LabelMap)
    if image.compressed:
        # Besides its output: the compressed piece just read and the piece just inflated.
        pieces = 2 * min(raw, INFLATE_CHUNK)
        yield Moment(f"decompressing {name}", raw=raw, decompression=pieces, loaded=held)
    final = held + image.loaded_bytes
    if image.header.scaled:
        yield Moment(f"scaling {name}", raw=raw, loaded=final)
    elif not label:
        yield Moment(f"converting {name} to float32", raw=raw, loaded=final)
    elif stored.kind in "iub" and stored.itemsize == image.dtype.itemsize:
        yield Moment(f"reordering {name}", raw=raw, loaded=final)  # loaded in its stored dtype
    elif stored.kind != "f":
        yield Moment(f"converting {name} to labels", raw=raw, loaded=final)
    else:  # a float label map: copied as stored, checked against its rounded copy, then cast
        yield Moment(f"checking labels of {name}", raw=raw, loaded=held, conversion=2 * raw)
        yield Moment(f"converting {name} to labels", loaded=final, conversion=raw)


@dataclass(frozen=True)
class _Transformed:
    """What the transform leaves a worker with: its peak beyond the loaded subject, the
    subject's description after it, and what the augmentations deferred to the patches cost."""

    peak: int
    specs: dict[str, ImageSpec]
    region_costs: dict[str, int]  # per deferred image: bytes in flight per voxel of a region
    statistics: int  # bytes alive while a deferred stage's whole input is made for statistics
    kernels: int  # what the process keeps once it has run the transform (lazy library kernels)


def _deferred_count(steps: Sequence[SubjectTransform]) -> int:
    """How many of ``steps``, at the end, the pipeline defers to the patches: the trailing run
    of deferrable ones (:func:`~shmqueue.transforms.run_steps`)."""
    count = 0
    for step in reversed(steps):
        if not is_deferrable(step):
            break
        count += 1
    return count


def _transform_peak(
    transform: SubjectTransform | None, images: Sequence[ImageEntry], patch_evaluation: bool
) -> _Transformed:
    """Bytes a transform holds beyond the loaded subject at its peak, as its steps say, the
    subject's description after it, which the sampler gets, and the deferred steps' costs.

    The pipeline applies a Compose step by step (:func:`~shmqueue.transforms.transform_steps`;
    steps with ``p < 1`` are assumed to happen), so a step's input, the previous step's volumes,
    stays alive until the step returns, and is freed then. A step makes new volumes image by
    image (:meth:`~shmqueue.Transform.memory_cost`). With ``patch_evaluation``, the trailing
    augmentations make no volume: each patch, and each image the sampler reads whole, is
    computed a slab at a time (:meth:`~shmqueue.transforms.Deferrable.region_cost`).
    """
    # The volume alive per image that the next step frees; an in-memory image's stays in the
    # subject list, counted there.
    current = {image.name: 0 if image.in_memory else image.loaded_bytes for image in images}
    loaded = sum(current.values())
    peak = loaded
    specs = {image.name: image.spec for image in images}
    steps = list(transform_steps(transform))
    first_deferred = len(steps) - (_deferred_count(steps) if patch_evaluation else 0)
    for step, inputs, outputs in described_steps(steps[:first_deferred], specs):
        costs = step.memory_cost(inputs)
        made = 0
        for cost in costs:
            peak = max(peak, sum(current.values()) + made + cost.peak)
            made += cost.output
        current.update((cost.image, cost.output) for cost in costs)
        specs = outputs
    region_costs: dict[str, int] = {}
    statistics = 0
    for step, inputs, _ in described_steps(steps[first_deferred:], specs):
        assert isinstance(step, Deferrable)  # deferred: every one is
        step_costs = {name: step.region_cost(name, spec) for name, spec in inputs.items()}
        if region_costs and step.locality.statistics:  # its input is made whole, once
            statistics = max(
                [statistics]
                + [
                    spec.nbytes + slab_voxels(spec) * region_costs.get(name, 0)
                    for name, spec in inputs.items()
                    if step_costs[name] and name in region_costs
                ]
            )
        for name, region_cost in step_costs.items():
            if region_cost:
                region_costs[name] = max(region_costs.get(name, 0), region_cost)
    kernels = max((described(step).process_cost() for step in steps), default=0)
    return _Transformed(peak - loaded, specs, region_costs, statistics, kernels)


def _deferred_moments(
    transformed: _Transformed, sampler: PatchSampler, held: int, retained: int
) -> list[Moment]:
    """Sampling, and the moments of deferred evaluation: the images the sampler reads whole
    are computed slab by slab and kept; each patch is computed a slab at a time. The heap
    keeps what the earlier slabs freed (the whole images', a statistic's input) while the
    patches are computed: measured, the patches' peak stood that much higher."""
    specs, costs = transformed.specs, transformed.region_costs
    whole = [name for name in sampler.whole_images(specs) if name in costs]
    kept = sum(specs[name].nbytes for name in whole)
    making = max((slab_voxels(specs[name]) * costs[name] for name in whole), default=0)
    # the heap keeps the slabs' freed values while the sampler draws (measured)
    sampling = kept + making + sampler.memory_cost(specs)
    kernels = transformed.kernels
    moments = [
        Moment("sampling", loaded=held, transform=kernels, sampler=sampling, allocator=retained)
    ]
    if costs:
        patch_voxels = min(math.prod(sampler.patch_size), SLAB_VOXELS)
        in_flight = max(patch_voxels * cost for cost in costs.values())
        moments.append(
            Moment(
                "evaluating patches",
                loaded=held,
                transform=kernels + in_flight,
                sampler=kept,
                allocator=retained + making + transformed.statistics,
            )
        )
    if transformed.statistics:
        moments.append(
            Moment(
                "deferred statistics",
                loaded=held,
                transform=kernels + transformed.statistics,
                allocator=retained,
            )
        )
    return moments


def _subject_peak(
    images: Sequence[ImageEntry],
    transform: SubjectTransform | None,
    sampler: PatchSampler,
    patch_evaluation: bool,
) -> Moment:
    """The largest moment of processing one subject in a worker.

    Images load one after the other, then the transform runs step by step, then the sampler
    prepares and draws, and the patches are read (computed, when augmentations are deferred).
    Writing patches into the ring allocates nothing. In-memory images are not
    loaded: they are counted with the subject list. The loaded and transformed volumes come from
    the process's :mod:`~shmqueue.volumes` pool, which keeps them, free, while the next subject
    inflates its files and takes them back one by one.
    """
    transformed = _transform_peak(transform, images, patch_evaluation)
    transform_peak = transformed.peak + transformed.kernels
    loaded_files = [image.loaded_bytes for image in images if not image.in_memory]
    # The pool also keeps a buffer of a nearby size until it goes stale: with subjects of mixed
    # shapes, workers measured up to one loaded volume more than the subject's own.
    pooled = sum(loaded_files) + transform_peak + max(loaded_files, default=0)
    moments: list[Moment] = []
    held = retained = 0
    for image in images:
        if image.in_memory:
            continue
        loading = list(_load_moments(image, held))
        moments.extend(
            dataclasses.replace(moment, allocator=max(0, pooled - moment.loaded))
            for moment in loading
        )
        held += image.loaded_bytes
        retained += _freed_by_load(image, max(moment.total for moment in loading) - held)
    moments.append(
        Moment("transforming", loaded=held, transform=transform_peak, allocator=retained)
    )
    moments.extend(_deferred_moments(transformed, sampler, held, retained))
    return max(moments, key=lambda moment: moment.total)


def _freed_by_load(image: ImageEntry, temporaries: int) -> int:
    """What of ``load``'s ``temporaries`` the process keeps while the transform and sampler run.

    ``temporaries`` are what ``load`` held beyond the loaded volume at its peak. A ``.nii.gz``'s
    inflated bytes go back to the volume pool, which keeps them for the next subject. Anything
    else nibabel read into the heap is freed when ``load`` returns, as a hole that the next,
    larger float32 volumes do not fit in, so the heap keeps it until the worker trims it before
    its next subject; blocks of 32 MiB or more are unmapped instead, and so is an uncompressed
    file's memory map.
    """
    if image.compressed:
        return image.raw_bytes
    if image.raw_bytes >= HEAP_BLOCK_LIMIT:
        return 0
    return temporaries - image.raw_bytes


def _model_key(image: ImageEntry) -> Hashable:
    """What the model reads of an image: images alike in all of it cost alike."""
    header = image.header
    return (
        image.name,
        image.spec,
        image.in_memory,
        header.stored_dtype,
        header.scaled,
        header.compressed,
    )


def peak_subject(
    catalog: Catalog,
    transform: SubjectTransform | None,
    sampler: PatchSampler,
    patch_evaluation: bool = True,
) -> tuple[int, Moment]:
    """The index of the subject with the largest modelled peak, and that peak.

    Subjects whose images are alike cost the same, so each kind is modelled once.
    """
    peaks: dict[Hashable, Moment] = {}
    best: tuple[int, Moment] | None = None
    for subject in catalog.subjects:
        key = tuple(_model_key(image) for image in subject.images)
        if key not in peaks:
            peaks[key] = _subject_peak(subject.images, transform, sampler, patch_evaluation)
        if best is None or peaks[key].total > best[1].total:
            best = (subject.index, peaks[key])
    assert best is not None
    return best
