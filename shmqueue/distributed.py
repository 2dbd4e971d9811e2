"""Distributed training: each rank its own subjects, and every rank the same number of batches.

Contract 10 of DESIGN.md: with ``torch.distributed``, ranks get disjoint subject sets that cover
the dataset, and every rank yields the same number of batches per epoch (DDP runs a collective
per batch, so a rank with one batch more waits forever for the others).

* :class:`DistributedSubjectSampler` shards subject indices exactly as torch's
  ``DistributedSampler`` does (same permutation, same padding rule, same ``drop_last``), and
  adds :meth:`~DistributedSubjectSampler.indices_for`: the order of any rank in any epoch, as a
  pure function. torch's ``DistributedSampler`` itself works as well (:func:`predictable_sampler`
  reads it as the equivalent shmqueue sampler).
* Because every rank's order is known everywhere, a :class:`~shmqueue.Queue` computes, from the
  image headers alone, every rank's patch total for the epoch (they differ when a finite sampler
  such as the grid gives subjects different patch counts) and pads or trims its own plan to a
  common count (``Queue(equalize="pad" | "trim")``, see :func:`shmqueue.plan.equalize_tasks`),
  warning with :class:`EqualizationWarning` how many patches it added or removed. No
  communication is needed, so nothing can hang. It also lets the queue prefetch the next epoch.
* :func:`per_rank_memory_budget` splits a node's memory across its local ranks.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils.data import Sampler
from torch.utils.data.distributed import DistributedSampler

from .machine import memory_capacity
from .plan import EpochPlan

__all__ = [
    "DistributedSubjectSampler",
    "EqualizationWarning",
    "RankInfo",
    "distributed_environment",
    "per_rank_memory_budget",
]


class EqualizationWarning(UserWarning):
    """A rank's epoch was padded or trimmed so that every rank yields the same number of patches."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in a distributed job.

    Attributes:
        rank: this process's rank, ``0 <= rank < world_size``.
        world_size: the number of ranks in the job.
        local_rank: this process's rank on its node.
        local_world_size: the number of ranks on this node.
    """

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int


def _environment_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"The environment variable {name}={value!r} is not an integer") from None


def distributed_environment() -> RankInfo:
    """This process's rank and world size, from the running process group or torchrun's variables.

    The initialised ``torch.distributed`` process group decides ``rank`` and ``world_size``;
    without one, torchrun's ``RANK`` and ``WORLD_SIZE`` do. ``LOCAL_RANK`` and
    ``LOCAL_WORLD_SIZE`` (set by torchrun) give the place on the node; without them the job is
    taken to run on one node (``local_rank = rank``, ``local_world_size = world_size``), as with
    ``torch.multiprocessing.spawn``.

    Returns:
        A :class:`RankInfo`.

    Raises:
        RuntimeError: there is neither a process group nor torchrun's environment.
        ValueError: the environment variables are not integers or are inconsistent.

    Example:
        >>> import os
        >>> os.environ.update(RANK="1", WORLD_SIZE="4", LOCAL_RANK="1", LOCAL_WORLD_SIZE="2")
        >>> distributed_environment()
        RankInfo(rank=1, world_size=4, local_rank=1, local_world_size=2)
        >>> for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        ...     del os.environ[name]
    """
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
    else:
        found_rank, found_world_size = _environment_int("RANK"), _environment_int("WORLD_SIZE")
        if found_rank is None or found_world_size is None:
            raise RuntimeError(
                "No torch.distributed process group is initialised and RANK / WORLD_SIZE are not"
                " set: call torch.distributed.init_process_group() first, launch with torchrun,"
                " or pass num_replicas and rank explicitly."
            )
        rank, world_size = found_rank, found_world_size
    local_rank = _environment_int("LOCAL_RANK")
    local_world_size = _environment_int("LOCAL_WORLD_SIZE")
    info = RankInfo(
        rank,
        world_size,
        rank if local_rank is None else local_rank,
        world_size if local_world_size is None else local_world_size,
    )
    if not (0 <= info.rank < info.world_size and 0 <= info.local_rank < info.local_world_size):
        raise ValueError(
            f"Inconsistent distributed environment: {info} (need 0 <= rank < world_size and"
            " 0 <= local_rank < local_world_size)"
        )
    return info


class DistributedSubjectSampler(Sampler[int]):
    """This rank's subject indices for each epoch, the same as torch's ``DistributedSampler``.

    Every epoch, the subjects are permuted with ``seed + epoch`` (when ``shuffle``), padded by
    repeating the first indices until their number divides by ``num_replicas`` (or, with
    ``drop_last``, cut to the largest such number), and rank ``r`` takes every
    ``num_replicas``-th index starting at ``r``. So ranks get disjoint subjects that cover the
    dataset (up to the repeats of the padding, or the ``drop_last`` cut), and each gets
    ``len(sampler)`` of them. Every rank must use the same ``seed``.

    :meth:`indices_for` gives any rank's indices for any epoch without touching the sampler's
    state, which lets a :class:`~shmqueue.Queue` equalise patch counts across ranks and prefetch
    the next epoch. A subclass must keep it a pure function of its arguments.

    Args:
        subjects: the number of subjects, or the sequence of subjects.
        num_replicas: the number of ranks; default from :func:`distributed_environment`.
        rank: this rank; default from :func:`distributed_environment`.
        shuffle: permute the subjects every epoch (else ranks take them in index order).
        seed: the permutation's seed, the same on every rank.
        drop_last: drop the last subjects instead of repeating the first ones to even out ranks.

    Raises:
        RuntimeError: ``num_replicas`` or ``rank`` is missing and there is no distributed
            environment to read it from.
        ValueError: ``num_replicas < 1`` or ``rank`` outside ``[0, num_replicas)``.

    Example:
        >>> sampler = DistributedSubjectSampler(5, num_replicas=2, rank=1, shuffle=False)
        >>> list(sampler), sampler.indices_for(epoch=0, rank=0)
        ([1, 3, 0], [0, 2, 4])
    """

    def __init__(
        self,
        subjects: int | Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.num_subjects = subjects if isinstance(subjects, int) else len(subjects)
        if self.num_subjects < 0:
            raise ValueError(f"The number of subjects must be >= 0, got {self.num_subjects}")
        if num_replicas is None or rank is None:
            info = distributed_environment()
            num_replicas = info.world_size if num_replicas is None else num_replicas
            rank = info.rank if rank is None else rank
        if num_replicas < 1:
            raise ValueError(f"num_replicas must be >= 1, got {num_replicas}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"Invalid rank {rank}: it must be in [0, {num_replicas - 1}]")
        self.num_replicas = num_replicas
        self.rank = rank
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        if drop_last:
            self.num_samples = self.num_subjects // num_replicas
        else:
            self.num_samples = math.ceil(self.num_subjects / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Use ``epoch``'s permutation from now on (call it before every epoch when shuffling)."""
        self.epoch = epoch

    def indices_for(self, epoch: int, rank: int) -> list[int]:
        """The subject indices of ``rank`` in ``epoch`` (pure: the sampler's state is not used).

        Raises:
            ValueError: ``rank`` is outside ``[0, num_replicas)``.
        """
        if not 0 <= rank < self.num_replicas:
            raise ValueError(f"Invalid rank {rank}: it must be in [0, {self.num_replicas - 1}]")
        return self._all_indices(epoch)[rank : self.total_size : self.num_replicas]

    def patch_totals(self, epoch: int, patch_counts: Sequence[int]) -> list[int]:
        """Every rank's patches in ``epoch``, where subject ``i`` gives ``patch_counts[i]``."""
        totals = [0] * self.num_replicas
        for position, index in enumerate(self._all_indices(epoch)):
            totals[position % self.num_replicas] += patch_counts[index]
        return totals

    def _all_indices(self, epoch: int) -> list[int]:
        """The epoch's permutation, padded or cut to ``total_size`` (DistributedSampler's rule)."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            indices: list[int] = torch.randperm(self.num_subjects, generator=generator).tolist()
        else:
            indices = list(range(self.num_subjects))
        if self.drop_last:
            return indices[: self.total_size]
        padding = self.total_size - len(indices)
        return indices + (indices * math.ceil(padding / max(len(indices), 1)))[:padding]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices_for(self.epoch, self.rank))

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (
            f"DistributedSubjectSampler(num_subjects={self.num_subjects},"
            f" num_replicas={self.num_replicas}, rank={self.rank}, shuffle={self.shuffle},"
            f" seed={self.seed}, drop_last={self.drop_last}, epoch={self.epoch})"
        )


def predictable_sampler(subject_sampler: object) -> DistributedSubjectSampler | None:
    """The sampler as a :class:`DistributedSubjectSampler`, if its order is a pure function.

    Pure: every rank's order in every epoch can be computed anywhere, from the epoch alone. That
    holds for a :class:`DistributedSubjectSampler` (returned as is) and for torch's
    ``DistributedSampler`` and subclasses that keep its ``__iter__`` (returned as the equivalent
    shmqueue sampler, in the same epoch); for any other sampler the answer is ``None``.
    """
    if isinstance(subject_sampler, DistributedSubjectSampler):
        return subject_sampler
    if (
        isinstance(subject_sampler, DistributedSampler)
        and type(subject_sampler).__iter__ is DistributedSampler.__iter__
    ):
        equivalent = DistributedSubjectSampler(
            len(subject_sampler.dataset),  # type: ignore[arg-type]
            subject_sampler.num_replicas,
            subject_sampler.rank,
            shuffle=subject_sampler.shuffle,
            seed=subject_sampler.seed,
            drop_last=subject_sampler.drop_last,
        )
        equivalent.set_epoch(subject_sampler.epoch)
        return equivalent
    return None


def check_subject_sampler(subject_sampler: object, num_subjects: int) -> None:
    """Raise unless ``subject_sampler`` is a sized iterable fitting ``num_subjects`` subjects.

    Raises:
        TypeError: the sampler has no ``len()`` or cannot be iterated.
        ValueError: the sampler shards a different number of subjects than the queue has.
    """
    if not (hasattr(subject_sampler, "__len__") and hasattr(subject_sampler, "__iter__")):
        raise TypeError(
            "subject_sampler must be a sized iterable of subject indices (e.g. torch's"
            f" DistributedSampler or shmqueue.DistributedSubjectSampler), got"
            f" {type(subject_sampler).__name__}"
        )
    sharded = predictable_sampler(subject_sampler)
    if sharded is not None and sharded.num_subjects != num_subjects:
        raise ValueError(
            f"The subject_sampler shards {sharded.num_subjects} subjects but the queue has"
            f" {num_subjects}: build it over the same subjects (every rank passes all subjects"
            " to its Queue; the sampler picks the rank's share)."
        )


def warn_equalized(plan: EpochPlan, sampler: DistributedSubjectSampler) -> None:
    """Warn that this rank's epoch was padded or trimmed, and by how many patches."""
    if not plan.equalized:
        return
    planned = plan.total_patches - plan.equalized
    where = f"Rank {sampler.rank} of {sampler.num_replicas}"
    if plan.equalized > 0:
        message = (
            f"{where}: its subjects give {planned} patches in epoch {plan.epoch}, fewer than"
            f" another rank's {plan.total_patches}; padded with {plan.equalized} extra patches of"
            " its last subjects (freshly augmented) so that every rank yields the same number of"
            " batches. Pass equalize='trim' to the Queue to drop the other ranks' extra patches"
            " instead."
        )
    else:
        message = (
            f"{where}: its subjects give {planned} patches in epoch {plan.epoch}, more than"
            f" another rank's {plan.total_patches}; trimmed {-plan.equalized} patches of its last"
            " subjects so that every rank yields the same number of batches. Pass"
            " equalize='pad' to the Queue to repeat patches on the other ranks instead."
        )
    warnings.warn(message, EqualizationWarning, stacklevel=4)


def per_rank_memory_budget(
    total_bytes: int | None = None, local_world_size: int | None = None
) -> int:
    """The memory one rank may use: a node's memory divided by the ranks on the node.

    This is the inverse of the memory estimator's ``ranks_per_node``
    (:func:`shmqueue.estimate_memory`, :meth:`shmqueue.Queue.estimate_memory`), whose
    ``total_per_node`` is ``ranks_per_node`` times one rank's ``total_per_rank`` (ring, workers,
    batches, process baselines): with ``ranks_per_node`` equal to ``local_world_size``,
    ``total_per_rank <= per_rank_memory_budget()`` is the same check as ``total_per_node`` against
    the node's memory. Call it on every rank before the queues start, so each sees the same
    memory.

    Args:
        total_bytes: the node's memory for training; default: the memory available now, or
            less if the container's cgroup limit leaves less.
        local_world_size: ranks on this node; default ``LOCAL_WORLD_SIZE`` (set by torchrun),
            else the process group's world size (one node), else 1.

    Returns:
        ``total_bytes // local_world_size``.

    Raises:
        ValueError: ``total_bytes < 0`` or ``local_world_size < 1``.

    Example:
        >>> per_rank_memory_budget(total_bytes=64 * 2**30, local_world_size=4) // 2**30
        16
    """
    total = memory_capacity().available if total_bytes is None else total_bytes
    if total < 0:
        raise ValueError(f"total_bytes must be >= 0, got {total}")
    if local_world_size is None:
        local_world_size = _environment_int("LOCAL_WORLD_SIZE")
    if local_world_size is None:
        initialized = dist.is_available() and dist.is_initialized()
        local_world_size = dist.get_world_size() if initialized else 1
    if local_world_size < 1:
        raise ValueError(f"local_world_size must be >= 1, got {local_world_size}")
    return total // local_world_size
