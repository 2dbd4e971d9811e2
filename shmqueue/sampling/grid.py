"""Dense inference: GridSampler tiles a volume with patches, PatchAggregator stitches them back.

The grid is TorchIO's: patches start every ``patch_size - patch_overlap`` voxels along each axis,
the last one on each axis moved back to end at the border so that every voxel is covered, in
x-major order. With a ``padding_mode`` the images are first padded by half the overlap on each
side, so that the voxels at the volume border are not at a patch border either; the aggregator
crops that padding away again.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from itertools import islice, product
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from ..image import Image, ImageHeader
from ..specs import SubjectSpec
from ..subject import Subject
from .base import PatchLocation, PatchSampler, Triple, as_patch_size, extract_patch

# The modes other than "constant" only copy voxels; these are their numpy.pad names.
_INDEX_PADDING: dict[str, Literal["reflect", "edge", "wrap"]] = {
    "reflect": "reflect",
    "replicate": "edge",
    "circular": "wrap",
}
PADDING_MODES = ("constant", *_INDEX_PADDING)
OVERLAP_MODES = ("crop", "average", "hann")


def _as_overlap(patch_overlap: int | Sequence[int], patch_size: Triple) -> Triple:
    """Normalise ``patch_overlap`` to 3 even ints in ``[0, patch_size)``, or explain the problem."""
    overlap = (
        (patch_overlap,) * 3
        if isinstance(patch_overlap, int)
        else tuple(int(o) for o in patch_overlap)
    )
    if len(overlap) != 3 or any(
        o < 0 or o % 2 or o >= s for o, s in zip(overlap, patch_size, strict=True)
    ):
        raise ValueError(
            f"patch_overlap must be an even int >= 0, or 3 of them, smaller than the patch size"
            f" {patch_size} on each axis (the crop aggregation trims half of it from each side of"
            f" a patch); got {patch_overlap!r}"
        )
    return (overlap[0], overlap[1], overlap[2])


def _axis_starts(size: int, patch: int, overlap: int) -> list[int]:
    """First voxels of the patches along one axis (none if the patch is longer than the axis)."""
    last = size - patch
    if last < 0:
        return []
    starts = list(range(0, last + 1, patch - overlap))
    if starts[-1] != last:
        starts.append(last)  # clamped, so the final voxels are covered
    return starts


def _pad_data(data: torch.Tensor, padding: Triple, mode: str) -> torch.Tensor:
    """``(C, X, Y, Z)`` data padded by ``padding[axis]`` voxels on both sides of each axis."""
    if mode == "constant":
        return F.pad(data, [width for width in reversed(padding) for _ in range(2)])
    # The other modes only copy voxels, so pad the voxel indices and gather: exact for every dtype
    # on every torch version (older ones pad integer tensors only with a constant), and defined
    # for widths torch refuses (reflect and circular beyond the axis length), like numpy.pad.
    for axis, width in enumerate(padding, start=1):
        source = np.pad(np.arange(data.shape[axis]), width, mode=_INDEX_PADDING[mode])
        data = data.index_select(axis, torch.from_numpy(source).to(data.device))
    return data


def _pad_image(image: Image, padding: Triple, mode: str) -> Image:
    """A padded copy of ``image`` whose affine keeps the original voxels where they were."""
    padded = image.with_data(_pad_data(image.data, padding, mode))
    affine = image.affine.copy()
    affine[:3, 3] -= affine[:3, :3] @ np.asarray(padding, dtype=np.float64)
    padded._header = ImageHeader(padded.shape, image.header.read_dtype, affine)
    return padded


class GridSampler(PatchSampler):
    """Tile a volume with patches on a regular grid, for dense inference (TorchIO's GridSampler).

    Patches start every ``patch_size - patch_overlap`` voxels along each axis and the last one on
    each axis ends at the border, so every voxel is covered. The sampler is finite: called on a
    subject, it yields each grid patch once, x-major (then y, then z). Bound to a subject, it is
    also a map-style dataset: ``len(sampler)`` patches, ``sampler[i]`` the i-th, cut from the
    prepared subject (padded once, then cached). Locations refer to the prepared subject.

    Args:
        subject: the subject to tile when the sampler is indexed or iterated, and the one a
            :class:`PatchAggregator` for this sampler reconstructs; ``None`` when a queue calls
            the sampler on its own subjects.
        patch_size: an int for cubes, or three ints.
        patch_overlap: voxels shared by neighbouring patches: an even int, or three, each
            smaller than the patch size (even, because crop aggregation trims half of it from
            each side of a patch).
        padding_mode: ``None`` for no padding, or how to pad each image by
            ``patch_overlap // 2`` on each side of each axis before tiling: ``"constant"``
            (zeros; label 0 in label maps), ``"reflect"``, ``"replicate"`` or ``"circular"``, as
            in ``torch.nn.functional.pad``. Images keep their dtype.

    Raises:
        ValueError: ``patch_overlap`` or ``padding_mode`` is invalid.
        PatchSizeError: the patch is larger than the subject's (padded) volume.

    Example:
        >>> import torch
        >>> from shmqueue.image import ScalarImage
        >>> from shmqueue.subject import Subject
        >>> from shmqueue.sampling.grid import GridSampler
        >>> subject = Subject(t1=ScalarImage(torch.rand(1, 10, 7, 5)))
        >>> sampler = GridSampler(subject, patch_size=4, patch_overlap=2)
        >>> len(sampler), sampler[-1]["patch_location"].index
        (24, (6, 3, 1))
    """

    def __init__(
        self,
        subject: Subject | None,
        patch_size: int | Sequence[int],
        patch_overlap: int | Sequence[int] = 0,
        padding_mode: str | None = None,
    ) -> None:
        if padding_mode is not None and padding_mode not in PADDING_MODES:
            raise ValueError(
                f"padding_mode must be None or one of {PADDING_MODES}, got {padding_mode!r}"
            )
        self.patch_overlap = _as_overlap(patch_overlap, as_patch_size(patch_size))
        self.padding_mode = padding_mode
        self._prepared: Subject | None = None
        super().__init__(subject, patch_size)

    @property
    def _padding(self) -> Triple:
        """Voxels :meth:`prepare` adds on each side of each axis."""
        if self.padding_mode is None:
            return (0, 0, 0)
        i, j, k = (overlap // 2 for overlap in self.patch_overlap)
        return (i, j, k)

    def prepare_shape(self, spatial_shape: Triple) -> Triple:
        i, j, k = (size + 2 * pad for size, pad in zip(spatial_shape, self._padding, strict=True))
        return (i, j, k)

    def prepare(self, subject: Subject) -> Subject:
        """Check that the patch fits, then pad a new Subject's images (the input is unchanged).

        Raises:
            PatchSizeError: the patch is larger than the padded volume.
        """
        self.check_fits(subject)
        if self.padding_mode is None:
            return subject
        padding, mode = self._padding, self.padding_mode
        return type(subject)(
            {
                key: _pad_image(value, padding, mode) if isinstance(value, Image) else value
                for key, value in subject.items()
            }
        )

    def whole_images(self, images: SubjectSpec) -> list[str]:
        """With padding, all of them (each is padded whole); else none."""
        return [] if self.padding_mode is None else list(images)

    def memory_cost(self, images: SubjectSpec) -> int:
        """With padding, every image padded at once (and, for the modes other than
        ``"constant"``, which gather axis by axis, one more copy of the largest); else nothing."""
        if self.padding_mode is None:
            return 0
        spatial_shape = next(iter(images.values())).spatial_shape
        padded = math.prod(self.prepare_shape(spatial_shape))
        sizes = [spec.channels * padded * spec.dtype.itemsize for spec in images.values()]
        return sum(sizes) + (0 if self.padding_mode == "constant" else max(sizes))

    def _grid(self, prepared_shape: Triple) -> tuple[list[int], list[int], list[int]]:
        """The patch starts along each axis of a prepared volume."""
        i, j, k = map(_axis_starts, prepared_shape, self.patch_size, self.patch_overlap)
        return (i, j, k)

    def max_patches(self, spatial_shape: Triple) -> int:
        """The number of grid positions in a volume of this unprepared shape (0 if none fits)."""
        return math.prod(len(starts) for starts in self._grid(self.prepare_shape(spatial_shape)))

    def locations(
        self, subject: Subject, num_patches: int, generator: torch.Generator
    ) -> list[PatchLocation]:
        """The first ``num_patches`` grid positions of a prepared subject (``generator`` unused)."""
        xs, ys, zs = self._grid(subject.spatial_shape)
        starts = islice(product(xs, ys, zs), num_patches)
        return [PatchLocation(start, self.patch_size) for start in starts]

    def _bound_subject(self) -> Subject:
        if self.subject is None:
            raise TypeError(
                f"{type(self).__name__} was built without a subject, so it has no patches of its"
                " own; pass a subject to the constructor, or call the sampler on one."
            )
        return self.subject

    def _prepared_subject(self) -> Subject:
        if self._prepared is None:
            self._prepared = self.prepare(self._bound_subject())
        return self._prepared

    def __len__(self) -> int:
        return self.max_patches(self._bound_subject().spatial_shape)

    def __getitem__(self, index: int) -> Subject:
        """The ``index``-th patch of the bound subject in grid order; negative ones count back."""
        prepared = self._prepared_subject()
        xs, ys, zs = self._grid(prepared.spatial_shape)
        count = len(xs) * len(ys) * len(zs)
        if not -count <= index < count:
            raise IndexError(f"patch index {index} is out of range for a grid of {count} patches")
        i, rest = divmod(index % count, len(ys) * len(zs))
        j, k = divmod(rest, len(zs))
        return extract_patch(prepared, PatchLocation((xs[i], ys[j], zs[k]), self.patch_size))

    def __iter__(self) -> Iterator[Subject]:
        return (self[index] for index in range(len(self)))

    def __getstate__(self) -> dict[str, Any]:
        # The padded subject is a cache: rebuilding it beats shipping a second volume to workers.
        return {**self.__dict__, "_prepared": None}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(patch_size={self.patch_size},"
            f" patch_overlap={self.patch_overlap}, padding_mode={self.padding_mode!r})"
        )


class PatchAggregator:
    """Stitch a model's outputs for the patches of a GridSampler into one volume.

    Args:
        sampler: the sampler whose patches are added; it must be bound to a subject, whose
            (unpadded) spatial shape the output has.
        overlap_mode: how voxels covered by several patches are combined. ``"crop"``: each patch
            writes only its central part (half the overlap is trimmed from each side, except at
            the volume border), so each voxel comes from one patch and keeps the batch dtype.
            ``"average"``: the mean of the patches covering the voxel. ``"hann"``: their mean
            weighted by a Hann window over each patch, so that predictions near patch borders,
            made with less context, count less and seams fade. Both give float32.

    Raises:
        TypeError: the sampler has no subject.
        ValueError: ``overlap_mode`` is not one of ``OVERLAP_MODES``.

    Example:
        >>> import torch
        >>> from shmqueue.image import ScalarImage
        >>> from shmqueue.subject import Subject
        >>> from shmqueue.sampling.grid import GridSampler, PatchAggregator
        >>> subject = Subject(t1=ScalarImage(torch.rand(1, 20, 20, 20)))
        >>> sampler = GridSampler(subject, 8, patch_overlap=2, padding_mode="replicate")
        >>> aggregator = PatchAggregator(sampler, overlap_mode="hann")
        >>> for patch in sampler:
        ...     prediction = patch["t1"].data[None]  # the model would run here
        ...     aggregator.add_batch(prediction, [patch["patch_location"]])
        >>> torch.allclose(aggregator.get_output_tensor(), subject["t1"].data)
        True
    """

    def __init__(self, sampler: GridSampler, overlap_mode: str = "crop") -> None:
        if overlap_mode not in OVERLAP_MODES:
            raise ValueError(f"overlap_mode must be one of {OVERLAP_MODES}, got {overlap_mode!r}")
        if sampler.subject is None:
            raise TypeError(
                "PatchAggregator needs a GridSampler built with a subject: the output has that"
                " subject's shape. Pass the subject to GridSampler(subject, ...)."
            )
        self.overlap_mode = overlap_mode
        self._description = sampler.subject.describe()
        self._patch_size = sampler.patch_size
        self._half_overlap = tuple(overlap // 2 for overlap in sampler.patch_overlap)
        shape = sampler.subject.spatial_shape
        self._prepared_shape = sampler.prepare_shape(shape)
        # The padding is even: half of the size difference on each side.
        self._unpadded_region = (
            slice(None),
            *(
                slice((padded - size) // 2, (padded + size) // 2)
                for padded, size in zip(self._prepared_shape, shape, strict=True)
            ),
        )
        self._num_patches = sampler.max_patches(shape)
        # Allocated by the first add_batch, which tells the channels, dtype and device.
        self._output: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None  # (1, X, Y, Z): coverage (crop) or weight sum
        self._window: torch.Tensor | None = None  # each patch's voxel weights (average, hann)

    def add_batch(
        self, batch: torch.Tensor, locations: Sequence[PatchLocation] | torch.Tensor
    ) -> None:
        """Add the model outputs for a batch of the sampler's patches.

        Args:
            batch: ``(B, C, x, y, z)`` outputs, each of the sampler's patch size; every batch
                has the same ``C``.
            locations: where each patch lies in the prepared (padded) subject: the patches'
                ``PatchLocation`` objects (``patch["patch_location"]``), or TorchIO's ``(B, 6)``
                integer tensor of ``[i0, j0, k0, i1, j1, k1]`` rows.

        Raises:
            ValueError: the batch or the locations have the wrong shape, a location lies outside
                the prepared volume, or the number of channels changed.
        """
        checked = self._check_batch(batch, locations)
        if self._output is None or self._weight is None:
            self._output, self._weight, self._window = self._allocate(batch)
        elif batch.shape[1] != self._output.shape[0]:
            raise ValueError(
                f"The batch has {batch.shape[1]} channels; earlier batches for"
                f" {self._description} had {self._output.shape[0]}"
            )
        output, weight, window = self._output, self._weight, self._window
        for patch, location in zip(batch, checked, strict=True):
            if window is None:  # crop
                region, part = self._central_part(location)
                output[(slice(None), *region)] = patch[(slice(None), *part)]
                weight[(slice(None), *region)] = True
            else:
                region = location.to_slices()
                output[(slice(None), *region)] += patch.to(output.dtype) * window
                weight[(slice(None), *region)] += window

    def _check_batch(
        self, batch: torch.Tensor, locations: Sequence[PatchLocation] | torch.Tensor
    ) -> list[PatchLocation]:
        """The batch's locations as PatchLocations, after checking them against the batch."""
        if batch.ndim != 5 or tuple(batch.shape[2:]) != self._patch_size:
            raise ValueError(
                f"batch must be shaped (B, C, *patch_size) = (B, C, *{self._patch_size}) for"
                f" {self._description}, got {tuple(batch.shape)}"
            )
        if isinstance(locations, torch.Tensor):
            if locations.ndim != 2 or locations.shape[1] != 6 or locations.is_floating_point():
                raise ValueError(
                    "locations as a tensor must be (B, 6) integers [i0, j0, k0, i1, j1, k1], got"
                    f" {locations.dtype} {tuple(locations.shape)}"
                )
            locations = [
                PatchLocation((i0, j0, k0), (i1 - i0, j1 - j0, k1 - k0))
                for i0, j0, k0, i1, j1, k1 in locations.tolist()
            ]
        if len(locations) != len(batch):
            raise ValueError(f"{len(batch)} patches in the batch but {len(locations)} locations")
        for location in locations:
            inside = all(
                start >= 0 and stop <= size
                for start, stop, size in zip(
                    location.index, location.stop, self._prepared_shape, strict=True
                )
            )
            if location.size != self._patch_size or not inside:
                raise ValueError(
                    f"{location} is not a patch of the grid over the prepared volume"
                    f" {self._prepared_shape} of {self._description} with patch size"
                    f" {self._patch_size}; pass the locations the GridSampler gave"
                )
        return list(locations)

    def _allocate(
        self, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Zeroed output and weight buffers over the prepared volume, and the patch weights."""
        shape = (batch.shape[1], *self._prepared_shape)
        if self.overlap_mode == "crop":
            coverage = torch.zeros((1, *shape[1:]), dtype=torch.bool, device=batch.device)
            return torch.zeros(shape, dtype=batch.dtype, device=batch.device), coverage, None
        # float64 sums, so that many overlapping patches add up without drift; rounded once.
        options: dict[str, Any] = {"dtype": torch.float64, "device": batch.device}
        if self.overlap_mode == "average":
            window = torch.ones(self._patch_size, **options)
        else:
            # hann_window(n + 2)[1:-1] drops the window's zero ends: every voxel gets some weight.
            x, y, z = (
                torch.hann_window(n + 2, periodic=False, **options)[1:-1] for n in self._patch_size
            )
            window = x[:, None, None] * y[None, :, None] * z[None, None, :]
        return torch.zeros(shape, **options), torch.zeros((1, *shape[1:]), **options), window

    def _central_part(self, location: PatchLocation) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
        """The region a patch writes in crop mode, and the matching slices of the patch.

        Half the overlap is trimmed from each side, except at the volume border: consecutive
        patches then meet exactly, and the clamped last patch overlaps its neighbour harmlessly.
        """
        trims = [
            (0 if start == 0 else half, 0 if stop == size else half)
            for start, stop, size, half in zip(
                location.index, location.stop, self._prepared_shape, self._half_overlap, strict=True
            )
        ]
        region = tuple(
            slice(start + low, stop - high)
            for start, stop, (low, high) in zip(location.index, location.stop, trims, strict=True)
        )
        part = tuple(
            slice(low, size - high) for size, (low, high) in zip(location.size, trims, strict=True)
        )
        return region, part

    def get_output_tensor(self) -> torch.Tensor:
        """The stitched ``(C, X, Y, Z)`` volume, in the subject's original (unpadded) shape.

        Raises:
            RuntimeError: no batch was added, or some voxel is covered by no added patch.
        """
        if self._output is None or self._weight is None:
            raise RuntimeError(
                f"No patches of {self._description} were added: call add_batch() with the model"
                " outputs for the sampler's patches before get_output_tensor()."
            )
        region = self._unpadded_region
        weight = self._weight[region]
        missing = weight[0] == 0
        count = int(missing.sum())
        if count:
            flat_first = missing.reshape(-1).to(torch.uint8).argmax()
            first = tuple(int(i) for i in torch.unravel_index(flat_first, missing.shape))
            raise RuntimeError(
                f"{count} voxels of {self._description} are covered by no added patch (the"
                f" first at {first}); add the outputs for all {self._num_patches} patches of the"
                " grid before get_output_tensor()."
            )
        if self.overlap_mode == "crop":
            return self._output[region].clone()
        return (self._output[region] / weight).to(torch.float32)
