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
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from enum import IntEnum
from itertools import cycle

import numpy as np


class SeedPurpose(IntEnum):
    """Separates the random streams derived from one seed."""

    SUBJECT_ORDER = 0
    SUBJECT = 1
    MIXING = 2


def derive_seed(seed: int, purpose: SeedPurpose, *entropy: int) -> int:
    """A 63-bit seed that depends only on its arguments (never on process, time or worker).

    ``seed`` is any int; as with ``torch.manual_seed``, a negative one wraps around 2**64.
    """
    sequence = np.random.SeedSequence([seed % 2**64, int(purpose), *entropy])
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
    buffer refills as it drains. Raises ValueError if a task has more than ``max_length`` patches.
    """
    chooser = None if shuffle_seed is None else random.Random(shuffle_seed)
    buffer: deque[Take] = deque()
    next_task = 0
    while next_task < len(tasks) or buffer:
        while next_task < len(tasks) and len(buffer) + tasks[next_task].num_patches <= max_length:
            yield Admit(next_task)
            buffer.extend(Take(next_task, patch) for patch in range(tasks[next_task].num_patches))
            next_task += 1
        if not buffer:  # only tasks without patches were left, or the next one cannot ever fit
            if next_task < len(tasks):
                raise ValueError(
                    f"Task {next_task} has {tasks[next_task].num_patches} patches, more than"
                    f" max_length ({max_length})"
                )
            return
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
    equalized: int = 0
    """Patches added (> 0) or removed (< 0) to match the other ranks: :func:`equalize_tasks`."""

    @property
    def total_patches(self) -> int:
        return sum(task.num_patches for task in self.tasks)


EQUALIZE_POLICIES = ("pad", "trim")


def common_patch_total(rank_totals: Sequence[int], equalize: str) -> int:
    """The patch count all ranks are brought to: the largest's (``"pad"``) or smallest's."""
    if equalize not in EQUALIZE_POLICIES:
        raise ValueError(f"equalize must be one of {EQUALIZE_POLICIES}, got {equalize!r}")
    return max(rank_totals) if equalize == "pad" else min(rank_totals)


def equalize_tasks(tasks: Sequence[SubjectTask], target: int, seed: int) -> list[SubjectTask]:
    """The tasks changed to yield exactly ``target`` patches in all (contract 10 of DESIGN.md).

    Too few: tasks are appended that repeat the last subjects of the order (the last first,
    cycling back through the order if needed), each as the subject's next occurrence, so with its
    own seed (fresh augmentation and positions), and with up to that subject's patch count. Too
    many: the last tasks give fewer patches, and tasks left with none are dropped. Positions stay
    ``0, 1, ...`` in order.

    Raises:
        ValueError: ``target`` is negative, or padding was needed but the tasks have no patches.
    """
    if target < 0:
        raise ValueError(f"The target patch count must be >= 0, got {target}")
    tasks = list(tasks)
    total = sum(task.num_patches for task in tasks)
    while total > target:
        last = tasks[-1]
        cut = min(total - target, last.num_patches)
        total -= cut
        if cut == last.num_patches:
            tasks.pop()
        else:
            tasks[-1] = replace(last, num_patches=last.num_patches - cut)
    if total == target:
        return tasks
    if total == 0:
        raise ValueError(f"Cannot pad an epoch without patches to {target} patches")
    occurrences = Counter(task.subject_index for task in tasks)
    repeated = [task for task in reversed(tasks) if task.num_patches > 0]
    for source in cycle(repeated):  # every step adds at least one patch
        if total == target:
            break
        index, epoch = source.subject_index, source.epoch
        occurrence = occurrences[index]
        occurrences[index] += 1
        count = min(source.num_patches, target - total)
        subject_seed = derive_seed(seed, SeedPurpose.SUBJECT, epoch, index, occurrence)
        tasks.append(SubjectTask(epoch, len(tasks), index, occurrence, count, subject_seed))
        total += count
    return tasks


def make_epoch_plan(
    epoch: int,
    order: Sequence[int],
    patch_counts: Sequence[int],
    seed: int,
    shuffle_patches: bool,
    target_patches: int | None = None,
) -> EpochPlan:
    """The plan of ``epoch``: its tasks and the seed of its patch shuffling (None: no shuffle).

    With ``target_patches`` (a distributed rank's share, see :mod:`shmqueue.distributed`), the
    tasks are padded or trimmed to exactly that many patches by :func:`equalize_tasks`.
    """
    mixing_seed = derive_seed(seed, SeedPurpose.MIXING, epoch) if shuffle_patches else None
    tasks = plan_epoch(epoch, order, patch_counts, seed)
    planned = sum(task.num_patches for task in tasks)
    if target_patches is not None:
        tasks = equalize_tasks(tasks, target_patches, seed)
    equalized = sum(task.num_patches for task in tasks) - planned
    return EpochPlan(epoch, tuple(tasks), mixing_seed, equalized)
