"""What one subject costs in one process: the yardstick for the ideal throughput of N workers.

A worker's whole job per subject is :meth:`SubjectPipeline.run` (load, augment, draw locations)
followed by copying each patch into its slot. Timing exactly that here, in one process with one
intra-op thread (as a worker runs), gives the seconds per subject; N workers can at best produce
``N * patches_per_volume`` patches in that time. The same subjects are also timed step by step
(gzip alone, load, flip, noise, sampling and copy) to show where the time goes.
"""

from __future__ import annotations

import gzip
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import torch

import shmqueue as sq
from shmqueue.pipeline import SubjectPipeline
from shmqueue.plan import make_epoch_plan
from shmqueue.transforms import SubjectTransform

Argument = TypeVar("Argument")
Outcome = TypeVar("Outcome")


@dataclass(frozen=True)
class SubjectCost:
    """Median seconds per subject (one process, one intra-op thread) and the files' sizes.

    ``pipeline_seconds`` is the worker's job with the real transform; the other seconds time
    its steps one by one, flip and noise always applied (the real transform flips half the time).
    """

    subjects: int
    pipeline_seconds: float
    decompress_seconds: float
    load_seconds: float
    flip_seconds: float
    noise_seconds: float
    sample_copy_seconds: float
    compressed_bytes: int
    raw_bytes: int


def measure_subject_cost(
    paths: Sequence[Path],
    patch_size: int,
    patches_per_volume: int,
    transform: SubjectTransform,
    seed: int,
) -> SubjectCost:
    """Time the worker's job on each of ``paths`` (after one untimed warm-up subject)."""
    torch.set_num_threads(1)
    subjects = [sq.Subject(t1=sq.ScalarImage(path)) for path in paths]
    sampler = sq.UniformSampler(subjects[0], patch_size=patch_size)
    pipeline = SubjectPipeline(subjects, transform, sampler, {"t1": (1, torch.float32)})
    plan = make_epoch_plan(
        0, range(len(subjects)), [patches_per_volume] * len(subjects), seed, True
    )
    slots = torch.empty((patches_per_volume, 1, *sampler.patch_size))
    generator = torch.Generator().manual_seed(seed)
    flip, noise = sq.Flip(axes=(0,), p=1.0), sq.Noise(std=0.1)

    def fill_slots(subject: sq.Subject, locations: Sequence[sq.PatchLocation]) -> None:
        for slot, location in zip(slots, locations):
            slot.copy_(subject.t1.data[(slice(None), *location.to_slices())])

    def run_pipeline(index: int) -> None:
        fill_slots(*pipeline.run(plan.tasks[index]))

    def load(index: int) -> sq.Subject:
        subject = subjects[index].copy()
        subject.load()
        return subject

    def sample_and_copy(subject: sq.Subject) -> None:
        fill_slots(subject, sampler.locations(subject, patches_per_volume, generator))

    run_pipeline(0)  # warm-up: first-use costs of nibabel, zlib and torch
    timed = range(1, len(subjects))
    pipeline_seconds, decompress_seconds, load_seconds = [], [], []
    flip_seconds, noise_seconds, sample_seconds = [], [], []
    raw_bytes = 0
    for index in timed:
        pipeline_seconds.append(_timed(run_pipeline, index)[1])
        raw, seconds = _timed(lambda path: gzip.decompress(path.read_bytes()), paths[index])
        decompress_seconds.append(seconds)
        raw_bytes = len(raw)
        loaded, seconds = _timed(load, index)
        load_seconds.append(seconds)
        flipped, seconds = _timed(lambda subject: flip(subject, generator), loaded)
        flip_seconds.append(seconds)
        noisy, seconds = _timed(lambda subject: noise(subject, generator), flipped)
        noise_seconds.append(seconds)
        sample_seconds.append(_timed(sample_and_copy, noisy)[1])
    return SubjectCost(
        subjects=len(timed),
        pipeline_seconds=statistics.median(pipeline_seconds),
        decompress_seconds=statistics.median(decompress_seconds),
        load_seconds=statistics.median(load_seconds),
        flip_seconds=statistics.median(flip_seconds),
        noise_seconds=statistics.median(noise_seconds),
        sample_copy_seconds=statistics.median(sample_seconds),
        compressed_bytes=int(statistics.median(paths[index].stat().st_size for index in timed)),
        raw_bytes=raw_bytes,
    )


def _timed(function: Callable[[Argument], Outcome], argument: Argument) -> tuple[Outcome, float]:
    started = time.perf_counter()
    result = function(argument)
    return result, time.perf_counter() - started
