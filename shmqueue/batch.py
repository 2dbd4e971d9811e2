"""Batches of patches or whole volumes: attribute access to stacked images, affines, locations
and metadata.

``batch.t1.data`` is ``(B, C, X, Y, Z)``, ``batch.t1.affine`` ``(B, 4, 4)``, ``batch.t1.path`` and
``batch.t1.type`` lists (the keys are TorchIO's: ``batch["t1"][tio.DATA]`` works, see
:mod:`shmqueue.constants`); for patches, ``batch.patch_location`` is a list of
:class:`~shmqueue.PatchLocation` and ``batch.location`` the same as a ``(B, 6)`` tensor of
``[i0, j0, k0, i1, j1, k1]`` (TorchIO's format); every other metadata key is a list with one value
per row. A batch holds only dicts, lists, tensors, NamedTuples and plain values, so libraries
that move batches to a device (PyTorch Lightning) can rebuild it.

Importing this module also teaches torch's ``default_collate`` to collate Subjects with
:func:`collate_subjects`, so that a plain ``DataLoader`` over a queue or a
:class:`~shmqueue.SubjectsDataset` gives the same batches as a :class:`~shmqueue.SubjectsLoader`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data._utils.collate import default_collate_fn_map

from .constants import AFFINE, DATA, LOCATION, PATH, TYPE
from .sampling.base import PATCH_LOCATION_KEY, PatchLocation
from .subject import Subject


class _AttributeDict(dict[str, Any]):
    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key '{key}'") from None


class BatchImage(_AttributeDict):
    """One image across a batch: ``data`` (B, C, X, Y, Z), ``affine`` (B, 4, 4), ``path`` and
    ``type`` (lists)."""


class Batch(_AttributeDict):
    """A batch of patches (or whole volumes): images by name, locations, and metadata as lists."""

    @classmethod
    def build(
        cls,
        data: Mapping[str, torch.Tensor],
        affines: Mapping[str, Sequence[np.ndarray]],
        paths: Mapping[str, Sequence[Any]],
        types: Mapping[str, str],
        metadata: Sequence[Mapping[str, Any]],
        locations: Sequence[PatchLocation] | None,
    ) -> Batch:
        """Assemble a batch from per-image stacks, each image's type, and per-row metadata and
        locations (None for whole volumes, which have no location)."""
        batch = cls()
        # Subjects may differ in their metadata keys: a key a row lacks is None in it.
        for key in dict.fromkeys(key for entry in metadata for key in entry):
            batch[key] = [entry.get(key) for entry in metadata]
        for name, stacked in data.items():
            batch[name] = BatchImage(
                {
                    DATA: stacked,
                    AFFINE: torch.from_numpy(np.stack(affines[name])),
                    PATH: [None if path is None else str(path) for path in paths[name]],
                    TYPE: [types[name]] * len(stacked),
                }
            )
        if locations is not None:
            batch[PATCH_LOCATION_KEY] = list(locations)
            batch[LOCATION] = torch.tensor(
                [location.index + location.stop for location in locations], dtype=torch.int64
            ).reshape(len(locations), 6)
        return batch


def collate_subjects(subjects: Sequence[Subject]) -> Batch:
    """Stack patch Subjects, or whole-volume Subjects of one shape, into a :class:`Batch`.

    The ``collate_fn`` of :class:`~shmqueue.SubjectsLoader`, and what torch's ``default_collate``
    calls on Subjects once shmqueue is imported. Patches (from a sampler or a queue) carry their
    locations into the batch; whole volumes (e.g. a :class:`~shmqueue.SubjectsDataset` for
    validation) have none, and stack only if they share a shape.

    Raises:
        ValueError: no subjects; some are patches and some whole volumes; or an image's shape
            differs between them (the message lists them).

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 16, 16, 16)))
        >>> patches = list(sq.UniformSampler(subject, 8, num_patches=4))
        >>> sq.collate_subjects(patches).t1.data.shape
        torch.Size([4, 1, 8, 8, 8])
        >>> sq.collate_subjects([subject, subject])["t1"][sq.DATA].shape
        torch.Size([2, 1, 16, 16, 16])
    """
    if not subjects:
        raise ValueError("collate_subjects needs at least one subject")
    with_location = [PATCH_LOCATION_KEY in subject for subject in subjects]
    if any(with_location) and not all(with_location):
        raise ValueError(
            f"collate_subjects got {sum(with_location)} patches and"
            f" {len(subjects) - sum(with_location)} whole volumes in one batch; batch one kind"
            " at a time."
        )
    first = subjects[0]
    names = list(first.images)
    return Batch.build(
        data={name: _stack(name, subjects) for name in names},
        affines={name: [subject[name].affine for subject in subjects] for name in names},
        paths={name: [subject[name].path for subject in subjects] for name in names},
        types={name: first[name].type for name in names},
        metadata=[
            {k: v for k, v in subject.metadata.items() if k != PATCH_LOCATION_KEY}
            for subject in subjects
        ],
        locations=[subject[PATCH_LOCATION_KEY] for subject in subjects]
        if all(with_location)
        else None,
    )


def _stack(name: str, subjects: Sequence[Subject]) -> torch.Tensor:
    shapes = [tuple(subject[name].data.shape) for subject in subjects]
    if len(set(shapes)) > 1:
        listing = ", ".join(
            f"row {row}, {subject.describe()}: {shape}"
            for row, (subject, shape) in enumerate(zip(subjects, shapes))
        )
        raise ValueError(
            f"Cannot stack image '{name}' of different shapes into one batch ({listing}). Use"
            " batch_size=1 for whole volumes of different shapes, or crop or pad them to one"
            " shape first."
        )
    return torch.stack([subject[name].data for subject in subjects])


def _collate_for_torch(
    subjects: Sequence[Subject], *, collate_fn_map: Mapping[type, Callable[..., Any]] | None = None
) -> Batch:
    return collate_subjects(subjects)


# torch's default_collate looks a value's type up in this table before anything else; without
# the entry it fails on shmqueue's Image objects with a message that does not say what to use.
default_collate_fn_map[Subject] = _collate_for_torch
