"""EngineSource: the engine's consumer side, where patches leave the ring in the training process.

The coordinator lends the consumer one ready slot at a time (a :class:`TakenPatch`, for the length
of :meth:`Coordinator.take`'s ``consume`` call). The consumer reads the slot's metadata row, which
the worker wrote beside the patch (:func:`~shmqueue.engine.worker.run_task`), checks that the slot
holds the patch the coordinator named, and copies the patch out before the slot goes back to the
workers: into a patch Subject of its own (:meth:`EngineSource.patches`), or straight into its row
of the batch tensors (:meth:`EngineSource.batches`: the one copy per patch). Nothing handed out
points into the ring (contract 4), and nothing outside the engine reads a slot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from ..batch import Batch
from ..image import shift_affine
from ..pinning import Pinning
from ..plan import EpochPlan
from ..sampling.base import PATCH_LOCATION_KEY, PatchLocation
from ..stats import QueueStats
from ..subject import Subject
from ..volumes import VolumePool
from .coordinator import Coordinator, TakenPatch
from .layout import MetadataField, SlotLayout
from .ring import RingView

_Result = TypeVar("_Result")


class Guard(Protocol):
    """Runs one engine call for the queue (:meth:`shmqueue.Queue._guarded`): a failure leaves
    the whole queue shut down, never half-running, and a closed queue raises instead of calling."""

    def __call__(self, call: Callable[..., _Result], *args: Any) -> _Result: ...


class EngineSource:
    """Patches and batches copied out of the engine's ring; the engine starts with the first epoch.

    Args:
        subjects: the queue's subjects (paths and metadata go with each patch).
        layout: the ring's layout.
        start: makes the engine, its ring and its workers (the queue checks memory first).
        upcoming: the plan of the epoch after the one starting, for the engine to prefetch, or
            None if its order is not known in advance.
        guard: runs each call into the running engine.
    """

    def __init__(
        self,
        subjects: Sequence[Subject],
        layout: SlotLayout,
        start: Callable[[], Coordinator],
        upcoming: Callable[[], EpochPlan | None],
        guard: Guard,
    ) -> None:
        self.subjects = subjects
        self.layout = layout
        self.engine: Coordinator | None = None
        self._start = start
        self._upcoming = upcoming
        self._guard = guard
        self._pinning = Pinning()
        # Batch tensors: reused once the training loop lets go of them (see shmqueue.volumes).
        self._batch_volumes = VolumePool()

    @property
    def stats(self) -> QueueStats:
        if self.engine is None:
            return QueueStats(max_length=self.layout.max_length)
        return self.engine.stats

    def patches(self, plan: EpochPlan) -> Iterator[Subject]:
        """``plan``'s patches, each copied out of its slot into a Subject of its own."""
        engine = self._start_epoch(plan)
        patches: list[Subject] = []
        while self._guard(
            engine.take, 1, lambda taken: patches.append(self._patch_from_slot(engine.ring, taken))
        ):
            yield patches.pop()

    def batches(
        self, plan: EpochPlan, batch_size: int, drop_last: bool, pin_memory: bool
    ) -> Iterator[Batch]:
        """``plan``'s patches, ``batch_size`` at a time, each copied once into its batch row."""
        engine = self._start_epoch(plan)
        allocate = _pinned_empty if self._pinning.wanted(pin_memory) else self._batch_volumes.empty
        while True:
            builder = _BatchBuilder(self.subjects, engine.ring, batch_size, allocate)
            count = self._guard(engine.take, batch_size, builder.add)
            if count == 0 or (drop_last and count < batch_size):
                return
            yield builder.build()

    def close(self) -> None:
        """Stop the workers and free the ring (idempotent)."""
        if self.engine is not None:
            self.engine.close()

    def _start_epoch(self, plan: EpochPlan) -> Coordinator:
        if self.engine is None:
            self.engine = self._start()
        self._guard(self.engine.start_epoch, plan, self._upcoming())
        return self.engine

    def _patch_from_slot(self, ring: RingView, taken: TakenPatch) -> Subject:
        location = _slot_location(ring, taken)
        subject = self.subjects[taken.task.subject_index]
        images = {
            field.name: subject[field.name].as_patch(
                _copy_out(ring.patches[field.name][taken.slot]),
                location.index,
                taken.state.affines[field.name],
            )
            for field in self.layout.fields
        }
        metadata = taken.state.metadata(subject)
        return Subject({**metadata, **images, PATCH_LOCATION_KEY: location})


class _BatchBuilder:
    """Fills batch tensors row by row, straight from ring slots (the one copy per patch)."""

    def __init__(
        self,
        subjects: Sequence[Subject],
        ring: RingView,
        batch_size: int,
        allocate: Callable[[tuple[int, ...], torch.dtype], torch.Tensor],
    ) -> None:
        self.subjects = subjects
        self.ring = ring
        layout = ring.layout
        self.data = {
            field.name: allocate((batch_size, *layout.patch_shape(field)), field.dtype)
            for field in layout.fields
        }
        self.taken: list[TakenPatch] = []
        self.locations: list[PatchLocation] = []

    def add(self, taken: TakenPatch) -> None:
        row = len(self.taken)
        for name, stacked in self.data.items():
            # numpy copies in this thread (see _copy_out)
            np.copyto(stacked[row].numpy(), self.ring.patches[name][taken.slot].numpy())
        self.locations.append(_slot_location(self.ring, taken))
        self.taken.append(taken)

    def build(self) -> Batch:
        count = len(self.taken)
        names = list(self.data)
        sources = [self.subjects[taken.task.subject_index] for taken in self.taken]
        return Batch.build(
            data={name: stacked[:count] for name, stacked in self.data.items()},
            affines={
                name: [
                    shift_affine(taken.state.affines[name], location.index)
                    for taken, location in zip(self.taken, self.locations)
                ]
                for name in names
            },
            paths={name: [source[name].path for source in sources] for name in names},
            types={name: sources[0][name].type for name in names},
            metadata=[taken.state.metadata(source) for taken, source in zip(self.taken, sources)],
            locations=self.locations,
        )


def _slot_location(ring: RingView, taken: TakenPatch) -> PatchLocation:
    """Where the slot's patch lies in its subject, after checking the slot holds what was named."""
    row = ring.metadata[taken.slot]
    expected = (taken.task.epoch, taken.task.position, taken.task.subject_index, taken.patch)
    found = tuple(int(value) for value in row[: MetadataField.INDEX_I])
    if found != expected:
        raise RuntimeError(f"slot {taken.slot} holds {found}, expected {expected}")
    index = tuple(int(value) for value in row[MetadataField.INDEX_I :])
    return PatchLocation((index[0], index[1], index[2]), ring.layout.patch_size)


def _pinned_empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, pin_memory=True)


def _copy_out(patch: torch.Tensor) -> torch.Tensor:
    """A copy of a slot's patch. numpy copies in this thread; torch would split a patch copy
    across its intra-op threads, which stalls the training process while workers use the cores.
    """
    return torch.from_numpy(patch.numpy().copy())
