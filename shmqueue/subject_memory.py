"""What one subject costs a worker: a model from the headers, or a measurement.

A worker processes one subject at a time: it loads each image (the file's bytes, inflated if
gzipped, then copied channels-first into float32 or the label dtype), runs the transform step by
step and lets the sampler draw patch locations. :func:`peak_subject` models the bytes alive
at each moment of that from the images' headers and returns the largest; :func:`measure_pipeline`
runs the real pipeline on the largest subjects in a fresh process instead. Both feed
:func:`shmqueue.memory.estimate_memory`.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import struct
import sys
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from nibabel import nifti1

from .errors import SubjectError, WorkerDiedError
from .image import INFLATE_CHUNK, Image, LabelMap, ScalarImage
from .machine import peak_rss, return_free_memory
from .pipeline import ImageSpec, SubjectPipeline
from .plan import SubjectTask
from .sampling.base import PatchSampler
from .sampling.grid import GridSampler
from .sampling.uniform import UniformSampler
from .sampling.weighted import LabelSampler, WeightedSampler
from .subject import Subject
from .transforms import (
    Compose,
    Flip,
    Lambda,
    Noise,
    RescaleIntensity,
    SubjectTransform,
    ZNormalization,
)
from .volumes import use_volume_pool

MEASURED_SUBJECTS = 3
"""How many of the largest subjects :func:`measure_pipeline` runs through the pipeline."""

MEASURE_TIMEOUT = 600.0

HEAP_BLOCK_LIMIT = 32 * 2**20
"""glibc's largest mmap threshold: blocks this large are always mapped and unmapped directly;
smaller ones may come from its heap, which keeps them when they are freed."""


def total_bytes(terms: Any) -> int:
    """The sum of a dataclass's integer fields: the bytes of its terms."""
    return sum(
        value
        for value in (getattr(terms, field.name) for field in dataclasses.fields(terms))
        if isinstance(value, int) and not isinstance(value, bool)
    )


# What the headers say -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageInfo:
    """What the model needs of one image, all from its header."""

    name: str
    scalar: bool
    channels: int
    voxels: int  # spatial
    stored_itemsize: int  # as in the file
    stored_float: bool
    scaled: bool  # nibabel applies scl_slope / scl_inter
    loaded_itemsize: int
    label_same_dtype: bool  # a label map loaded in its stored dtype: no conversion copy
    in_memory: bool
    compressed: bool

    @property
    def raw_bytes(self) -> int:
        return self.channels * self.voxels * self.stored_itemsize

    @property
    def loaded_bytes(self) -> int:
        return self.channels * self.voxels * self.loaded_itemsize

    @property
    def float_bytes(self) -> int:
        return self.channels * self.voxels * 4


_NIFTI_HEADERS = {
    # sizeof_hdr: (offset and format of datatype, offset and format of scl_slope, scl_inter)
    348: ((70, "h"), (112, "ff")),
    540: ((12, "h"), (176, "dd")),
}


def _nifti_storage(path: Path) -> tuple[np.dtype[Any], bool] | None:
    """The stored dtype of a NIfTI-1/2 file and whether nibabel scales it, from its first bytes.

    :class:`~shmqueue.image.ImageHeader` gives the dtype voxels load as (float32 when scaled);
    the model needs the file's own. Parsing the header directly costs tens of microseconds where
    ``nibabel.load`` costs about half a millisecond. None if the file is not NIfTI.
    """
    with open(path, "rb") as file:
        head = file.read(4096)
    if path.name.endswith(".gz"):
        try:
            head = zlib.decompressobj(wbits=31).decompress(head, 544)
        except zlib.error:
            return None
    for order in "<>":
        if len(head) >= 4 and struct.unpack(f"{order}i", head[:4])[0] in _NIFTI_HEADERS:
            break
    else:
        return None
    (type_offset, type_format), (scale_offset, scale_format) = _NIFTI_HEADERS[
        struct.unpack(f"{order}i", head[:4])[0]
    ]
    if len(head) < scale_offset + struct.calcsize(scale_format):
        return None
    (code,) = struct.unpack_from(f"{order}{type_format}", head, type_offset)
    slope, inter = struct.unpack_from(f"{order}{scale_format}", head, scale_offset)
    try:
        numpy_type: Any = nifti1.data_type_codes.dtype[code]
    except KeyError:
        return None
    stored = np.dtype(numpy_type)
    # nibabel ignores a zero or non-finite slope (and then the intercept).
    scaled = math.isfinite(slope) and slope != 0 and (slope != 1 or inter != 0)
    return stored, bool(scaled)


def _file_storage(image: Image) -> tuple[np.dtype[Any], bool]:
    """The file's stored dtype and whether nibabel scales its voxels."""
    assert image.path is not None
    storage = _nifti_storage(image.path)
    if storage is not None:
        return storage
    proxy = getattr(nib.load(image.path), "dataobj", None)  # another format nibabel reads
    scaled = getattr(proxy, "slope", 1.0) != 1 or getattr(proxy, "inter", 0.0) != 0
    return np.dtype(image.header.stored_dtype), bool(scaled)


def image_info(name: str, image: Image) -> ImageInfo:
    """The model's view of ``image``: shapes and dtypes from its header, no voxels."""
    channels, x, y, z = image.shape
    if image.path is None:
        stored, scaled = np.dtype(image.header.stored_dtype), False
    else:
        stored, scaled = _file_storage(image)
    loaded = image.dtype
    return ImageInfo(
        name=name,
        scalar=not isinstance(image, LabelMap),
        channels=channels,
        voxels=x * y * z,
        stored_itemsize=stored.itemsize,
        stored_float=stored.kind == "f",
        scaled=scaled,
        loaded_itemsize=loaded.itemsize,
        label_same_dtype=isinstance(image, LabelMap)
        and not scaled
        and stored.kind in "iub"
        and stored.itemsize == loaded.itemsize,
        in_memory=image.path is None,
        compressed=image.path is not None and image.path.name.endswith(".gz"),
    )


# The model of one subject in a worker ---------------------------------------------------------


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


def _load_moments(info: ImageInfo, held: int) -> Iterator[Moment]:
    """The moments of ``Image.load`` for one image, with ``held`` bytes of images loaded before.

    A ``.nii.gz`` is read and inflated 1 MiB at a time (:func:`~shmqueue.image._inflate`) into
    a buffer of the stored voxels; an uncompressed ``.nii`` is memory-mapped, which costs as much
    once its pages are read. The stored voxels are then copied once, reordered channels-first and
    converted, into the loaded volume; scaled voxels are copied to float32 and scaled in place. A
    float label map is compared with its rounded copy before its cast to int32.
    """
    name = f"'{info.name}'"
    raw = info.raw_bytes
    if info.compressed:
        # Besides its output: the compressed piece just read and the piece just inflated.
        pieces = 2 * min(raw, INFLATE_CHUNK)
        yield Moment(f"decompressing {name}", raw=raw, decompression=pieces, loaded=held)
    final = held + info.loaded_bytes
    if info.scaled:
        yield Moment(f"scaling {name}", raw=raw, loaded=final)
    elif info.scalar:
        yield Moment(f"converting {name} to float32", raw=raw, loaded=final)
    elif info.label_same_dtype:
        yield Moment(f"reordering {name}", raw=raw, loaded=final)
    elif not info.stored_float:
        yield Moment(f"converting {name} to labels", raw=raw, loaded=final)
    else:  # a float label map: copied as stored, checked against its rounded copy, then cast
        stored = info.channels * info.voxels * info.stored_itemsize
        yield Moment(f"checking labels of {name}", raw=raw, loaded=held, conversion=2 * stored)
        yield Moment(f"converting {name} to labels", loaded=final, conversion=stored)


_TRANSFORM_COSTS: dict[type, tuple[bool, int, int]] = {
    # class: (scalar images only, peak extra, output), in volumes of each image it touches
    Flip: (False, 1, 1),  # torch.flip: one copy
    Noise: (True, 1, 1),  # one float32 noise volume, to which the image is added in place
    ZNormalization: (True, 2, 1),  # (data - mean) / std: two volumes at once
    RescaleIntensity: (True, 2, 1),  # (data - low) * scale + out_min: two at once
}
UNKNOWN_TRANSFORM = (2, 1)
"""A Lambda, a callable or a Transform subclass we know nothing of: two volumes of every image it
may touch at once, one of which it returns."""


def _transform_steps(
    transform: SubjectTransform | None, images: Sequence[ImageInfo]
) -> Iterator[list[tuple[str, int, int]]]:
    """The transform as a sequence of steps, each ``[(image, peak extra, output bytes)]``.

    Steps with a probability ``p < 1`` are assumed to happen.
    """
    if transform is None:
        return
    if type(transform) is Compose:
        for inner in transform.transforms:
            yield from _transform_steps(inner, images)
        return
    if type(transform) in _TRANSFORM_COSTS:
        scalar_only, peak, output = _TRANSFORM_COSTS[type(transform)]
        touched = [info for info in images if info.scalar or not scalar_only]
    elif type(transform) is Lambda:
        kinds = transform.types_to_apply or (Image,)
        touched = [
            info for info in images if issubclass(ScalarImage if info.scalar else LabelMap, kinds)
        ]
        peak, output = UNKNOWN_TRANSFORM
    else:
        touched, (peak, output) = list(images), UNKNOWN_TRANSFORM
    yield [(info.name, peak * info.loaded_bytes, output * info.loaded_bytes) for info in touched]


def _transform_peak(transform: SubjectTransform | None, images: Sequence[ImageInfo]) -> int:
    """Bytes a transform holds beyond the loaded subject at its peak.

    The pipeline applies a Compose step by step (:func:`~shmqueue.transforms.transform_steps`),
    so a step's input, the previous step's volumes, stays alive until the step returns, and is
    freed then. A step makes new volumes image by image.
    """
    # The volume alive per image that the next step frees; an in-memory image's stays in the
    # subject list, counted there.
    current = {info.name: 0 if info.in_memory else info.loaded_bytes for info in images}
    loaded = sum(current.values())
    peak = loaded
    for step in _transform_steps(transform, images):
        made = 0
        for _, extra, output in step:
            peak = max(peak, sum(current.values()) + made + extra)
            made += output
        current.update((name, output) for name, _, output in step)
    return peak - loaded


def _sampler_bytes(
    sampler: PatchSampler, images: Sequence[ImageInfo], shape: tuple[int, int, int]
) -> int:
    """Bytes a sampler holds beyond the transformed subject while it prepares and draws."""
    voxels = math.prod(shape)
    # A probability map: float32, its float64 copy restricted to valid centres, their cumsum,
    # and a boolean test for negative values.
    draw = (4 + 8 + 8 + 1) * voxels
    by_name = {info.name: info for info in images}
    if type(sampler) is UniformSampler:
        return 0
    if type(sampler) is WeightedSampler:
        image = by_name.get(sampler.probability_map)
        converted = 0 if image is None or image.loaded_itemsize == 4 else image.float_bytes
        return max(converted + 4 * voxels, draw)
    if type(sampler) is LabelSampler:
        image = by_name.get(sampler.label_name)
        argmax = 8 * voxels if image is not None and image.channels > 1 else 0
        return argmax + draw
    if type(sampler) is GridSampler:
        if sampler.padding_mode is None:
            return 0
        # Every image padded at once; the index-based modes gather axis by axis (one more copy).
        padded = math.prod(sampler.prepare_shape(shape))
        grown = sum(info.channels * padded * info.loaded_itemsize for info in images)
        largest = max(info.channels * padded * info.loaded_itemsize for info in images)
        return grown + (0 if sampler.padding_mode == "constant" else largest)
    return draw + 8 * voxels  # an unknown sampler: as much as a multi-channel LabelSampler


def _subject_peak(
    images: Sequence[ImageInfo],
    shape: tuple[int, int, int],
    transform: SubjectTransform | None,
    sampler: PatchSampler,
) -> Moment:
    """The largest moment of processing one subject in a worker.

    Images load one after the other, then the transform runs step by step, then the sampler
    prepares and draws. Writing patches into the ring allocates nothing. In-memory images are not
    loaded: they are counted with the subject list. The loaded and transformed volumes come from
    the process's :mod:`~shmqueue.volumes` pool, which keeps them, free, while the next subject
    inflates its files and takes them back one by one.
    """
    transform_peak = _transform_peak(transform, images)
    loaded_files = [info.loaded_bytes for info in images if not info.in_memory]
    # The pool also keeps a buffer of a nearby size until it goes stale: with subjects of mixed
    # shapes, workers measured up to one loaded volume more than the subject's own.
    pooled = sum(loaded_files) + transform_peak + max(loaded_files, default=0)
    moments: list[Moment] = []
    held = retained = 0
    for info in images:
        if info.in_memory:
            continue
        loading = list(_load_moments(info, held))
        moments.extend(
            dataclasses.replace(moment, allocator=max(0, pooled - moment.loaded))
            for moment in loading
        )
        held += info.loaded_bytes
        retained += _freed_by_load(info, max(moment.total for moment in loading) - held)
    moments.append(
        Moment("transforming", loaded=held, transform=transform_peak, allocator=retained)
    )
    moments.append(
        Moment(
            "sampling",
            loaded=held,
            sampler=_sampler_bytes(sampler, images, shape),
            allocator=retained,
        )
    )
    return max(moments, key=lambda moment: moment.total)


def _freed_by_load(info: ImageInfo, temporaries: int) -> int:
    """What of ``load``'s ``temporaries`` the process keeps while the transform and sampler run.

    ``temporaries`` are what ``load`` held beyond the loaded volume at its peak. A ``.nii.gz``'s
    inflated bytes go back to the volume pool, which keeps them for the next subject. Anything
    else nibabel read into the heap is freed when ``load`` returns, as a hole that the next,
    larger float32 volumes do not fit in, so the heap keeps it until the worker trims it before
    its next subject; blocks of 32 MiB or more are unmapped instead, and so is an uncompressed
    file's memory map.
    """
    if info.compressed:
        return info.raw_bytes
    if info.raw_bytes >= HEAP_BLOCK_LIMIT:
        return 0
    return temporaries - info.raw_bytes


def peak_subject(
    subjects: Sequence[Subject],
    infos: Sequence[tuple[ImageInfo, ...]],
    transform: SubjectTransform | None,
    sampler: PatchSampler,
) -> tuple[int, Moment]:
    """The index of the subject with the largest modelled peak, and that peak.

    Subjects with the same shape and images cost the same, so each kind is modelled once.
    """
    peaks: dict[tuple[Any, ...], Moment] = {}
    best: tuple[int, Moment] | None = None
    for index, subject_infos in enumerate(infos):
        shape = subjects[index].spatial_shape
        key = (shape, subject_infos)
        if key not in peaks:
            peaks[key] = _subject_peak(subject_infos, shape, transform, sampler)
        if best is None or peaks[key].total > best[1].total:
            best = (index, peaks[key])
    assert best is not None
    return best


# Measurement ----------------------------------------------------------------------------------


def _measure_child(
    pipeline: SubjectPipeline, tasks: Sequence[SubjectTask], results: Connection
) -> None:
    """Run each task's load + transform + sample as a worker does; send the peak's growth."""
    torch.set_num_threads(1)  # as a worker
    use_volume_pool()
    try:
        return_free_memory()  # free heap inherited under fork would hide the pipeline's growth
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset the peak resident set (VmHWM) to the current one
        before = peak_rss()  # just reset: the current resident set
        for task in tasks:
            pipeline.run(task)
        results.send(("ok", max(0, peak_rss() - before)))
    except Exception as error:
        results.send(("error", f"{type(error).__name__}: {error}"))


def measure_pipeline(
    subjects: Sequence[Subject],
    infos: Sequence[tuple[ImageInfo, ...]],
    transform: SubjectTransform | None,
    sampler: PatchSampler,
    images: Mapping[str, ImageSpec],
    patches_per_volume: int,
    start_method: str,
) -> int:
    """Peak bytes above its start of a fresh process running the largest subjects' pipeline
    (for a ring holding ``images``, as :class:`~shmqueue.pipeline.SubjectPipeline` takes them)."""
    if not sys.platform.startswith("linux"):
        raise NotImplementedError("measure=True reads /proc, so it works on Linux only")
    sizes = [sum(info.raw_bytes + info.loaded_bytes for info in row) for row in infos]
    largest = sorted(range(len(subjects)), key=lambda index: -sizes[index])[:MEASURED_SUBJECTS]
    tasks = []
    for position, index in enumerate(largest):
        limit = sampler.max_patches(subjects[index].spatial_shape)
        count = patches_per_volume if limit is None else min(patches_per_volume, limit)
        tasks.append(SubjectTask(0, position, index, 0, count, seed=position))
    context = multiprocessing.get_context(start_method)
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(  # type: ignore[attr-defined]
        target=_measure_child,
        args=(SubjectPipeline(subjects, transform, sampler, images), tasks, writer),
        name="shmqueue-memory-measure",
        daemon=True,
    )
    try:
        process.start()
        writer.close()
        result: tuple[str, Any] = ("timeout", None)
        if reader in wait([reader, process.sentinel], MEASURE_TIMEOUT):
            try:
                result = reader.recv()
            except EOFError:
                result = ("died", None)
        elif process.sentinel in wait([process.sentinel], 0):
            result = ("died", None)
        process.join(MEASURE_TIMEOUT if result[0] != "timeout" else 0)
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        reader.close()
        writer.close()
    status, value = result
    measured = ", ".join(subjects[index].describe(index) for index in largest)
    if status == "ok":
        return int(value)
    if status == "error":
        raise SubjectError(f"Measuring the pipeline's memory on {measured} failed: {value}")
    how = (
        f"did not finish within {MEASURE_TIMEOUT:.0f} s"
        if status == "timeout"
        else f"ended with exit code {process.exitcode}"
    )
    raise WorkerDiedError(
        f"The process measuring the pipeline's memory on {measured} {how}. Exit code -9 is"
        " SIGKILL, usually from the out-of-memory killer: then one subject alone does not fit."
    )
