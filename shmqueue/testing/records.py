"""Patch records: what a patch carries, as comparable values, and how two patches differ.

The queue checker identifies patches by content, not by a provenance tag: a record's
:class:`PatchKey` holds the location, the metadata and a digest of every image's bytes (dtype and
shape included), so two patches have equal keys exactly when they are bit for bit the same patch.
Patches that are truly identical (e.g. the same subject listed twice, or a sampler that drew one
location twice) are interchangeable, which is all an epoch's multiset can tell apart anyway; this
works the same for patch Subjects and for batch rows, and needs nothing from the queue's internals.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..batch import Batch, BatchImage
from ..constants import LOCATION
from ..sampling.base import PATCH_LOCATION_KEY, PatchLocation
from ..subject import Subject


def tensor_digest(tensor: torch.Tensor) -> str:
    """A hex digest of a tensor's raw bytes (bit for bit: NaNs and signed zeros included)."""
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
    return hashlib.blake2b(raw.numpy().tobytes(), digest_size=16).hexdigest()


def _fingerprint(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor({value.dtype}, {tuple(value.shape)}, {tensor_digest(value)})"
    if isinstance(value, np.ndarray):
        return f"array({value.dtype}, {value.shape}, {tensor_digest(torch.from_numpy(value))})"
    return repr(value)


@dataclass(frozen=True)
class ImageKey:
    """One image of a patch as comparable values."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    digest: str


@dataclass(frozen=True)
class PatchKey:
    """Everything that identifies a patch: equal keys mean bit-for-bit equal patches."""

    location: PatchLocation
    metadata: tuple[tuple[str, str], ...]
    images: tuple[ImageKey, ...]


@dataclass
class PatchRecord:
    """A patch's key with its tensors, affines and metadata, to describe differences."""

    key: PatchKey
    data: dict[str, torch.Tensor]
    affines: dict[str, np.ndarray]
    metadata: dict[str, Any]

    @classmethod
    def build(
        cls,
        location: PatchLocation,
        data: Mapping[str, torch.Tensor],
        affines: Mapping[str, np.ndarray],
        metadata: Mapping[str, Any],
    ) -> PatchRecord:
        """A record of a patch at ``location`` with these images, affines and metadata."""
        metadata = {
            key: value
            for key, value in metadata.items()
            if key not in (PATCH_LOCATION_KEY, LOCATION)
        }
        key = PatchKey(
            location,
            tuple(sorted((name, _fingerprint(value)) for name, value in metadata.items())),
            tuple(
                ImageKey(name, tensor.dtype, tuple(tensor.shape), tensor_digest(tensor))
                for name, tensor in sorted(data.items())
            ),
        )
        return cls(key, dict(data), dict(affines), metadata)

    @classmethod
    def from_patch(cls, patch: Subject) -> PatchRecord:
        """The record of a patch Subject (as the queue yields)."""
        images = patch.images
        return cls.build(
            patch[PATCH_LOCATION_KEY],
            {name: image.data for name, image in images.items()},
            {name: image.affine for name, image in images.items()},
            patch.metadata,
        )

    @property
    def location(self) -> PatchLocation:
        return self.key.location

    def describe(self) -> str:
        """``"patch at (3, 0, 5)"`` with the subject's name when it has one."""
        name = next(
            (self.metadata[key] for key in ("name", "subject_id", "id") if key in self.metadata),
            None,
        )
        owner = f" of '{name}'" if name is not None else ""
        return f"patch{owner} at {self.location.index}"


def batch_records(batch: Batch) -> Iterator[PatchRecord]:
    """One record per row of a :class:`~shmqueue.Batch` (as ``SubjectsLoader`` yields)."""
    images = {key: value for key, value in batch.items() if isinstance(value, BatchImage)}
    metadata_keys = [
        key for key in batch if key not in images and key not in (PATCH_LOCATION_KEY, LOCATION)
    ]
    for row, location in enumerate(batch[PATCH_LOCATION_KEY]):
        yield PatchRecord.build(
            location,
            {name: image.data[row] for name, image in images.items()},
            {name: image.affine[row].numpy() for name, image in images.items()},
            {key: batch[key][row] for key in metadata_keys},
        )


def _first_difference(found: torch.Tensor, expected: torch.Tensor) -> str:
    found, expected = found.contiguous(), expected.contiguous()
    differs = found.view(torch.uint8) != expected.view(torch.uint8)
    if found.dtype.itemsize > 1:
        differs = differs.reshape(*found.shape, found.dtype.itemsize).any(dim=-1)
    count = int(differs.sum())
    first = tuple(int(i) for i in torch.nonzero(differs)[0])
    return (
        f"{count} of {found.numel()} voxels differ; the first at (c, x, y, z) = {first}:"
        f" {found[first].item()!r}, expected {expected[first].item()!r}"
    )


def describe_difference(found: PatchRecord, expected: PatchRecord) -> str:
    """What differs between a yielded patch and the expected one, in words."""
    parts = []
    if found.location != expected.location:
        parts.append(f"location {found.location.index}, expected {expected.location.index}")
    if found.key.metadata != expected.key.metadata:
        found_meta, expected_meta = dict(found.key.metadata), dict(expected.key.metadata)
        for key in sorted(set(found_meta) | set(expected_meta)):
            if found_meta.get(key) != expected_meta.get(key):
                parts.append(
                    f"metadata '{key}' is {found_meta.get(key, '<missing>')}, expected"
                    f" {expected_meta.get(key, '<missing>')}"
                )
    for name in sorted(set(found.data) | set(expected.data)):
        if name not in found.data or name not in expected.data:
            where = "yielded patch" if name not in found.data else "expected patch"
            parts.append(f"image '{name}' is missing from the {where}")
            continue
        have, want = found.data[name], expected.data[name]
        if have.dtype != want.dtype:
            parts.append(f"image '{name}' has dtype {have.dtype}, expected {want.dtype}")
        elif have.shape != want.shape:
            parts.append(f"image '{name}' has shape {tuple(have.shape)}, expected {want.shape}")
        elif tensor_digest(have) != tensor_digest(want):
            parts.append(f"image '{name}': {_first_difference(have, want)}")
    parts.extend(describe_affine_difference(found, expected))
    return "; ".join(parts) if parts else "no difference"


def describe_affine_difference(found: PatchRecord, expected: PatchRecord) -> list[str]:
    """One line per image whose affine differs, with both affines' translations."""
    lines = []
    for name in sorted(set(found.affines) & set(expected.affines)):
        have, want = found.affines[name], expected.affines[name]
        if not np.array_equal(have, want):
            lines.append(
                f"image '{name}' has an affine with translation {have[:3, 3].tolist()} and"
                f" linear part {have[:3, :3].tolist()}, expected {want[:3, 3].tolist()} and"
                f" {want[:3, :3].tolist()}"
            )
    return lines
