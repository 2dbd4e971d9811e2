"""SlotLayout: where each image's patch and each slot's metadata lie in the ring.

The layout is computed once from headers (channels and loaded dtype of each image, the patch
size) and shared by the ring (which allocates ``ring_bytes``), the workers (which write into it),
the consumer (which reads batches out of it) and the memory estimator, so they cannot disagree.

Ring bytes: ``[metadata: max_length x METADATA_FIELDS int64][slot 0][slot 1]...``; each slot holds
the images' patches one after the other, each aligned to ``ALIGNMENT`` bytes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum

import torch

ALIGNMENT = 64
PAGE = 4096


class MetadataField(IntEnum):
    """Columns of the per-slot int64 metadata row, written by the worker that fills the slot."""

    EPOCH = 0
    POSITION = 1
    SUBJECT_INDEX = 2
    PATCH = 3
    INDEX_I = 4
    INDEX_J = 5
    INDEX_K = 6


METADATA_FIELDS = len(MetadataField)


def _align(size: int, alignment: int) -> int:
    return -(-size // alignment) * alignment


@dataclass(frozen=True)
class PatchField:
    """One image's patch inside a slot: ``(channels, *patch_size)`` of ``dtype`` at ``offset``."""

    name: str
    channels: int
    dtype: torch.dtype
    offset: int
    nbytes: int


@dataclass(frozen=True)
class SlotLayout:
    """The byte layout of a ring of ``max_length`` slots for patches of ``patch_size``."""

    patch_size: tuple[int, int, int]
    fields: tuple[PatchField, ...]
    slot_bytes: int
    max_length: int

    @classmethod
    def build(
        cls,
        patch_size: tuple[int, int, int],
        images: Mapping[str, tuple[int, torch.dtype]],
        max_length: int,
    ) -> SlotLayout:
        """Lay out ``images`` (name -> (channels, dtype)) in slots of ``max_length``."""
        voxels = math.prod(patch_size)
        fields = []
        offset = 0
        for name, (channels, dtype) in images.items():
            nbytes = channels * voxels * dtype.itemsize
            fields.append(PatchField(name, channels, dtype, offset, nbytes))
            offset += _align(nbytes, ALIGNMENT)
        return cls(patch_size, tuple(fields), offset, max_length)

    def field(self, name: str) -> PatchField:
        return next(field for field in self.fields if field.name == name)

    @property
    def images(self) -> dict[str, tuple[int, torch.dtype]]:
        """What a slot holds of each image, name -> (channels, dtype): :meth:`build`'s input."""
        return {field.name: (field.channels, field.dtype) for field in self.fields}

    def patch_shape(self, field: PatchField) -> tuple[int, int, int, int]:
        return (field.channels, *self.patch_size)

    @property
    def metadata_bytes(self) -> int:
        return _align(self.max_length * METADATA_FIELDS * 8, ALIGNMENT)

    @property
    def patch_bytes(self) -> int:
        """Bytes of patch data in the whole ring (TorchIO's ``max_memory`` meaning)."""
        return self.max_length * self.slot_bytes

    @property
    def ring_bytes(self) -> int:
        """Bytes to allocate: metadata plus every slot, rounded up to whole pages."""
        return _align(self.metadata_bytes + self.patch_bytes, PAGE)
