"""The epoch plan (pure): derived seeds, subject order, tasks and the reference mixing schedule."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shmqueue.plan import (
    Admit,
    SeedPurpose,
    SubjectTask,
    Take,
    derive_seed,
    make_epoch_plan,
    mixing_schedule,
    plan_epoch,
    subject_order,
)

seeds = st.integers(-(2**63), 2**64 - 1)


# Seeds and order ----------------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(seed=seeds, epoch=st.integers(0, 10**6), index=st.integers(0, 10**6))
def test_derive_seed_is_a_pure_63_bit_function(seed: int, epoch: int, index: int) -> None:
    derived = derive_seed(seed, SeedPurpose.SUBJECT, epoch, index)
    assert derived == derive_seed(seed, SeedPurpose.SUBJECT, epoch, index)
    assert 0 <= derived < 2**63
    assert derived != derive_seed(seed, SeedPurpose.MIXING, epoch, index)
    assert derived != derive_seed(seed, SeedPurpose.SUBJECT, epoch, index + 1)
    assert derived != derive_seed(seed, SeedPurpose.SUBJECT, epoch + 1, index)


def test_derive_seed_accepts_negative_seeds() -> None:
    derived = derive_seed(-1, SeedPurpose.SUBJECT_ORDER, 0)
    assert derived == derive_seed(2**64 - 1, SeedPurpose.SUBJECT_ORDER, 0)
    assert derived != derive_seed(1, SeedPurpose.SUBJECT_ORDER, 0)
    assert 0 <= derived < 2**63


def test_subject_order_without_shuffle_is_range() -> None:
    assert subject_order(5, 3, 0, False, None) == [0, 1, 2, 3, 4]


@settings(max_examples=30, deadline=None)
@given(num_subjects=st.integers(1, 40), seed=seeds, epoch=st.integers(0, 100))
def test_shuffled_order_is_a_reproducible_permutation(
    num_subjects: int, seed: int, epoch: int
) -> None:
    order = subject_order(num_subjects, epoch, seed, True, None)
    assert sorted(order) == list(range(num_subjects))
    assert order == subject_order(num_subjects, epoch, seed, True, None)


def test_shuffled_order_changes_across_epochs_and_seeds() -> None:
    orders = {tuple(subject_order(10, epoch, 0, True, None)) for epoch in range(5)}
    assert len(orders) == 5
    assert subject_order(10, 0, 0, True, None) != subject_order(10, 0, 1, True, None)


def test_subject_sampler_decides_the_order() -> None:
    assert subject_order(5, 0, 0, False, [4, 1, 1]) == [4, 1, 1]
    with pytest.raises(IndexError, match=r"\[5, -1\].*5 subjects"):
        subject_order(5, 0, 0, False, [0, 5, -1])


def test_plan_epoch_counts_repeats_and_gives_each_its_own_seed() -> None:
    tasks = plan_epoch(2, [3, 0, 3], [4, 5, 6, 7], seed=9)
    assert [(t.position, t.subject_index, t.occurrence) for t in tasks] == [
        (0, 3, 0),
        (1, 0, 0),
        (2, 3, 1),
    ]
    assert [t.num_patches for t in tasks] == [7, 4, 7]
    assert all(t.epoch == 2 for t in tasks)
    assert len({t.seed for t in tasks}) == 3
    assert tasks[0].seed == derive_seed(9, SeedPurpose.SUBJECT, 2, 3, 0)
    # A subject's seed depends on (seed, epoch, subject, occurrence), not on its position.
    assert plan_epoch(2, [0, 3], [4, 5, 6, 7], seed=9)[1].seed == tasks[0].seed


def test_make_epoch_plan_seeds_mixing_only_when_shuffling() -> None:
    shuffled = make_epoch_plan(1, [1, 0], [2, 3], seed=5, shuffle_patches=True)
    assert shuffled.mixing_seed == derive_seed(5, SeedPurpose.MIXING, 1)
    assert shuffled.total_patches == 5
    assert make_epoch_plan(1, [1, 0], [2, 3], seed=5, shuffle_patches=False).mixing_seed is None


# Mixing schedule ----------------------------------------------------------------------------------


@st.composite
def schedules(draw: st.DrawFn) -> tuple[list[SubjectTask], int, int | None]:
    """Tasks with 0..max_length patches each, a max_length and an optional shuffle seed."""
    max_length = draw(st.integers(1, 12))
    counts = draw(st.lists(st.integers(0, max_length), max_size=10))
    tasks = [SubjectTask(0, position, position, 0, n, 0) for position, n in enumerate(counts)]
    return tasks, max_length, draw(st.none() | seeds)


def replay(tasks: list[SubjectTask], max_length: int, seed: int | None) -> list[Take]:
    """Run the schedule, checking the buffer invariants at every event; return the takes."""
    buffered = 0
    admitted = 0
    takes = []
    for event in mixing_schedule(tasks, max_length, seed):
        if isinstance(event, Admit):
            assert event.position == admitted  # subjects enter in plan order
            admitted += 1
            buffered += tasks[event.position].num_patches
            assert buffered <= max_length
            continue
        # A take only when the buffer is as full as it gets: all admitted or the next won't fit.
        assert admitted == len(tasks) or buffered + tasks[admitted].num_patches > max_length
        assert event.position < admitted
        buffered -= 1
        takes.append(event)
    assert buffered == 0
    return takes


@settings(max_examples=150, deadline=None)
@given(schedule=schedules())
def test_every_planned_patch_is_taken_exactly_once(
    schedule: tuple[list[SubjectTask], int, int | None],
) -> None:
    tasks, max_length, seed = schedule
    takes = replay(tasks, max_length, seed)
    expected = Counter(Take(t.position, p) for t in tasks for p in range(t.num_patches))
    assert Counter(takes) == expected
    assert all(count == 1 for count in Counter(takes).values())


@settings(max_examples=100, deadline=None)
@given(schedule=schedules())
def test_first_take_waits_for_a_full_buffer_or_the_whole_epoch(
    schedule: tuple[list[SubjectTask], int, int | None],
) -> None:
    tasks, max_length, seed = schedule
    events = list(mixing_schedule(tasks, max_length, seed))
    first_take = next((i for i, e in enumerate(events) if isinstance(e, Take)), len(events))
    admitted = [e for e in events[:first_take] if isinstance(e, Admit)]
    buffered = sum(tasks[e.position].num_patches for e in admitted)
    everything = len(admitted) == len(tasks)
    assert everything or buffered + tasks[len(admitted)].num_patches > max_length


@settings(max_examples=100, deadline=None)
@given(schedule=schedules())
def test_without_seed_the_order_is_fifo(
    schedule: tuple[list[SubjectTask], int, int | None],
) -> None:
    tasks, max_length, _ = schedule
    takes = replay(tasks, max_length, None)
    assert takes == [Take(t.position, p) for t in tasks for p in range(t.num_patches)]


@settings(max_examples=50, deadline=None)
@given(schedule=schedules())
def test_with_seed_the_order_is_reproducible(
    schedule: tuple[list[SubjectTask], int, int | None],
) -> None:
    tasks, max_length, seed = schedule
    assert list(mixing_schedule(tasks, max_length, seed)) == list(
        mixing_schedule(tasks, max_length, seed)
    )


def test_shuffling_mixes_subjects_within_the_buffer() -> None:
    tasks = [SubjectTask(0, position, position, 0, 4, 0) for position in range(4)]
    takes = list(replay(tasks, 8, seed=3))
    fifo = [Take(t.position, p) for t in tasks for p in range(4)]
    assert takes != fifo
    # The first take comes from the two subjects that fill the buffer.
    assert takes[0].position in (0, 1)


def test_tasks_without_patches_are_admitted_and_skipped() -> None:
    tasks = [SubjectTask(0, 0, 0, 0, 0, 0), SubjectTask(0, 1, 1, 0, 2, 0)]
    assert list(mixing_schedule(tasks, 2, None)) == [Admit(0), Admit(1), Take(1, 0), Take(1, 1)]
    only_empty = [SubjectTask(0, 0, 0, 0, 0, 0)]
    assert list(mixing_schedule(only_empty, 2, None)) == [Admit(0)]


def test_a_task_larger_than_the_buffer_is_refused() -> None:
    tasks = [SubjectTask(0, 0, 0, 0, 3, 0)]
    with pytest.raises(ValueError, match=r"3 patches, more than max_length \(2\)"):
        list(mixing_schedule(tasks, 2, None))
