"""SubjectsDataset: whole subjects, loaded and transformed, as a map-style torch Dataset.

TorchIO 1.x's ``SubjectsDataset``: ``dataset[i]`` is subject ``i`` with its voxels read and the
transform applied. A :class:`~shmqueue.Queue` accepts one as its subjects (the transform then
runs in the queue's workers, seeded from ``(seed, epoch, subject)``); iterated by a
:class:`~shmqueue.SubjectsLoader`, it is the whole-volume loader for validation and inference.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch.utils.data import Dataset

from .adapters.base import refuse_foreign_transforms
from .errors import SubjectProcessingError
from .subject import Subject
from .transforms import SubjectTransform, apply_transform, fresh_generator, transform_steps


class SubjectsDataset(Dataset[Subject]):
    """Subjects, each loaded and transformed when it is read.

    Each read draws its augmentation from a fresh generator, as a plain DataLoader's workers
    would; plain callables among the transforms run with the global generators seeded from it
    (see :func:`~shmqueue.transforms.apply_transform`), so DataLoader workers do not repeat each
    other.

    Args:
        subjects: the subjects (files are read only when a subject is read).
        transform: applied to each loaded subject; a shmqueue transform, an adapter, or any
            callable ``Subject -> Subject``.

    Raises:
        SubjectProcessingError: reading: loading or transforming a subject failed; the message
            names the subject and ``__cause__`` is the original error.

    Example:
        >>> import torch, shmqueue as sq
        >>> subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)))] * 3
        >>> dataset = sq.SubjectsDataset(subjects, transform=sq.ZNormalization())
        >>> len(dataset), dataset[0].t1.data.shape
        (3, torch.Size([1, 8, 8, 8]))
        >>> [batch.t1.data.shape[0] for batch in sq.SubjectsLoader(dataset, batch_size=2)]
        [2, 1]
    """

    def __init__(
        self, subjects: Sequence[Subject], transform: SubjectTransform | None = None
    ) -> None:
        self.subjects = subjects
        refuse_foreign_transforms(transform)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.subjects)

    def __getitem__(self, index: int) -> Subject:
        source = self.subjects[index]
        try:
            subject = source.copy()
            subject.load()
            generator = fresh_generator()
            for step in transform_steps(self.transform, generator):
                subject = apply_transform(step, subject, generator)
        except Exception as error:
            raise SubjectProcessingError(
                f"Reading {source.describe(index)} from a SubjectsDataset failed:"
                f" {type(error).__name__}: {error}"
            ) from error
        return subject

    def __repr__(self) -> str:
        return f"SubjectsDataset(num_subjects={len(self)}, transform={self.transform!r})"
