"""What the cache stores of a transform: the steps that every application runs alike.

The cached prefix is the transform's deterministic prefix
(:func:`~shmqueue.transforms.deterministic_prefix`) up to its first deferrable step
(:func:`~shmqueue.transforms.is_deferrable`, e.g. an augmentation whose ranges are constants).
Such a step is drawn before it is evaluated and evaluated together with the deferrable steps
next to it, one resampling for all of them (:func:`~shmqueue.transforms.run_steps`): caching
its result would resample twice where the uncached queue resamples once, and a cached queue
must give the same voxels as an uncached one (contract 2). The other deterministic steps neither
draw from the task's generator nor depend on it, so skipping them on a cache hit leaves every
later draw as it was.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import takewhile

import torch

from ..subject import Subject
from ..transforms import SubjectTransform, deterministic_prefix, is_deferrable, run_steps


def cached_prefix(transform: SubjectTransform | None) -> list[SubjectTransform]:
    """The steps of ``transform`` whose output the cache stores (see the module's docstring).

    Example:
        >>> import shmqueue as sq
        >>> steps = cached_prefix(sq.Compose([sq.ToCanonical(), sq.Resample(1.0), sq.Noise()]))
        >>> [type(step).__name__ for step in steps]
        ['ToCanonical', 'Resample']
    """
    return list(takewhile(lambda step: not is_deferrable(step), deterministic_prefix(transform)))


def preprocess(
    subject: Subject,
    steps: Sequence[SubjectTransform],
    after_load: Callable[[Subject], None] | None = None,
    after_step: Callable[[int, SubjectTransform, Subject], None] | None = None,
) -> Subject:
    """``subject`` loaded (in place) and transformed by the cached ``steps``: what an entry
    holds. ``after_load`` sees the loaded subject, ``after_step`` each step's number, the step
    and its result (see :func:`~shmqueue.transforms.run_steps`).

    The steps get a generator of their own: they draw nothing (they are deterministic), and
    even one that broke that promise could not shift the draws of the task's random steps,
    which a cache hit skips it before.
    """
    subject.load()
    if after_load is not None:
        after_load(subject)
    result, pending = run_steps(steps, subject, torch.Generator().manual_seed(0), after_step)
    assert not pending.operations, "the cached prefix has no deferrable step"
    return result
