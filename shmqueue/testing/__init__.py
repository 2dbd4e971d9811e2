"""Property-based testing for shmqueue pipelines: hypothesis strategies and contract checkers.

* :mod:`~shmqueue.testing.strategies`: hypothesis strategies for volumes, images, subjects,
  samplers, transforms and whole queue configurations, sized so that examples run fast.
* :func:`check_queue`: runs epochs of a queue and checks epoch completeness, fidelity, the
  bounded buffer, slot discipline and reproducibility (contracts 1-4 and 6 of the design).
* :func:`check_transform` and :func:`check_sampler`: check a user's transform or sampler against
  what the queue relies on (deterministic given the generator, no global random state, shapes
  and dtypes kept, input untouched, picklable; for samplers, locations inside the volume and
  patches that are copies).

Each checker returns a report (:class:`QueueReport`, :class:`TransformReport`,
:class:`SamplerReport`) whose ``str`` names every failure's contract, epoch and subject, and whose
``raise_for_failures()`` fails a test with that text. See docs/testing.md.

This module needs hypothesis, an optional dependency: ``pip install shmqueue[testing]``. It is
not imported by ``import shmqueue``.

Example:
    >>> import torch, shmqueue as sq
    >>> from shmqueue.testing import check_transform
    >>> subject = sq.Subject(t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)))
    >>> check_transform(sq.Noise(std=0.1), subject).ok
    True
"""

from __future__ import annotations

try:
    import hypothesis  # noqa: F401 -- fail here, with the fix, rather than deep in a test
except ImportError as error:  # pragma: no cover -- exercised in a child interpreter
    raise ImportError(
        "shmqueue.testing needs hypothesis, an optional dependency. Install it with"
        " `pip install shmqueue[testing]` (or `pip install hypothesis`)."
    ) from error

from . import strategies as strategies
from .checks import check_sampler, check_transform
from .queue_check import check_queue
from .report import (
    Contract,
    Failure,
    QueueReport,
    Report,
    SamplerReport,
    TransformReport,
)

__all__ = [
    "Contract",
    "Failure",
    "QueueReport",
    "Report",
    "SamplerReport",
    "TransformReport",
    "check_queue",
    "check_sampler",
    "check_transform",
    "strategies",
]
