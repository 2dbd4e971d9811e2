"""The epoch plan: which subjects, in which order, how many patches each, with which seeds.

Everything here is pure (no I/O, no processes), so it can be tested exhaustively and the engine
and the in-process path share it. Randomness is derived, never global: every seed is a function of
the queue's seed, a purpose, the epoch and the subject, so a subject's augmentation and patch
positions do not depend on which worker ran it or when (contract 6 of DESIGN.md).

The mixing schedule (:func:`mixing_schedule`) is the reference order of patches: a virtual buffer
of ``max_length`` patches that admits whole subjects in plan order while they fit and yields a
uniformly drawn buffered patch (or the oldest one without shuffling). The in-process path runs it
literally; the engine's deterministic mode follows it; its free-running mode yields the same
multiset of patches in an order set by which worker finishes first.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum

import numpy as np


class SeedPurpose(IntEnum):
    """Separates the random streams derived from one seed."""

    SUBJECT_ORDER = 0
    SUBJECT = 1
    MIXING = 2


def derive_seed(seed: int, purpose: SeedPurpose, *entropy: int) -> int:
    """A 63-bit seed that depends only on its arguments (never on process, time or worker)."""
    sequence = np.random.SeedSequence([seed, int(purpose), *entropy])
    return int(sequence.generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass(frozen=True)
class SubjectTask:
    """One subject's share of an epoch: load it, augment with ``seed``, draw ``num_patches``.

    ``position`` is the subject's place in the epoch's order; ``occurrence`` counts earlier
    appearances of the same subject in this epoch (a distributed sampler pads by repeating), so
    repeats get their own seeds.
    """

    epoch: int
    position: int
    subject_index: int
    occurrence: int
    num_patches: int
    seed: int


def subject_order(
    num_subjects: int, epoch: int, seed: int, shuffle: bool, subject_sampler: Iterable[int] | None
) -> list[int]:
    """The epoch's subject indices: the sampler's, a seeded permutation, or ``range``."""
    if subject_sampler is not None:
        order = [int(index) for index in subject_sampler]
        invalid = [index for index in order if not 0 <= index < num_subjects]
        if invalid:
            raise IndexError(
                f"subject_sampler yielded indices {invalid[:5]} outside the {num_subjects} subjects"
            )
        return order
    order = list(range(num_subjects))
    if shuffle:
        random.Random(derive_seed(seed, SeedPurpose.SUBJECT_ORDER, epoch)).shuffle(order)
    return order


def plan_epoch(
    epoch: int, order: Sequence[int], patch_counts: Sequence[int], seed: int
) -> list[SubjectTask]:
    """Tasks for the subjects in ``order``; ``patch_counts[i]`` is subject ``i``'s patch count."""
    seen: dict[int, int] = {}
    tasks = []
    for position, index in enumerate(order):
        occurrence = seen.get(index, 0)
        seen[index] = occurrence + 1
        subject_seed = derive_seed(seed, SeedPurpose.SUBJECT, epoch, index, occurrence)
        tasks.append(
            SubjectTask(epoch, position, index, occurrence, patch_counts[index], subject_seed)
        )
    return tasks


@dataclass(frozen=True)
class Admit:
    """The virtual buffer takes in all patches of the task at ``position``."""

    position: int


@dataclass(frozen=True)
class Take:
    """Yield patch ``patch`` (0-based within its subject) of the task at ``position``."""

    position: int
    patch: int


def mixing_schedule(
    tasks: Sequence[SubjectTask], max_length: int, shuffle_seed: int | None
) -> Iterator[Admit | Take]:
    """The reference sequence of admissions and yields for one epoch.

    Subjects are admitted in plan order while all their patches fit in ``max_length``; then one
    buffered patch is yielded: drawn uniformly with ``shuffle_seed``, or the oldest when it is
    ``None``. So the first patch comes once the buffer is full (or holds the whole epoch), and the
    buffer refills as it drains. Requires every task's ``num_patches <= max_length``.
    """
    chooser = None if shuffle_seed is None else random.Random(shuffle_seed)
    buffer: deque[Take] = deque()
    next_task = 0
    while next_task < len(tasks) or buffer:
        while next_task < len(tasks) and len(buffer) + tasks[next_task].num_patches <= max_length:
            yield Admit(next_task)
            buffer.extend(Take(next_task, patch) for patch in range(tasks[next_task].num_patches))
            next_task += 1
        if chooser is not None:
            chosen = chooser.randrange(len(buffer))
            buffer[chosen], buffer[-1] = buffer[-1], buffer[chosen]
            yield buffer.pop()
        else:
            yield buffer.popleft()


@dataclass(frozen=True)
class EpochPlan:
    """Everything that decides an epoch's patches and (in deterministic mode) their order."""

    epoch: int
    tasks: tuple[SubjectTask, ...]
    mixing_seed: int | None

    @property
    def total_patches(self) -> int:
        return sum(task.num_patches for task in self.tasks)


def make_epoch_plan(
    epoch: int,
    order: Sequence[int],
    patch_counts: Sequence[int],
    seed: int,
    shuffle_patches: bool,
) -> EpochPlan:
    """The plan of ``epoch``: its tasks and the seed of its patch shuffling (None: no shuffle)."""
    mixing_seed = derive_seed(seed, SeedPurpose.MIXING, epoch) if shuffle_patches else None
    return EpochPlan(epoch, tuple(plan_epoch(epoch, order, patch_counts, seed)), mixing_seed)
