"""TorchIO 1.x's names for what shmqueue has: ``RandomFlip``, ``RandomNoise``, ``GridAggregator``.

With these, the key constants (:mod:`shmqueue.constants`), :class:`~shmqueue.SubjectsDataset`,
1.x's ``Queue(subjects_dataset, max_length, samples_per_volume, sampler)`` and samplers built from
the patch size alone, a TorchIO 1.x script whose transforms shmqueue has runs with only its import
changed. The random transforms take 1.x's arguments and draw from the queue's generator, like
every shmqueue transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .image import ScalarImage
from .sampling.base import PatchSampler
from .sampling.grid import PatchAggregator
from .subject import Subject
from .transforms import Flip, Noise, Transform, add_noise

GridAggregator = PatchAggregator
"""TorchIO 1.x's name of :class:`~shmqueue.PatchAggregator`."""

Range = tuple[float, float]


class RandomFlip(Flip):
    """TorchIO 1.x's ``RandomFlip``: flip each of ``axes`` with probability ``flip_probability``.

    Each axis is drawn on its own, as in TorchIO; :class:`~shmqueue.Flip` flips all its axes
    together.

    Args:
        axes: spatial axes among 0, 1, 2 (TorchIO's anatomical names such as ``"LR"`` are not
            supported: reorient the images first and give indices).
        flip_probability: the probability that each axis is flipped.
        p: the probability that the transform is applied at all.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.arange(4.0).reshape(1, 4, 1, 1)))
        >>> flip = sq.RandomFlip(axes=(0,), flip_probability=1.0)
        >>> flip(subject, torch.Generator().manual_seed(0)).t1.data.flatten().tolist()
        [3.0, 2.0, 1.0, 0.0]
    """

    def __init__(
        self, axes: int | Sequence[int] = 0, flip_probability: float = 0.5, p: float = 1.0
    ) -> None:
        named = [axis for axis in ((axes,) if isinstance(axes, (int, str)) else axes)]
        if any(isinstance(axis, str) for axis in named):
            raise ValueError(
                f"RandomFlip axes {axes!r}: anatomical axis names are not supported; give spatial"
                " axes among 0, 1, 2 (after reorienting the images to a known orientation)."
            )
        super().__init__(axes, p)
        if not 0.0 <= flip_probability <= 1.0:
            raise ValueError(f"flip_probability must be in [0, 1], got {flip_probability}")
        self.flip_probability = flip_probability

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        draws = (torch.rand(3, generator=generator) < self.flip_probability).tolist()
        flipped = [axis for axis in self.axes if draws[axis]]
        return Flip(flipped).apply(subject, generator) if flipped else subject

    @property
    def is_random(self) -> bool:
        return self.p < 1.0 or 0.0 < self.flip_probability < 1.0


class RandomNoise(Noise):
    """TorchIO 1.x's ``RandomNoise``: Gaussian noise whose mean and std are drawn per image.

    Each scalar image gets a mean drawn uniformly from the ``mean`` range and a standard deviation
    from the ``std`` range, then noise ``N(mean, std)``; label maps are left alone.

    Args:
        mean: ``(min, max)``, or ``m`` for ``(-m, m)``.
        std: ``(min, max)`` with ``min >= 0``, or ``s`` for ``(0, s)``.
        p: the probability that the transform is applied.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 8, 8, 8)))
        >>> noisy = sq.RandomNoise(std=(0.5, 0.5))(subject, torch.Generator().manual_seed(0))
        >>> round(noisy.t1.data.std().item(), 1)
        0.5
    """

    def __init__(
        self,
        mean: float | tuple[float, float] = 0.0,
        std: float | tuple[float, float] = (0.0, 0.25),
        p: float = 1.0,
    ) -> None:
        # Not Noise.__init__: the mean and std are ranges here, drawn from at each application.
        Transform.__init__(self, p)
        self.mean_range = _parse_range(mean, "mean", minimum=None)
        self.std_range = _parse_range(std, "std", minimum=0.0)

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        for name, image in subject.images.items():
            if isinstance(image, ScalarImage):
                mean = _uniform(self.mean_range, generator)
                std = _uniform(self.std_range, generator)
                subject[name] = image.with_data(add_noise(image.data, mean, std, generator))
        return subject


def _parse_range(value: float | tuple[float, float], name: str, minimum: float | None) -> Range:
    """TorchIO's ranges: ``(low, high)``, or a number ``n`` for ``(-n, n)`` (``(minimum, n)`` for
    a parameter with a minimum)."""
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"If {name} is a single number, it must be >= 0, got {value}")
        low, high = (-float(value) if minimum is None else minimum), float(value)
    else:
        low, high = (float(bound) for bound in value)
    if low > high or (minimum is not None and low < minimum):
        at_least = "" if minimum is None else f" with min >= {minimum}"
        raise ValueError(
            f"{name} must be a range (min, max) with min <= max{at_least}, got {value}"
        )
    return low, high


def _uniform(bounds: Range, generator: torch.Generator) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


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
