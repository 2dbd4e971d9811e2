"""Memory estimation: what a queue configuration costs, term by term, before anything runs.

TorchIO estimates a queue as ``4 B x channels x patch voxels x max_length``; the real peak also
holds the subjects in flight in the workers, transform intermediates, the batches and an
interpreter with torch per process. The parts:

* :mod:`~shmqueue.memory.breakdown`: the estimate and its table (:class:`MemoryEstimate`,
  :class:`WorkerPeak`, :class:`ConsumerMemory`, :class:`CoordinatorMemory`);
* :mod:`~shmqueue.memory.estimate`: :func:`estimate_memory`, the terms from the subjects'
  catalog (:mod:`shmqueue.catalog`), the ring's size from the layout the engine allocates;
* :mod:`~shmqueue.memory.worker_model`: one worker's peak, modelled from the headers; each
  transform and sampler is asked what it allocates;
* :mod:`~shmqueue.memory.measure`: the same peak measured in a child process (``measure=True``);
* :mod:`~shmqueue.memory.budget`: :func:`preflight` and :func:`budget_problems`, the estimate
  against this machine (contract 9 of DESIGN.md), which reads the machine's
  :func:`memory_capacity` there (patch ``shmqueue.memory.budget.memory_capacity`` to fake one);
* :mod:`~shmqueue.memory.constants`: the per-process constants, measured.
"""

from ..machine import memory_capacity
from .breakdown import ConsumerMemory, CoordinatorMemory, MemoryEstimate, WorkerPeak
from .budget import budget_problems, preflight
from .constants import PROCESS_BASELINE
from .estimate import estimate_memory

__all__ = [
    "PROCESS_BASELINE",
    "ConsumerMemory",
    "CoordinatorMemory",
    "MemoryEstimate",
    "WorkerPeak",
    "budget_problems",
    "estimate_memory",
    "memory_capacity",
    "preflight",
]
