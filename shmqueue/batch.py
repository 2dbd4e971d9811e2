"""Batches of patches: attribute access to stacked images, affines, locations and metadata.

``batch.t1.data`` is ``(B, C, X, Y, Z)``, ``batch.t1.affine`` ``(B, 4, 4)``, ``batch.t1.path`` a
list;
``batch.patch_location`` a list of :class:`~shmqueue.PatchLocation` and ``batch.location`` the same
as a ``(B, 6)`` tensor of ``[i0, j0, k0, i1, j1, k1]`` (TorchIO's format); every other metadata key
is a list with one value per patch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from .sampling.base import PATCH_LOCATION_KEY, PatchLocation
from .subject import Subject

LOCATION_KEY = "location"


class _AttributeDict(dict[str, Any]):
    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key '{key}'") from None


class BatchImage(_AttributeDict):
    """One image across a batch: ``data`` (B, C, X, Y, Z), ``affine`` (B, 4, 4), ``path`` (list)."""


class Batch(_AttributeDict):
    """A batch of patches: images by name, locations, and metadata as lists."""

    @classmethod
    def build(
        cls,
        data: Mapping[str, torch.Tensor],
        affines: Mapping[str, Sequence[np.ndarray]],
        paths: Mapping[str, Sequence[Any]],
        metadata: Sequence[Mapping[str, Any]],
        locations: Sequence[PatchLocation],
    ) -> Batch:
        """Assemble a batch from per-image stacks and per-patch metadata and locations."""
        batch = cls()
        # Subjects may differ in their metadata keys: a key a patch lacks is None in its row.
        for key in dict.fromkeys(key for entry in metadata for key in entry):
            batch[key] = [entry.get(key) for entry in metadata]
        for name, stacked in data.items():
            batch[name] = BatchImage(
                data=stacked,
                affine=torch.from_numpy(np.stack(affines[name])),
                path=[None if path is None else str(path) for path in paths[name]],
            )
        batch[PATCH_LOCATION_KEY] = list(locations)
        batch[LOCATION_KEY] = torch.tensor(
            [location.index + location.stop for location in locations], dtype=torch.int64
        ).reshape(len(locations), 6)
        return batch


def collate_subjects(patches: Sequence[Subject]) -> Batch:
    """Stack patch Subjects into a :class:`Batch` (the ``collate_fn`` for a plain DataLoader).

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 16, 16, 16)))
        >>> patches = list(sq.UniformSampler(subject, 8, num_patches=4))
        >>> sq.collate_subjects(patches).t1.data.shape
        torch.Size([4, 1, 8, 8, 8])
    """
    if not patches:
        raise ValueError("collate_subjects needs at least one patch")
    names = list(patches[0].images)
    return Batch.build(
        data={name: torch.stack([patch[name].data for patch in patches]) for name in names},
        affines={name: [patch[name].affine for patch in patches] for name in names},
        paths={name: [patch[name].path for patch in patches] for name in names},
        metadata=[
            {k: v for k, v in patch.metadata.items() if k != PATCH_LOCATION_KEY}
            for patch in patches
        ],
        locations=[patch[PATCH_LOCATION_KEY] for patch in patches],
    )
