"""Distributed training (contract 10): disjoint, covering shards and equal batches on every rank.

Fast tests drive the sampler and the equalisation without processes; two tests launch 2 and 3
ranks with torch.distributed (gloo on 127.0.0.1), each rank with its own Queue and two forked
workers, training a tiny DDP model for two epochs (unequal batch counts would hang DDP's
all-reduce, which the timeout turns into a failure).
"""

from __future__ import annotations

import gc
import json
import math
import socket
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler

import shmqueue as sq
from shmqueue.distributed import predictable_sampler
from shmqueue.plan import (
    SeedPurpose,
    SubjectTask,
    common_patch_total,
    derive_seed,
    equalize_tasks,
    make_epoch_plan,
    plan_epoch,
)

# Three spatial shapes whose 8^3 grids have 8, 4 and 2 patches.
SHAPES = ((16, 16, 16), (16, 16, 8), (16, 8, 8))
GRID_COUNTS = (8, 4, 2)


def make_subjects(count: int, shapes: tuple[tuple[int, int, int], ...]) -> list[sq.Subject]:
    """Tiny in-memory subjects named ``s0``, ``s1``...; subject ``i`` has ``shapes[i % len]``."""
    return [
        sq.Subject(
            t1=sq.ScalarImage(torch.full((1, *shapes[index % len(shapes)]), float(index))),
            name=f"s{index}",
        )
        for index in range(count)
    ]


def reference_assignment(num_subjects: int, world_size: int, seed: int, epoch: int) -> list[int]:
    """torch's rule, written out: permute with seed + epoch, pad by repeating from the first."""
    permutation = torch.randperm(
        num_subjects, generator=torch.Generator().manual_seed(seed + epoch)
    ).tolist()
    total = math.ceil(num_subjects / world_size) * world_size
    return (permutation * world_size)[:total]


# The sampler --------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    num_subjects=st.integers(0, 30),
    world_size=st.integers(1, 5),
    data=st.data(),
    shuffle=st.booleans(),
    seed=st.integers(0, 2**31),
    drop_last=st.booleans(),
    epoch=st.integers(0, 1000),
)
def test_sampler_is_torchs_distributed_sampler(
    num_subjects: int,
    world_size: int,
    data: st.DataObject,
    shuffle: bool,
    seed: int,
    drop_last: bool,
    epoch: int,
) -> None:
    rank = data.draw(st.integers(0, world_size - 1))
    options: dict[str, Any] = {"shuffle": shuffle, "seed": seed, "drop_last": drop_last}
    ours = sq.DistributedSubjectSampler(num_subjects, world_size, rank, **options)
    theirs = DistributedSampler(range(num_subjects), world_size, rank, **options)
    ours.set_epoch(epoch)
    theirs.set_epoch(epoch)
    assert list(ours) == list(theirs) == ours.indices_for(epoch, rank)
    assert len(ours) == len(theirs)
    equivalent = predictable_sampler(theirs)
    assert equivalent is not None
    assert [equivalent.indices_for(epoch, r) for r in range(world_size)] == [
        ours.indices_for(epoch, r) for r in range(world_size)
    ]


@settings(max_examples=100, deadline=None)
@given(
    num_subjects=st.integers(1, 30),
    world_size=st.integers(1, 5),
    seed=st.integers(0, 2**31),
    epoch=st.integers(0, 1000),
)
def test_shards_are_disjoint_and_cover_up_to_the_padding(
    num_subjects: int, world_size: int, seed: int, epoch: int
) -> None:
    sampler = sq.DistributedSubjectSampler(num_subjects, world_size, 0, seed=seed)
    shards = [sampler.indices_for(epoch, rank) for rank in range(world_size)]
    assert len({len(shard) for shard in shards}) == 1
    everything = Counter(index for shard in shards for index in shard)
    assert everything == Counter(reference_assignment(num_subjects, world_size, seed, epoch))
    assert set(everything) == set(range(num_subjects))

    cut = sq.DistributedSubjectSampler(num_subjects, world_size, 0, seed=seed, drop_last=True)
    kept = [index for rank in range(world_size) for index in cut.indices_for(epoch, rank)]
    assert len(kept) == len(set(kept)) == num_subjects // world_size * world_size


def test_indices_for_is_pure_and_set_epoch_moves_iteration() -> None:
    sampler = sq.DistributedSubjectSampler(10, num_replicas=3, rank=1, seed=7)
    first = sampler.indices_for(0, 1)
    sampler.set_epoch(5)
    assert sampler.indices_for(0, 1) == first
    assert list(sampler) == sampler.indices_for(5, 1) != first
    assert sampler.indices_for(5, 2) != sampler.indices_for(5, 1)
    unshuffled = sq.DistributedSubjectSampler(10, 3, 1, shuffle=False)
    unshuffled.set_epoch(5)
    assert list(unshuffled) == [1, 4, 7, 0]  # 10 subjects padded to 12 with subject 0
    assert "num_replicas=3" in repr(sampler)


def test_sampler_rank_comes_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert sq.distributed_environment() == sq.RankInfo(2, 3, 2, 3)  # one node assumed
    sampler = sq.DistributedSubjectSampler(7)
    assert (sampler.rank, sampler.num_replicas) == (2, 3)
    assert sq.DistributedSubjectSampler(7, rank=0).rank == 0
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    assert sq.distributed_environment() == sq.RankInfo(2, 3, 0, 1)


@pytest.mark.parametrize(
    ("environment", "error", "match"),
    [
        ({}, RuntimeError, "init_process_group"),
        ({"RANK": "0"}, RuntimeError, "WORLD_SIZE"),
        ({"RANK": "one", "WORLD_SIZE": "2"}, ValueError, "RANK='one'"),
        ({"RANK": "2", "WORLD_SIZE": "2"}, ValueError, "0 <= rank < world_size"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "0"}, ValueError, "local_rank"),
    ],
)
def test_bad_distributed_environment_is_explained(
    monkeypatch: pytest.MonkeyPatch,
    environment: dict[str, str],
    error: type[Exception],
    match: str,
) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(error, match=match):
        sq.distributed_environment()


@pytest.mark.parametrize(
    ("num_replicas", "rank", "match"),
    [(0, 0, "num_replicas must be >= 1"), (2, 2, "Invalid rank 2"), (2, -1, "Invalid rank -1")],
)
def test_bad_sampler_arguments(num_replicas: int, rank: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sq.DistributedSubjectSampler(4, num_replicas, rank)
    with pytest.raises(ValueError, match="Invalid rank 5"):
        sq.DistributedSubjectSampler(4, 2, 0).indices_for(0, 5)


def test_only_pure_samplers_are_predictable() -> None:
    class Reversed(DistributedSampler[int]):
        def __iter__(self) -> Iterator[int]:
            return reversed(list(super().__iter__()))

    class Renamed(DistributedSampler[int]):
        pass

    assert predictable_sampler(Reversed(range(4), 2, 0)) is None
    assert predictable_sampler([0, 1]) is None
    assert predictable_sampler(None) is None
    torch_sampler = Renamed(range(4), 2, 1, seed=3)
    torch_sampler.set_epoch(4)
    equivalent = predictable_sampler(torch_sampler)
    assert equivalent is not None
    assert (equivalent.epoch, list(equivalent)) == (4, list(torch_sampler))


# Equalisation (pure) ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    counts=st.lists(st.integers(1, 6), min_size=1, max_size=8),
    data=st.data(),
    target=st.integers(0, 60),
    seed=st.integers(0, 2**63 - 1),
)
def test_equalized_tasks_give_exactly_the_target(
    counts: list[int], data: st.DataObject, target: int, seed: int
) -> None:
    order = data.draw(st.lists(st.integers(0, len(counts) - 1), min_size=1, max_size=6))
    tasks = plan_epoch(3, order, counts, seed)
    total = sum(task.num_patches for task in tasks)
    equalized = equalize_tasks(tasks, target, seed)
    assert sum(task.num_patches for task in equalized) == target
    assert [task.position for task in equalized] == list(range(len(equalized)))
    assert all(0 < task.num_patches <= counts[task.subject_index] for task in equalized)
    if target <= total:  # trimmed: a prefix of the tasks, the last one possibly shortened
        whole = max(len(equalized) - 1, 0)
        assert equalized[:whole] == tasks[:whole]
        if equalized:  # the last kept task is the original one with fewer patches
            shortened = tasks[len(equalized) - 1]
            assert equalized[-1] == replace(shortened, num_patches=equalized[-1].num_patches)
        return
    assert equalized[: len(tasks)] == tasks
    extra = equalized[len(tasks) :]
    assert {task.subject_index for task in extra} <= set(order)  # only the rank's own subjects
    assert extra[0].subject_index == order[-1]  # the last subject first
    occurrences = [(task.subject_index, task.occurrence) for task in equalized]
    assert len(set(occurrences)) == len(occurrences)  # every repeat with its own seed
    for task in extra:
        expected = derive_seed(seed, SeedPurpose.SUBJECT, 3, task.subject_index, task.occurrence)
        assert task.seed == expected


def test_equalized_plan_records_the_change() -> None:
    padded = make_epoch_plan(0, [0, 1], [4, 2], seed=1, shuffle_patches=True, target_patches=9)
    assert (padded.total_patches, padded.equalized) == (9, 3)
    tasks = [(task.subject_index, task.num_patches) for task in padded.tasks]
    assert tasks == [(0, 4), (1, 2), (1, 2), (0, 1)]
    trimmed = make_epoch_plan(0, [0, 1], [4, 2], seed=1, shuffle_patches=True, target_patches=3)
    assert (trimmed.total_patches, trimmed.equalized) == (3, -3)
    assert make_epoch_plan(0, [0, 1], [4, 2], seed=1, shuffle_patches=True).equalized == 0


def test_equalization_policy_and_impossible_padding() -> None:
    assert common_patch_total([5, 9, 7], "pad") == 9
    assert common_patch_total([5, 9, 7], "trim") == 5
    with pytest.raises(ValueError, match="equalize must be one of"):
        common_patch_total([5], "average")
    with pytest.raises(ValueError, match="without patches"):
        equalize_tasks([], 4, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        equalize_tasks([SubjectTask(0, 0, 0, 0, 2, 1)], -1, seed=0)


# Queues of several ranks in one process -----------------------------------------------------------


def grid_queue(
    subjects: list[sq.Subject], subject_sampler: Any, equalize: str = "pad", seed: int = 0
) -> sq.Queue:
    """An in-process queue tiling ``subjects`` with 8^3 patches (8, 4 or 2 per shape)."""
    return sq.Queue(
        subjects,
        sq.GridSampler(None, 8),
        max_length=16,
        patches_per_volume=8,
        shuffle_subjects=False,
        subject_sampler=subject_sampler,
        seed=seed,
        equalize=equalize,
    )


def rank_queues(
    subjects: list[sq.Subject], world_size: int, equalize: str = "pad"
) -> list[sq.Queue]:
    """Every rank's queue, as each rank of a job would build its own."""
    return [
        grid_queue(
            subjects,
            sq.DistributedSubjectSampler(subjects, world_size, rank, seed=0),
            equalize,
            seed=rank,
        )
        for rank in range(world_size)
    ]


@pytest.mark.parametrize("equalize", ["pad", "trim"])
def test_every_rank_yields_the_same_patches_with_a_grid(equalize: str) -> None:
    subjects = make_subjects(7, SHAPES)
    counts = [GRID_COUNTS[index % 3] for index in range(7)]
    queues = rank_queues(subjects, 3, equalize)
    for epoch in range(3):
        for queue in queues:
            queue.set_epoch(epoch)
        own = [sum(counts[index] for index in queue.subject_sampler) for queue in queues]
        target = max(own) if equalize == "pad" else min(own)
        assert [len(queue) for queue in queues] == [target] * 3
        for queue, planned in zip(queues, own):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                names = Counter(patch.name for patch in queue)
            assert sum(names.values()) == target
            own_names = {f"s{index}" for index in queue.subject_sampler}
            # Padding repeats only the rank's own subjects; trimming may leave the last out.
            assert set(names) == own_names if equalize == "pad" else set(names) <= own_names
            if planned == target:
                assert not caught
                continue
            (warning,) = caught
            assert warning.category is sq.EqualizationWarning
            verb = "padded with" if equalize == "pad" else "trimmed"
            assert f"{verb} {abs(planned - target)} " in str(warning.message)
    for queue in queues:
        queue.close()


def test_torch_distributed_sampler_is_equalized_too() -> None:
    subjects = make_subjects(5, SHAPES)
    planned, totals = [], []
    for rank in range(2):
        sampler = DistributedSampler(subjects, num_replicas=2, rank=rank, seed=1)
        planned.append(sum(GRID_COUNTS[index % 3] for index in sampler))
        with grid_queue(subjects, sampler) as queue, warnings.catch_warnings():
            warnings.simplefilter("ignore", sq.EqualizationWarning)
            totals.append((len(queue), sum(1 for _ in queue)))
    assert planned[0] != planned[1]
    assert totals == [(max(planned), max(planned))] * 2


def test_upcoming_plan_is_the_next_epochs_plan() -> None:
    """What the engine prefetches is exactly what the next epoch asks for after set_epoch."""
    (queue, _) = rank_queues(make_subjects(5, SHAPES), 2)
    queue.set_epoch(4)
    upcoming = queue._plan(5, upcoming=True)
    queue.set_epoch(5)
    assert queue._plan(5) == upcoming
    assert upcoming != queue._plan(5, upcoming=True)


def test_queue_checks_its_subject_sampler() -> None:
    subjects = make_subjects(3, SHAPES[:1])
    sampler = sq.UniformSampler(None, 8)
    options: dict[str, Any] = {"max_length": 4, "patches_per_volume": 2, "shuffle_subjects": False}
    with pytest.raises(TypeError, match="sized iterable of subject indices"):
        sq.Queue(subjects, sampler, subject_sampler=iter([0, 1]), **options)
    with pytest.raises(ValueError, match="shards 4 subjects but the queue has 3"):
        sq.Queue(subjects, sampler, subject_sampler=DistributedSampler(range(4), 2, 0), **options)
    with pytest.raises(ValueError, match="equalize must be one of"):
        sq.Queue(subjects, sampler, equalize="drop", **options)


# Memory budget ------------------------------------------------------------------------------------


def test_per_rank_memory_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    assert sq.per_rank_memory_budget(total_bytes=10, local_world_size=3) == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert sq.per_rank_memory_budget(total_bytes=2**30) == 2**28
    assert 0 < sq.per_rank_memory_budget() <= sq.per_rank_memory_budget(local_world_size=1)
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    assert sq.per_rank_memory_budget(total_bytes=100) == 100
    with pytest.raises(ValueError, match="local_world_size must be >= 1"):
        sq.per_rank_memory_budget(total_bytes=100, local_world_size=0)
    with pytest.raises(ValueError, match="total_bytes must be >= 0"):
        sq.per_rank_memory_budget(total_bytes=-1, local_world_size=1)


# Several ranks ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One multi-rank run; rank 0 writes what every rank saw to ``report`` as JSON."""

    world_size: int
    num_subjects: int
    subject_sampler: str  # "torch" (DistributedSampler) or "shmqueue" (DistributedSubjectSampler)
    patch_sampler: str  # "uniform" (equal counts) or "grid" (counts by shape)
    port: int
    report: str
    epochs: int = 2
    batch_size: int = 3
    sampler_seed: int = 3


def run_rank(rank: int, job: Job) -> None:
    """One rank: its own Queue with two forked workers, a tiny DDP model, ``job.epochs`` epochs."""
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{job.port}", rank=rank, world_size=job.world_size
    )
    try:
        grid = job.patch_sampler == "grid"
        subjects = make_subjects(job.num_subjects, SHAPES if grid else SHAPES[:1])
        subject_sampler: Any = (
            DistributedSampler(subjects, shuffle=True, seed=job.sampler_seed)
            if job.subject_sampler == "torch"
            else sq.DistributedSubjectSampler(subjects, shuffle=True, seed=job.sampler_seed)
        )
        patch_sampler = sq.GridSampler(None, 8) if grid else sq.UniformSampler(None, 8)
        model = DistributedDataParallel(nn.Conv3d(1, 1, 3, padding=1))
        optimiser = torch.optim.SGD(model.parameters(), lr=1e-3)
        epochs = []
        with sq.Queue(
            subjects,
            patch_sampler,
            max_length=16,
            patches_per_volume=8 if grid else 4,
            num_workers=2,
            shuffle_subjects=False,
            subject_sampler=subject_sampler,
            seed=rank,
            multiprocessing_context="fork",
        ) as queue:
            loader = sq.SubjectsLoader(queue, batch_size=job.batch_size)
            for epoch in range(job.epochs):
                queue.set_epoch(epoch)
                expected_batches = len(loader)
                batches = patches = 0
                seen: set[str] = set()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", sq.EqualizationWarning)
                    for batch in loader:
                        optimiser.zero_grad()
                        inputs = batch.t1.data
                        loss = (model(inputs) - inputs).square().mean()
                        loss.backward()  # DDP all-reduces here: unequal batch counts hang
                        optimiser.step()
                        batches += 1
                        patches += inputs.shape[0]
                        seen.update(batch.name)
                epochs.append(
                    {
                        "assigned": [int(index) for index in subject_sampler],
                        "seen": sorted(int(name[1:]) for name in seen),
                        "batches": batches,
                        "patches": patches,
                        "expected_batches": expected_batches,
                    }
                )
        gathered: list[Any] = [None] * job.world_size
        dist.all_gather_object(gathered, {"rank": rank, "epochs": epochs})
        if rank == 0:
            Path(job.report).write_text(json.dumps({"job": asdict(job), "ranks": gathered}))
        # DDP's reducer holds gloo work objects; freed after the group is destroyed (or at
        # interpreter exit), their threads can abort the rank with "terminate called without an
        # active exception". Free them first, and let every rank get here.
        del model, optimiser
        gc.collect()
        dist.barrier()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def run_job(job: Job, timeout: float) -> dict[str, Any]:
    """Start the ranks as spawned processes, join them within ``timeout`` s, return the report."""
    context = torch.multiprocessing.start_processes(
        run_rank, args=(job,), nprocs=job.world_size, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout
    try:
        while not context.join(timeout=max(deadline - time.monotonic(), 0.0)):
            if time.monotonic() >= deadline:
                raise AssertionError(f"{job.world_size} ranks did not finish in {timeout:.0f} s")
    finally:
        for process in context.processes:
            if process.is_alive():
                process.kill()
            process.join(timeout=10)
    report: dict[str, Any] = json.loads(Path(job.report).read_text())
    return report


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("world_size", "num_subjects", "subject_sampler", "patch_sampler"),
    [(2, 5, "torch", "uniform"), (3, 7, "shmqueue", "grid")],
    ids=["2-ranks-DistributedSampler-uniform", "3-ranks-shmqueue-sampler-grid"],
)
def test_ranks_train_in_step(
    tmp_path: Path, world_size: int, num_subjects: int, subject_sampler: str, patch_sampler: str
) -> None:
    job = Job(
        world_size,
        num_subjects,
        subject_sampler,
        patch_sampler,
        port=free_port(),
        report=str(tmp_path / "report.json"),
    )
    report = run_job(job, timeout=240)
    ranks = sorted(report["ranks"], key=lambda entry: entry["rank"])
    assert [entry["rank"] for entry in ranks] == list(range(world_size))
    counts = [
        GRID_COUNTS[index % 3] if patch_sampler == "grid" else 4 for index in range(num_subjects)
    ]
    orders = []
    for epoch in range(job.epochs):
        views = [entry["epochs"][epoch] for entry in ranks]
        assigned = [view["assigned"] for view in views]
        # Disjoint and covering, up to DistributedSampler's padding with the first subjects.
        everything = Counter(index for shard in assigned for index in shard)
        expected = reference_assignment(num_subjects, world_size, job.sampler_seed, epoch)
        assert everything == Counter(expected)
        assert set(everything) == set(range(num_subjects))
        for view in views:  # each rank saw exactly its own subjects
            assert view["seen"] == sorted(set(view["assigned"]))
        # The same batches everywhere: the largest rank's patch total (padding).
        common = max(sum(counts[index] for index in shard) for shard in assigned)
        assert [view["patches"] for view in views] == [common] * world_size
        batches = math.ceil(common / job.batch_size)
        assert [view["batches"] for view in views] == [batches] * world_size
        assert [view["expected_batches"] for view in views] == [batches] * world_size
        orders.append(assigned)
    assert orders[0] != orders[1]  # set_epoch reshuffled the subjects
