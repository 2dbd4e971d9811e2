"""Seeding the global generators from a task's generator, for code that draws from them.

shmqueue's own transforms draw from the ``torch.Generator`` the queue derives from ``(seed,
epoch, subject index)``. Code written for other libraries draws from global state instead:
torch's default generator (TorchIO), numpy's and Python's ``random`` (many user callables), a
MONAI transform's own ``RandomState``. Left alone, forked workers inherit copies of that state
and spawned ones start from torch's fixed default seed, so workers repeat each other's
augmentations and the queue's ``seed`` changes nothing. :func:`seeded_global_generators` seeds
the three global generators from the task's generator for the length of one step and restores
them afterwards, so that such code is reproducible from ``(seed, epoch, subject)`` like a native
transform (contract 13 of DESIGN.md), and the training process's own random state is untouched.

Only torch's CPU generator is seeded: transforms run in CPU worker processes.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

_SEED_BOUND = 2**63 - 1
"""Seeds are drawn from ``[0, 2**63 - 1)``: any of them seeds torch, numpy and ``random``."""

_WORD = 2**32


def draw_seeds(generator: torch.Generator, count: int) -> list[int]:
    """``count`` seeds in ``[0, 2**63 - 1)`` drawn from ``generator`` (advancing it).

    Example:
        >>> import torch
        >>> first = draw_seeds(torch.Generator().manual_seed(0), 2)
        >>> first == draw_seeds(torch.Generator().manual_seed(0), 2), first[0] != first[1]
        (True, True)
    """
    seeds: list[int] = torch.randint(0, _SEED_BOUND, (count,), generator=generator).tolist()
    return seeds


@contextmanager
def seeded_global_generators(generator: torch.Generator) -> Iterator[None]:
    """Seed torch's CPU, numpy's and Python's global generators from ``generator``; restore them
    on exit.

    Each library gets its own seed (numpy's legacy and Python's generators are both MT19937 and
    would otherwise produce the same stream). Three seeds are drawn from ``generator``, so
    two steps of one task get different streams.

    Example:
        >>> import torch
        >>> def draw() -> float:
        ...     with seeded_global_generators(torch.Generator().manual_seed(7)):
        ...         return torch.rand(()).item()
        >>> draw() == draw()
        True
    """
    torch_seed, numpy_seed, python_seed = draw_seeds(generator, 3)
    # numpy's state as a dict: half the time of the legacy tuple, and just as complete.
    saved = torch.get_rng_state(), np.random.get_state(legacy=False), random.getstate()
    try:
        torch.default_generator.manual_seed(torch_seed)
        np.random.seed([numpy_seed % _WORD, numpy_seed // _WORD])  # the whole 63 bits
        random.seed(python_seed)
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])
