"""TorchIO 1.x's call forms: ``GridAggregator`` and the Queue's positional arguments (the
``Random*`` transforms are in :mod:`shmqueue.augmentation.torchio1`).

With these, the key constants (:mod:`shmqueue.constants`), :class:`~shmqueue.SubjectsDataset`,
1.x's ``Queue(subjects_dataset, max_length, samples_per_volume, sampler)`` and samplers built from
the patch size alone, a TorchIO 1.x script whose transforms shmqueue has runs with only its import
changed. The random transforms take 1.x's arguments and draw from the queue's generator, like
every shmqueue transform.
"""

from __future__ import annotations

from typing import Any

from .sampling.base import PatchSampler
from .sampling.grid import PatchAggregator

GridAggregator = PatchAggregator
"""TorchIO 1.x's name of :class:`~shmqueue.PatchAggregator`."""


def queue_call_form(
    second: PatchSampler | int | None,
    torchio1_arguments: tuple[Any, ...],
    *,
    max_length: int | None,
    patches_per_volume: int | None,
    samples_per_volume: int | None,
    sampler: PatchSampler | None,
) -> tuple[Any, int, int]:
    """The sampler, ``max_length`` and ``patches_per_volume`` of a Queue call in either form.

    shmqueue's ``Queue(subjects, sampler, max_length=..., patches_per_volume=...)`` and TorchIO
    1.x's ``Queue(subjects, max_length, samples_per_volume, sampler)`` differ in the second
    argument: a sampler or an int. Keywords may name any of them, with either library's names,
    once.
    """
    given: dict[str, list[Any]] = {
        "max_length": [max_length],
        "patches_per_volume": [patches_per_volume, samples_per_volume],
        "sampler": [sampler],
    }
    if isinstance(second, int) and not isinstance(second, bool):
        if len(torchio1_arguments) > 2:
            raise TypeError(
                "Queue takes at most four positional arguments in TorchIO 1.x's form"
                " (subjects_dataset, max_length, samples_per_volume, sampler); pass the others"
                " by keyword."
            )
        positional = dict(
            zip(["max_length", "patches_per_volume", "sampler"], [second, *torchio1_arguments])
        )
        for name, value in positional.items():
            given[name].append(value)
    else:
        if torchio1_arguments:
            raise TypeError(
                "Queue(subjects, patch_sampler, ...) takes its other arguments by keyword"
                " (max_length=, patches_per_volume=, ...); TorchIO 1.x's positional form has"
                " max_length, an int, second: Queue(subjects, max_length, samples_per_volume,"
                " sampler)."
            )
        given["sampler"].append(second)
    chosen: dict[str, Any] = {}
    for name, values in given.items():
        present = [value for value in values if value is not None]
        if len(present) > 1:
            raise TypeError(
                f"Queue got {name} twice (by position and keyword, or under both its shmqueue"
                " and its TorchIO 1.x name): give it once."
            )
        chosen[name] = present[0] if present else None
    if chosen["sampler"] is None:
        raise TypeError(
            "Queue needs a patch sampler: Queue(subjects, UniformSampler(patch_size), ...)"
        )
    max_length_or_default = 300 if chosen["max_length"] is None else chosen["max_length"]
    per_volume = chosen["patches_per_volume"]
    return chosen["sampler"], max_length_or_default, 10 if per_volume is None else per_volume
