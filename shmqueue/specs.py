"""Descriptions without voxels: what an image is, and what a transform step does with it.

The queue lays out its ring, checks its subjects and estimates its memory before any voxel is
read, from the images' headers (:mod:`shmqueue.catalog`). To plan past a transform it asks the
transform, which answers in these terms (:class:`~shmqueue.Transform`): the description of its
output given its input's (:class:`ImageSpec` per image, or :data:`UNKNOWN`), how much of the
volume it needs to give a patch's voxels (:class:`Locality`), and what it allocates
(:class:`VolumeCost`). Samplers state their working memory from the same descriptions.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .image import Image


@dataclass(frozen=True, eq=False)
class ImageSpec:
    """One image as a transform step sees it before any voxel is read.

    Equal (and hashed alike) when every field is, the affine compared value by value.

    Attributes:
        kind: the image's class (:class:`~shmqueue.ScalarImage`, :class:`~shmqueue.LabelMap`),
            which decides what a transform applies to.
        channels: the number of channels.
        spatial_shape: ``(X, Y, Z)``.
        dtype: the dtype of the image's data.
        affine: the 4x4 voxel-to-world matrix (a read-only float64 copy).

    Example:
        >>> import numpy as np, torch, shmqueue as sq
        >>> spec = ImageSpec(sq.ScalarImage, 2, (10, 10, 4), torch.float32, np.diag([2, 2, 3, 1]))
        >>> spec.nbytes, spec.spacing
        (3200, (2.0, 2.0, 3.0))
    """

    kind: type[Image]
    channels: int
    spatial_shape: tuple[int, int, int]
    dtype: torch.dtype
    affine: np.ndarray

    def __post_init__(self) -> None:
        affine = np.array(self.affine, dtype=np.float64)
        if affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got shape {affine.shape}")
        affine.setflags(write=False)
        object.__setattr__(self, "affine", affine)

    def _key(self) -> tuple[Any, ...]:
        affine = tuple(self.affine.ravel().tolist())
        return (self.kind, self.channels, self.spatial_shape, self.dtype, affine)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ImageSpec):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    @property
    def voxels(self) -> int:
        """Spatial voxels: ``X * Y * Z``."""
        x, y, z = self.spatial_shape
        return x * y * z

    @property
    def nbytes(self) -> int:
        """Bytes of the image's data: every channel of every voxel."""
        return self.channels * self.voxels * self.dtype.itemsize

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in world units along each axis, from the affine."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))


SubjectSpec = Mapping[str, ImageSpec]
"""A subject's images, by name, as :class:`ImageSpec` descriptions."""


class Unknown(enum.Enum):
    """The type of :data:`UNKNOWN`."""

    UNKNOWN = "unknown"


UNKNOWN = Unknown.UNKNOWN
"""What a transform says of its output when it cannot tell it from its input's description (a
:class:`~shmqueue.Lambda`, a plain callable)."""


@dataclass(frozen=True)
class Locality:
    """How much of the volume a transform needs to give the voxels of one patch.

    Attributes:
        margin: voxels of neighbourhood on each side of a patch that its values depend on (0:
            each voxel depends on itself only); None: the whole volume (the transform cannot be
            evaluated on a patch).
        statistics: it first needs statistics of the whole volume, computed once per subject
            (e.g. ZNormalization's mean and standard deviation); then it works voxel by voxel.
        moves_voxels: it is a coordinate mapping (e.g. Flip): a patch's voxels come from
            elsewhere in its input, where the mapping sends them.
    """

    margin: int | None
    statistics: bool = False
    moves_voxels: bool = False

    @property
    def patchwise(self) -> bool:
        """Whether the transform can be evaluated on a patch (and its margin)."""
        return self.margin is not None

    def then(self, later: Locality) -> Locality:
        """This step followed by ``later``: neighbourhoods add up; the whole volume if either
        step needs it.

        Example:
            >>> Locality(1).then(Locality(2, statistics=True))
            Locality(margin=3, statistics=True, moves_voxels=False)
        """
        if self.margin is None or later.margin is None:
            return WHOLE_VOLUME
        return Locality(
            self.margin + later.margin,
            self.statistics or later.statistics,
            self.moves_voxels or later.moves_voxels,
        )


WHOLE_VOLUME = Locality(None)
"""Needs the whole volume: what a transform that says nothing of itself is taken to need."""

VOXELWISE = Locality(0)
"""Each output voxel depends on the same input voxel only (e.g. Noise)."""


@dataclass(frozen=True)
class VolumeCost:
    """What a transform step allocates for one image, as the memory estimator counts it.

    A step makes its images' new volumes one after the other; its input's volumes are freed when
    it returns (see :func:`~shmqueue.transforms.transform_steps`).

    Attributes:
        image: the image's name.
        peak: bytes alive at once while the step makes the image's new volume, that volume
            included (e.g. two volumes for ``(data - mean) / std``).
        output: bytes of the new volume, which replaces the image's.
    """

    image: str
    peak: int
    output: int
