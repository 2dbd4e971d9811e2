"""SubjectsLoader: a DataLoader that batches patch Subjects.

Over a shmqueue :class:`~shmqueue.Queue` it iterates :meth:`Queue.batches`, which copies each
batch straight out of the shared-memory ring (the queue has its own workers, so the loader has
none). Over any other dataset of Subjects it is a plain DataLoader with
:func:`~shmqueue.collate_subjects`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch.utils.data import DataLoader, Dataset

from .batch import Batch, collate_subjects
from .queue import Queue


class SubjectsLoader(DataLoader[Any]):
    """Batches of patches: ``batch.t1.data`` is ``(batch_size, C, X, Y, Z)``.

    Example:
        >>> import torch, shmqueue as sq
        >>> subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 32, 32, 32)))] * 2
        >>> queue = sq.Queue(subjects, sq.UniformSampler(None, 16), max_length=4,
        ...                  patches_per_volume=4, seed=0)
        >>> [batch.t1.data.shape[0] for batch in sq.SubjectsLoader(queue, batch_size=3)]
        [3, 3, 2]
    """

    def __init__(self, dataset: Dataset[Any], batch_size: int = 1, **kwargs: Any) -> None:
        if isinstance(dataset, Queue):
            if kwargs.get("num_workers", 0) != 0:
                raise ValueError(
                    "A shmqueue Queue has its own worker processes: pass num_workers to the"
                    " Queue, not to the SubjectsLoader."
                )
            if kwargs.get("shuffle"):
                raise ValueError(
                    "The Queue shuffles (shuffle_subjects, shuffle_patches); a SubjectsLoader"
                    " over it cannot shuffle."
                )
        kwargs.setdefault("collate_fn", collate_subjects)
        super().__init__(dataset, batch_size=batch_size, **kwargs)

    def __iter__(self) -> Iterator[Batch]:  # type: ignore[override]
        if isinstance(self.dataset, Queue):
            assert self.batch_size is not None
            return self.dataset.batches(self.batch_size, self.drop_last, self.pin_memory)
        return super().__iter__()

    def __len__(self) -> int:
        if isinstance(self.dataset, Queue):
            assert self.batch_size is not None
            full, rest = divmod(len(self.dataset), self.batch_size)
            return full + (1 if rest and not self.drop_last else 0)
        return super().__len__()
