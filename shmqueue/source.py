"""PatchSource: where a queue's patches come from, in the training process or out of the engine.

A :class:`~shmqueue.Queue` holds one source: :class:`~shmqueue.in_process.InProcessSource`
(``num_workers=0``, the reference) or :class:`~shmqueue.engine.consumer.EngineSource` (worker
processes and the shared-memory ring). The queue owns the lifecycle: it plans each epoch, checks
that the iterator asking is the live one (contract 1) and closes the source; a source only turns
an epoch's plan into patches or batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .batch import Batch
    from .engine.coordinator import Coordinator
    from .plan import EpochPlan
    from .stats import QueueStats
    from .subject import Subject


class PatchSource(Protocol):
    """The contract both sources keep; :class:`~shmqueue.Queue` asks nothing else of them."""

    @property
    def stats(self) -> QueueStats:
        """What the source has done so far (see :meth:`shmqueue.Queue.stats`)."""
        ...

    @property
    def engine(self) -> Coordinator | None:
        """The engine running the workers, once started; None for the in-process source."""
        ...

    def patches(self, plan: EpochPlan) -> Iterator[Subject]:
        """``plan``'s patches as Subjects that own their data, in the order they are yielded."""
        ...

    def batches(
        self, plan: EpochPlan, batch_size: int, drop_last: bool, pin_memory: bool
    ) -> Iterator[Batch]:
        """``plan``'s patches in batches of ``batch_size`` (the last one smaller, or dropped)."""
        ...

    def close(self) -> None:
        """Release what the source holds (workers, shared memory); safe to call twice."""
        ...
