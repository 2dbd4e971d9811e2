"""Pinning: whether batches go to page-locked memory; without a GPU, warn once per queue."""

from __future__ import annotations

import warnings

import torch

from .batch import Batch


class Pinning:
    """Answers ``pin_memory=True`` for one queue: pin with a GPU, else warn once and do not."""

    def __init__(self) -> None:
        self._warned = False

    def wanted(self, pin_memory: bool) -> bool:
        """True if batches should be pinned: asked for, and possible (a GPU is available).

        Called by a source's ``batches`` generator, so the warning points at the code that
        iterates :meth:`shmqueue.Queue.batches` (e.g. the training loop over a SubjectsLoader).
        """
        if not pin_memory:
            return False
        if torch.cuda.is_available():
            return True
        if not self._warned:
            warnings.warn(
                "pin_memory=True but no GPU is available: batches are not pinned", stacklevel=4
            )
            self._warned = True
        return False


def pin_batch(batch: Batch) -> Batch:
    """``batch`` with every image's data moved to pinned memory (one more copy per tensor)."""
    for value in batch.values():
        if isinstance(value, dict) and "data" in value:
            value["data"] = value["data"].pin_memory()
    return batch
