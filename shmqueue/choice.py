"""Transforms that choose among transforms: :class:`OneOf` and :class:`SomeOf` (TorchIO's).

The choice is drawn from the caller's generator, after ``p`` and before the chosen transforms
draw their own parameters, so a subject's choice and parameters are the same whether the
augmentations are evaluated on the whole volume or at the patches. When every candidate is
deferrable (augmentations, or Composes of them), so is the choice: the queue then evaluates
the chosen augmentations at the patches, with the rest of the pipeline's (one resampling).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from .specs import UNKNOWN, VOXELWISE, ImageSpec, Locality, SubjectSpec, Unknown, VolumeCost
from .transforms import SubjectTransform, TransformGroup, described


class _Choice(TransformGroup):
    """What OneOf and SomeOf share: candidates, deferral when all of them defer, and the
    descriptions that hold whichever is chosen."""

    def __init__(self, transforms: Sequence[SubjectTransform], p: float) -> None:
        super().__init__(p)
        name = type(self).__name__
        if not transforms:
            raise ValueError(f"{name} needs at least one transform to choose from, got none.")
        for transform in transforms:
            if not callable(transform):
                raise TypeError(
                    f"{name}'s candidates must be transforms (callables Subject -> Subject),"
                    f" got {transform!r}."
                )
        self.transforms = list(transforms)

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec] | Unknown:
        """Every candidate's output, if they agree on it (and agree with the input when none
        may be applied, or several in turn); else unknown: the ring's layout cannot depend on
        the draw."""
        outputs = [described(transform).output_spec(images) for transform in self.transforms]
        if self.p < 1.0 or self._keeps_input:
            outputs.append(dict(images))
        first = outputs[0]
        if isinstance(first, Unknown) or any(output != first for output in outputs[1:]):
            return UNKNOWN
        return first

    @property
    def _keeps_input(self) -> bool:
        """Whether its output must be its input's description whatever the draw."""
        return False

    @property
    def is_random(self) -> bool:
        """Random unless it always applies the same, deterministic transforms."""
        return True

    @property
    def _repeats(self) -> int:
        """How many chosen transforms one application applies at most."""
        return 1

    @property
    def locality(self) -> Locality:
        """At most every candidate's needs in turn, as often as one may be applied."""
        combined = VOXELWISE
        for _ in range(self._repeats):
            for transform in self.transforms:
                combined = combined.then(described(transform).locality)
        return combined

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """The most any one candidate allocates (by its largest peak), as often as one may be
        applied: a bound whichever is chosen."""
        costs = [described(transform).memory_cost(images) for transform in self.transforms]
        largest = max(costs, key=lambda listed: max((cost.peak for cost in listed), default=0))
        return largest * self._repeats


class OneOf(_Choice):
    """Apply one of ``transforms``, chosen at random (TorchIO's ``OneOf``, 1.x and 2.0).

    Args:
        transforms: the candidates, equally likely; or a mapping from each candidate to its
            relative weight (normalised to sum to one).
        p: the probability that one of them is applied at all.

    Example:
        >>> import torch, shmqueue as sq
        >>> choice = sq.OneOf({sq.Affine(degrees=10): 0.75, sq.ElasticDeformation(): 0.25})
        >>> choice.weights
        [0.75, 0.25]
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 16, 16, 16)))
        >>> choice(subject, torch.Generator().manual_seed(0)).t1.shape
        (1, 16, 16, 16)
    """

    def __init__(
        self,
        transforms: Sequence[SubjectTransform] | Mapping[SubjectTransform, float],
        p: float = 1.0,
    ) -> None:
        if isinstance(transforms, Mapping):
            candidates, weights = list(transforms), [float(w) for w in transforms.values()]
        else:
            candidates, weights = list(transforms), [1.0] * len(transforms)
        super().__init__(candidates, p)
        if any(not weight >= 0 for weight in weights) or sum(weights) <= 0:
            raise ValueError(
                "OneOf's weights must be non-negative numbers, at least one of them positive;"
                f" got {weights}."
            )
        total = sum(weights)
        self.weights = [weight / total for weight in weights]

    def members(self, generator: torch.Generator) -> list[SubjectTransform]:
        index = int(torch.multinomial(torch.tensor(self.weights), 1, generator=generator))
        return [self.transforms[index]]

    @property
    def is_random(self) -> bool:
        certain = [t for t, w in zip(self.transforms, self.weights, strict=True) if w == 1.0]
        return self.p < 1.0 or not certain or described(certain[0]).is_random


class SomeOf(_Choice):
    """Apply a random subset of ``transforms``, in random order (TorchIO 2.0's ``SomeOf``).

    Args:
        transforms: the candidates.
        num_transforms: how many to apply: a number, or ``(low, high)`` drawn uniformly
            (both included). Without ``replace``, at most as many as there are candidates.
        replace: draw with replacement: a candidate may be applied more than once.
        p: the probability that any is applied at all.

    Example:
        >>> import torch, shmqueue as sq
        >>> some = sq.SomeOf([sq.Gamma(), sq.Blur(), sq.Noise()], num_transforms=(1, 2))
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)))
        >>> some(subject, torch.Generator().manual_seed(0)).t1.shape
        (1, 8, 8, 8)
    """

    def __init__(
        self,
        transforms: Sequence[SubjectTransform],
        num_transforms: int | tuple[int, int] = 1,
        replace: bool = False,
        p: float = 1.0,
    ) -> None:
        super().__init__(transforms, p)
        low, high = (
            (num_transforms, num_transforms)
            if isinstance(num_transforms, int)
            else tuple(num_transforms)
        )
        if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
            raise ValueError(
                "SomeOf's num_transforms must be a count or a range (low, high) of counts with"
                f" 0 <= low <= high, got {num_transforms!r}."
            )
        self.num_transforms = num_transforms
        self.replace = replace
        self._low, self._high = low, high

    def members(self, generator: torch.Generator) -> list[SubjectTransform]:
        count = int(torch.randint(self._low, self._high + 1, (1,), generator=generator))
        if self.replace:
            indices = torch.randint(0, len(self.transforms), (count,), generator=generator)
        else:
            indices = torch.randperm(len(self.transforms), generator=generator)[:count]
        return [self.transforms[int(index)] for index in indices]

    @property
    def _keeps_input(self) -> bool:
        """Yes: it may apply none, or several candidates in turn."""
        return True

    @property
    def _repeats(self) -> int:
        return self._high if self.replace else 1

    def memory_cost(self, images: SubjectSpec) -> list[VolumeCost]:
        """With replacement, the largest candidate's as often as one may be drawn; without,
        every candidate's once (each may be among those drawn)."""
        if self.replace:
            return super().memory_cost(images)
        return [
            cost
            for transform in self.transforms
            for cost in described(transform).memory_cost(images)
        ]
