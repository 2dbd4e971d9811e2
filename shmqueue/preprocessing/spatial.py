"""Transforms that change the grid, moving voxels and updating the affine so that every voxel keeps
its world position: :class:`Crop`, :class:`Pad`, :class:`CropOrPad`, :class:`EnsureShapeMultiple`
and :class:`ToCanonical`, with TorchIO 1.2.1's arguments and results.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from nibabel import orientations

from ..image import Image, ImageHeader, LabelMap, shift_affine
from ..reductions import mean
from ..specs import (
    UNKNOWN,
    WHOLE_VOLUME,
    ImageSpec,
    Locality,
    SubjectSpec,
    Unknown,
    VolumeCost,
)
from ..subject import Subject
from .base import (
    _GridPreserving,
)

Bounds = tuple[int, int, int, int, int, int]
"""Voxels removed or added at each end of each spatial axis: ``(x_ini, x_fin, y_ini, y_fin,
z_ini, z_fin)``."""

_PADDING_MODES = (
    "empty",
    "edge",
    "wrap",
    "constant",
    "linear_ramp",
    "maximum",
    "mean",
    "median",
    "minimum",
    "reflect",
    "symmetric",
)
_STATISTIC_MODES = ("maximum", "mean", "median", "minimum")
_QUANTILE_LIMIT = 2**24  # torch.quantile refuses larger inputs

PaddingMode = str | float
"""A number (a constant) or one of numpy.pad's modes (see :class:`Pad`)."""


def _parse_bounds(bounds: int | Sequence[int], name: str) -> Bounds:
    """TorchIO's reading of bounds: one int for every end, three for both ends of each axis,
    or six."""
    values = (bounds,) if isinstance(bounds, (int, np.integer)) else tuple(bounds)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be integers >= 0, got {bounds!r}")
    ints = [int(value) for value in values]
    if len(ints) == 1:
        ints = ints * 6
    elif len(ints) == 3:
        ints = [ints[0], ints[0], ints[1], ints[1], ints[2], ints[2]]
    elif len(ints) != 6:
        raise ValueError(f"{name} must be an int or a tuple of 3 or 6 ints, got {bounds!r}")
    a, b, c, d, e, f = ints
    return a, b, c, d, e, f


def _check_padding_mode(mode: PaddingMode) -> None:
    is_number = isinstance(mode, (int, float, np.number)) and not isinstance(mode, bool)
    if not is_number and mode not in _PADDING_MODES:
        raise KeyError(
            f'Padding mode "{mode}" not valid. Valid options are {list(_PADDING_MODES)} or a number'
        )


def _padding_locality(mode: PaddingMode) -> Locality:
    if mode in ("linear_ramp", "empty"):
        return WHOLE_VOLUME
    return Locality(0, statistics=mode in _STATISTIC_MODES, moves_voxels=True)


def _padding_working_bytes(mode: PaddingMode, spec: ImageSpec) -> int:
    """A float32 copy of the input for the mean and the median, and the median's sorted copy."""
    if mode == "mean":
        return spec.channels * spec.voxels * 4
    if mode == "median":
        return 2 * spec.channels * spec.voxels * 4
    return 0


def _padded(data: torch.Tensor, bounds: Bounds, mode: PaddingMode) -> torch.Tensor:
    """``data`` padded as TorchIO's Pad does (numpy.pad; the statistics of the whole volume)."""
    constant: float | None
    if isinstance(mode, (int, float, np.number)):
        constant = float(mode)
    elif mode == "maximum":
        constant = data.max().item()
    elif mode == "mean":
        constant = mean(data)
    elif mode == "median":
        values = data.float()
        if values.numel() <= _QUANTILE_LIMIT:
            constant = torch.quantile(values, 0.5).item()
        else:
            constant = float(np.median(values.numpy()))
    elif mode == "minimum":
        constant = data.min().item()
    else:
        constant = None
    widths = ((0, 0), bounds[:2], bounds[2:4], bounds[4:])
    array = data.numpy()
    if constant is not None:
        padded = np.pad(array, widths, mode="constant", constant_values=constant)
    else:
        padded = np.pad(array, widths, mode=mode)  # type: ignore[call-overload]
    return torch.from_numpy(padded)


def _cropped(data: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    _, x, y, z = data.shape
    x0, x1, y0, y1, z0, z1 = bounds
    return data[:, x0 : x - x1, y0 : y - y1, z0 : z - z1].clone()


def _regridded(image: Image, data: torch.Tensor, affine: np.ndarray) -> Image:
    """``image`` holding ``data`` on the grid of ``affine``."""
    new = image.with_data(data)
    new._header = ImageHeader(new.shape, image.header.read_dtype, affine)
    return new


def _resized_spec(spec: ImageSpec, bounds: Bounds, sign: int) -> ImageSpec:
    """The description after cropping (``sign`` -1) or padding (+1) by ``bounds``."""
    shape = tuple(
        size + sign * (bounds[2 * axis] + bounds[2 * axis + 1])
        for axis, size in enumerate(spec.spatial_shape)
    )
    low = tuple(-sign * bounds[2 * axis] for axis in range(3))
    affine = shift_affine(spec.affine, (low[0], low[1], low[2]))
    return dataclasses.replace(spec, spatial_shape=(shape[0], shape[1], shape[2]), affine=affine)


class _Regridding(_GridPreserving):
    """A transform that changes the grid of the images it applies to (every kind, by default):
    their voxels and affine, as TorchIO's spatial preprocessing does."""

    kind = Image

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        plan = self._plan(subject)
        for name in list(subject.images):
            image = subject.images[name]
            if self._chosen(name, type(image)):
                data, affine = self._regrid(image.data, image.affine, plan)
                subject[name] = _regridded(image, data, affine)
        return subject

    def _plan(self, subject: Subject) -> object:
        """What the transform decides from the whole subject before it changes any image."""
        return None

    def _regrid(
        self, data: torch.Tensor, affine: np.ndarray, plan: object
    ) -> tuple[torch.Tensor, np.ndarray]:
        raise NotImplementedError

    def _regrid_spec(self, spec: ImageSpec) -> ImageSpec | None:
        """The image's description after the transform; None if it cannot be told."""
        raise NotImplementedError

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """Each chosen image with its new shape and affine; dtype and channels are kept."""
        output = dict(images)
        for name, spec in self._chosen_specs(images).items():
            new = self._regrid_spec(spec)
            if new is None:
                return UNKNOWN
            output[name] = new
        return output

    @property
    def locality(self) -> Locality:
        """A patch's voxels come from elsewhere in the input: a coordinate mapping."""
        return Locality(0, moves_voxels=True)

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """One output volume per image (and what padding's statistics need)."""
        output = self.output_spec(images)
        outputs = images if isinstance(output, Unknown) else output
        return [
            VolumeCost(name, outputs[name].nbytes + self._working_bytes(spec), outputs[name].nbytes)
            for name, spec in self._chosen_specs(images).items()
        ]


class Crop(_Regridding):
    """Remove voxels at the ends of each spatial axis of every image (TorchIO's ``Crop``).

    The affine is shifted so that every kept voxel keeps its world position.

    Args:
        cropping: voxels removed at each end: ``n`` for all,
            ``(x, y, z)`` for both ends of each axis, or
            ``(x_ini, x_fin, y_ini, y_fin, z_ini, z_fin)``.
        p: probability of applying the transform.
        include: names of the only images to crop.
        exclude: names of images not to crop.

    Example:
        >>> import torch, shmqueue as sq
        >>> t1 = sq.ScalarImage(torch.zeros(1, 10, 10, 10))
        >>> cropped = sq.Crop((1, 2, 0, 0, 3, 0))(sq.Subject(t1=t1)).t1
        >>> cropped.spatial_shape, cropped.affine[:3, 3].tolist()
        ((7, 10, 7), [1.0, 0.0, 3.0])
    """

    def __init__(
        self,
        cropping: int | Sequence[int],
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.cropping = _parse_bounds(cropping, "cropping")

    def _regrid(
        self, data: torch.Tensor, affine: np.ndarray, plan: object
    ) -> tuple[torch.Tensor, np.ndarray]:
        shape = tuple(data.shape[1:])
        if any(size < 1 for size in self._shape(shape)):
            raise ValueError(f"Crop{self.cropping} cannot crop a volume of shape {shape}")
        low = self.cropping[::2]
        return _cropped(data, self.cropping), shift_affine(affine, (low[0], low[1], low[2]))

    def _shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        c = self.cropping
        return tuple(size - c[2 * axis] - c[2 * axis + 1] for axis, size in enumerate(shape))

    def _regrid_spec(self, spec: ImageSpec) -> ImageSpec | None:
        if any(size < 1 for size in self._shape(spec.spatial_shape)):
            return None  # refused when applied
        return _resized_spec(spec, self.cropping, -1)


class Pad(_Regridding):
    """Add voxels at the ends of each spatial axis of every image (TorchIO's ``Pad``).

    The affine is shifted so that every voxel keeps its world position; dtypes are kept.

    Args:
        padding: voxels added at each end: ``n`` for all, ``(x, y, z)`` for both ends of each
            axis, or ``(x_ini, x_fin, y_ini, y_fin, z_ini, z_fin)``.
        padding_mode: a number (the new voxels' value), or a mode of ``numpy.pad``
            (``'edge'``, ``'reflect'``, ``'symmetric'``, ``'wrap'``...); ``'mean'``,
            ``'median'``, ``'maximum'`` and ``'minimum'`` take the statistic of the whole
            volume, as TorchIO does.
        p: probability of applying the transform.
        include: names of the only images to pad.
        exclude: names of images not to pad.

    Example:
        >>> import torch, shmqueue as sq
        >>> t1 = sq.ScalarImage(torch.ones(1, 2, 1, 1))
        >>> sq.Pad((1, 0, 0), padding_mode=5)(sq.Subject(t1=t1)).t1.data.flatten().tolist()
        [5.0, 1.0, 1.0, 5.0]
    """

    def __init__(
        self,
        padding: int | Sequence[int],
        padding_mode: PaddingMode = 0,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.padding = _parse_bounds(padding, "padding")
        _check_padding_mode(padding_mode)
        self.padding_mode = padding_mode

    def _regrid(
        self, data: torch.Tensor, affine: np.ndarray, plan: object
    ) -> tuple[torch.Tensor, np.ndarray]:
        low = self.padding[::2]
        padded = _padded(data, self.padding, self.padding_mode)
        return padded, shift_affine(affine, (-low[0], -low[1], -low[2]))

    def _regrid_spec(self, spec: ImageSpec) -> ImageSpec | None:
        return _resized_spec(spec, self.padding, 1)

    @property
    def locality(self) -> Locality:
        """A coordinate mapping; a statistic of the whole volume first for ``'mean'``,
        ``'median'``, ``'maximum'`` and ``'minimum'``."""
        return _padding_locality(self.padding_mode)

    def _working_bytes(self, spec: ImageSpec) -> int:
        return _padding_working_bytes(self.padding_mode, spec)


_CropOrPadPlan = tuple[Bounds | None, Bounds | None]  # padding, then cropping


def _halves(amounts: np.ndarray) -> Bounds | None:
    """TorchIO's split of ``amounts`` per axis: the larger half first; None if all are 0."""
    if not amounts.any():
        return None
    result: list[int] = []
    for number in amounts / 2:
        result.extend([int(np.ceil(number)), int(np.floor(number))])
    a, b, c, d, e, f = result
    return a, b, c, d, e, f


class CropOrPad(_Regridding):
    """Crop or pad every image to ``target_shape`` (TorchIO's ``CropOrPad``).

    Without ``mask_name``, the output's centre is the input's (an odd number of voxels to
    remove or add puts the extra one at the start of the axis, as TorchIO does). With
    ``mask_name``, it is the centre of the bounding box of the label map's non-zero voxels (of
    ``labels``); a missing or empty mask falls back to the volume's centre, with a
    RuntimeWarning as in TorchIO. Every voxel keeps its world position (the affine is shifted).

    The output's shape is ``target_shape``, but with ``mask_name`` its affine depends on the
    voxels: its description is then :data:`~shmqueue.specs.UNKNOWN`.

    Args:
        target_shape: ``(X, Y, Z)``, or one int for all three; None for an axis keeps its size.
        padding_mode: as :class:`Pad`'s.
        mask_name: the label map whose bounding box is centred; None for the volume's centre.
        labels: with ``mask_name``, the labels that make the mask; None for every non-zero one.
        p: probability of applying the transform.
        include: names of the only images to crop or pad.
        exclude: names of images not to crop or pad.

    Example:
        >>> import torch, shmqueue as sq
        >>> t1 = sq.ScalarImage(torch.zeros(1, 10, 5, 8))
        >>> sq.CropOrPad((8, 8, 8))(sq.Subject(t1=t1)).t1.spatial_shape
        (8, 8, 8)
    """

    def __init__(
        self,
        target_shape: int | Sequence[int | None],
        padding_mode: PaddingMode = 0,
        mask_name: str | None = None,
        labels: Sequence[int] | None = None,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        values = [target_shape] * 3 if isinstance(target_shape, int) else list(target_shape)
        if len(values) != 3 or any(
            value is not None and (isinstance(value, bool) or int(value) != value or value < 1)
            for value in values
        ):
            raise ValueError(
                f"target_shape must be a positive int or 3 positive ints (or None), got"
                f" {target_shape!r}"
            )
        self.target_shape = tuple(None if value is None else int(value) for value in values)
        _check_padding_mode(padding_mode)
        self.padding_mode = padding_mode
        if mask_name is not None and not isinstance(mask_name, str):
            raise ValueError(f"mask_name must be a string or None, got {mask_name!r}")
        if mask_name is None and labels is not None:
            raise ValueError("labels select the voxels of mask_name: give mask_name too")
        self.mask_name = mask_name
        self.labels = None if labels is None else [int(label) for label in labels]

    def _target(self, shape: Sequence[int]) -> tuple[int, int, int]:
        x, y, z = (
            size if target is None else target for target, size in zip(self.target_shape, shape)
        )
        return x, y, z

    def _centred(self, shape: Sequence[int]) -> _CropOrPadPlan:
        difference = np.array(self._target(shape)) - np.array(shape)
        return _halves(np.maximum(difference, 0)), _halves(-np.minimum(difference, 0))

    def _plan(self, subject: Subject) -> _CropOrPadPlan | None:
        if self.mask_name is None:
            return None  # each image's own shape (the subject's images share one)
        shape = subject.spatial_shape
        mask_image = subject.images.get(self.mask_name)
        if mask_image is None:
            warnings.warn(
                f'Mask name "{self.mask_name}" not found in subject keys'
                f' "{tuple(subject.images)}". Using volume center instead',
                RuntimeWarning,
                stacklevel=2,
            )
            return self._centred(shape)
        if not isinstance(mask_image, LabelMap):
            raise ValueError(f"mask_name {self.mask_name!r} is not a label map of the subject")
        labels = mask_image.data
        if self.labels is None:
            mask = labels.bool()
        else:
            mask = torch.stack([labels == label for label in self.labels]).sum(0).bool()
        mask_data = mask.numpy()[0]
        if not mask_data.any():
            warnings.warn(
                f'All values found in the mask "{self.mask_name}" are zero. Using volume'
                " center instead",
                RuntimeWarning,
                stacklevel=2,
            )
            return self._centred(shape)
        low = np.array([np.flatnonzero(mask_data.any(axis=other))[0] for other in _OTHERS])
        high = np.array([np.flatnonzero(mask_data.any(axis=other))[-1] for other in _OTHERS])
        centre = np.mean((low, high + 1), axis=0)
        target = self._target(shape)
        padding: list[float] = []
        cropping: list[float] = []
        for axis in range(3):
            size, middle, length = target[axis], centre[axis], shape[axis]
            if (not size % 2) ^ (not middle % 1):
                middle -= 0.5
            begin, end = middle - size / 2, middle + size / 2
            padding.extend([0 if begin >= 0 else -begin, 0 if end <= length else end - length])
            cropping.extend([begin if begin >= 0 else 0, length - end if end <= length else 0])
        return _as_bounds(padding), _as_bounds(cropping)

    def _regrid(
        self, data: torch.Tensor, affine: np.ndarray, plan: object
    ) -> tuple[torch.Tensor, np.ndarray]:
        bounds: _CropOrPadPlan = (
            self._centred(data.shape[1:]) if plan is None else plan  # type: ignore[assignment]
        )
        padding, cropping = bounds
        if padding is not None:
            data = _padded(data, padding, self.padding_mode)
            affine = shift_affine(affine, (-padding[0], -padding[2], -padding[4]))
        if cropping is not None:
            data = _cropped(data, cropping)
            affine = shift_affine(affine, (cropping[0], cropping[2], cropping[4]))
        return data, affine

    def _regrid_spec(self, spec: ImageSpec) -> ImageSpec | None:
        if self.mask_name is not None:
            return None  # the affine depends on where the mask lies
        padding, cropping = self._centred(spec.spatial_shape)
        if padding is not None:
            spec = _resized_spec(spec, padding, 1)
        if cropping is not None:
            spec = _resized_spec(spec, cropping, -1)
        return spec

    @property
    def locality(self) -> Locality:
        """As :class:`Pad`'s; the whole volume with ``mask_name`` (the mask's bounding box)."""
        if self.mask_name is not None:
            return WHOLE_VOLUME
        return _padding_locality(self.padding_mode)

    def _working_bytes(self, spec: ImageSpec) -> int:
        return _padding_working_bytes(self.padding_mode, spec)


_OTHERS = ((1, 2), (0, 2), (0, 1))
"""For each spatial axis of an ``(X, Y, Z)`` array, the two others."""


def _as_bounds(values: Sequence[float]) -> Bounds | None:
    ints = np.asarray(values, dtype=int)
    if not ints.any():
        return None
    a, b, c, d, e, f = (int(value) for value in ints.tolist())
    return a, b, c, d, e, f


class EnsureShapeMultiple(CropOrPad):
    """Pad (or crop) every image, about its centre, to a shape whose sizes are multiples of
    ``target_multiple`` (TorchIO's ``EnsureShapeMultiple``): e.g. 8 for a U-Net with three
    poolings.

    Args:
        target_multiple: ``(n_x, n_y, n_z)``, or one int for all three.
        method: ``'pad'`` (up to the next multiple) or ``'crop'`` (down to the previous one; at
            least 1).
        p: probability of applying the transform.
        include: names of the only images to change.
        exclude: names of images not to change.

    Example:
        >>> import torch, shmqueue as sq
        >>> t1 = sq.ScalarImage(torch.zeros(1, 181, 217, 181))
        >>> sq.EnsureShapeMultiple(8)(sq.Subject(t1=t1)).t1.spatial_shape
        (184, 224, 184)
    """

    def __init__(
        self,
        target_multiple: int | Sequence[int],
        method: str = "pad",
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(1, 0, None, None, p, include, exclude)
        values = (
            [target_multiple] * 3 if isinstance(target_multiple, int) else list(target_multiple)
        )
        if len(values) != 3 or any(int(value) != value or value < 1 for value in values):
            raise ValueError(f"target_multiple must be positive ints, got {target_multiple!r}")
        if method not in ("crop", "pad"):
            raise ValueError('Method must be "crop" or "pad"')
        self.target_multiple = tuple(int(value) for value in values)
        self.method = method

    def _target(self, shape: Sequence[int]) -> tuple[int, int, int]:
        round_ = np.floor if self.method == "crop" else np.ceil
        x, y, z = (
            max(int(round_(size / multiple)) * multiple, 1)
            for size, multiple in zip(shape, self.target_multiple)
        )
        return x, y, z


def orientation_code(orientation: str) -> str:
    """``orientation`` as an upper-case three-letter code naming, for each voxel axis, the
    direction it points to: one of R/L, one of A/P and one of S/I.

    Raises:
        ValueError: it is not such a code (the message names it).

    Example:
        >>> orientation_code("lps")
        'LPS'
    """
    code = orientation.upper() if isinstance(orientation, str) else ""
    pairs = ("RL", "AP", "SI")
    covered = sorted(index for letter in code for index, pair in enumerate(pairs) if letter in pair)
    if len(code) != 3 or covered != [0, 1, 2]:
        raise ValueError(
            f"An orientation is three letters, one of R or L, one of A or P and one of S or I"
            f" (e.g. 'RAS', 'LPS', 'PIR'); got {orientation!r}."
        )
    return code


class Reorient(_Regridding):
    """Reorient every image to ``orientation`` (TorchIO 2.0's ``Reorient``; 1.x's
    ``ToOrientation``): permute and flip its voxel axes so that they point nearest to the
    directions the code names, and change the affine so that every voxel keeps its world
    position. An image already so oriented is kept as it is.

    Args:
        orientation: three letters, one per voxel axis, each the direction it points to: one
            of R/L, one of A/P, one of S/I (``"RAS"``, ``"LPS"``, ``"PIR"``, ...).
        p: probability of applying the transform.
        include: names of the only images to reorient.
        exclude: names of images not to reorient.

    Example:
        >>> import numpy as np, torch, shmqueue as sq
        >>> las = sq.ScalarImage(torch.zeros(1, 4, 5, 6), affine=np.diag([-1.0, 1, 1, 1]))
        >>> lps = sq.Reorient("LPS")(sq.Subject(t1=las)).t1
        >>> lps.affine[1].tolist(), lps.spatial_shape
        ([0.0, -1.0, 0.0, 4.0], (4, 5, 6))
    """

    def __init__(
        self,
        orientation: str = "RAS",
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__(p, include, exclude)
        self.orientation = orientation_code(orientation)

    def _orientation(
        self, affine: np.ndarray, shape: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The axes' reordering (nibabel's ``ornt_transform``) and the new affine."""
        current = orientations.io_orientation(affine)
        target = orientations.axcodes2ornt(tuple(self.orientation))
        transform = orientations.ornt_transform(current, target)
        return transform, affine @ orientations.inv_ornt_aff(transform, tuple(shape))

    def _is_oriented(self, affine: np.ndarray) -> bool:
        return "".join(orientations.aff2axcodes(affine)) == self.orientation

    def _regrid(
        self, data: torch.Tensor, affine: np.ndarray, plan: object
    ) -> tuple[torch.Tensor, np.ndarray]:
        if self._is_oriented(affine):
            return data, affine
        transform, new_affine = self._orientation(affine, data.shape[1:])
        flips = [axis + 1 for axis in range(3) if transform[axis, 1] == -1]
        if flips:
            data = torch.flip(data, flips)
        order = np.argsort(transform[:, 0]).tolist()
        reoriented = data.permute(0, *(axis + 1 for axis in order)).contiguous()
        return reoriented, new_affine

    def _regrid_spec(self, spec: ImageSpec) -> ImageSpec | None:
        if self._is_oriented(spec.affine):
            return spec
        transform, affine = self._orientation(spec.affine, spec.spatial_shape)
        order = np.argsort(transform[:, 0]).tolist()
        x, y, z = (spec.spatial_shape[axis] for axis in order)
        return dataclasses.replace(spec, spatial_shape=(x, y, z), affine=affine)

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """The flipped copy and the reordered one."""
        return [
            VolumeCost(name, 2 * spec.nbytes, spec.nbytes)
            for name, spec in self._chosen_specs(images).items()
        ]


class ToCanonical(Reorient):
    """Reorient every image to RAS+ (TorchIO's ``ToCanonical``): :class:`Reorient` to
    ``"RAS"``.

    Example:
        >>> import numpy as np, torch, shmqueue as sq
        >>> las = sq.ScalarImage(torch.zeros(1, 4, 5, 6), affine=np.diag([-1.0, 1, 1, 1]))
        >>> ras = sq.ToCanonical()(sq.Subject(t1=las)).t1
        >>> ras.affine[0].tolist(), ras.spatial_shape
        ([1.0, 0.0, 0.0, -3.0], (4, 5, 6))
    """

    def __init__(
        self,
        p: float = 1.0,
        include: Sequence[str] | None = None,
        exclude: Sequence[str] | None = None,
    ) -> None:
        super().__init__("RAS", p, include, exclude)


class ToOrientation(Reorient):
    """TorchIO 1.x's name for :class:`Reorient`."""
