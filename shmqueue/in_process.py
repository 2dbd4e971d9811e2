"""InProcessSource: a queue's patches made in the training process (``num_workers=0``).

It follows the reference mixing schedule (:func:`~shmqueue.plan.mixing_schedule`) literally:
admit a subject's patches when the virtual buffer has room, take the patch it names. This path is
the reference the engine is checked against, so a patch here is exactly the engine's: the same
:class:`~shmqueue.pipeline.SubjectPipeline` run, cast to the ring's dtypes as a worker's copy into
a slot casts it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from .batch import Batch, collate_subjects
from .engine.layout import SlotLayout
from .errors import SubjectProcessingError
from .pinning import Pinning, pin_batch
from .pipeline import SubjectPipeline
from .plan import Admit, EpochPlan, mixing_schedule
from .sampling.base import extract_patch
from .stats import QueueStats
from .subject import Subject


class InProcessSource:
    """Loads, augments and samples each subject in this process, one subject at a time.

    Args:
        pipeline: what happens to each subject (shared with the engine's workers).
        layout: the ring's layout; patches come out in its dtypes and its ``max_length`` is the
            virtual buffer's.
    """

    def __init__(self, pipeline: SubjectPipeline, layout: SlotLayout) -> None:
        self.pipeline = pipeline
        self.layout = layout
        self.stats = QueueStats(max_length=layout.max_length)
        self._pinning = Pinning()

    @property
    def engine(self) -> None:
        """No engine: everything runs in this process."""
        return None

    def patches(self, plan: EpochPlan) -> Iterator[Subject]:
        """``plan``'s patches in the reference order; each subject is processed when admitted."""
        stats = self.stats
        patches: dict[tuple[int, int], Subject] = {}  # (position, patch): buffered, not yielded
        for event in mixing_schedule(plan.tasks, self.layout.max_length, plan.mixing_seed):
            if isinstance(event, Admit):
                task = plan.tasks[event.position]
                started = time.perf_counter()
                try:
                    subject, locations = self.pipeline.run(task)
                except Exception as error:
                    source = self.pipeline.subjects[task.subject_index]
                    raise SubjectProcessingError(
                        f"Processing {source.describe(task.subject_index)} in epoch {task.epoch}"
                        f" failed in the training process: {type(error).__name__}: {error}"
                    ) from error
                for number, location in enumerate(locations):
                    patches[event.position, number] = self._with_layout_dtypes(
                        extract_patch(subject, location)
                    )
                del subject  # hold one subject at a time, not the last one while loading the next
                elapsed = time.perf_counter() - started
                stats.subject_seconds.setdefault(0, []).append(elapsed)
                stats.consumer_wait_seconds += elapsed
                stats.patches_produced += len(locations)
                stats.ready += len(locations)
                continue
            patch = patches.pop((event.position, event.patch))
            stats.patches_consumed += 1
            stats.ready -= 1
            yield patch

    def batches(
        self, plan: EpochPlan, batch_size: int, drop_last: bool, pin_memory: bool
    ) -> Iterator[Batch]:
        """``plan``'s patches collated in order, ``batch_size`` at a time."""
        pin = self._pinning.wanted(pin_memory)
        chunk: list[Subject] = []
        for patch in self.patches(plan):
            chunk.append(patch)
            if len(chunk) == batch_size:
                yield self._collate(chunk, pin)
                chunk = []
        if chunk and not drop_last:
            yield self._collate(chunk, pin)

    def close(self) -> None:
        """Nothing to release: the in-process path holds no processes and no shared memory."""

    @staticmethod
    def _collate(chunk: list[Subject], pin: bool) -> Batch:
        batch = collate_subjects(chunk)
        return pin_batch(batch) if pin else batch

    def _with_layout_dtypes(self, patch: Subject) -> Subject:
        """The patch in the ring's dtypes, as a worker's copy into a slot casts it (the pipeline
        has checked that the images fit: a dtype the ring's holds, or a float rounded)."""
        for field in self.layout.fields:
            image = patch[field.name]
            if image.data.dtype != field.dtype:
                patch[field.name] = image.with_data(image.data.to(field.dtype))
        return patch
