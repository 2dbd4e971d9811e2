"""The adapters' own cost per subject: conversion and seeding, against the transform they wrap.

``python -m benchmarks.adapters [--repeats N]``. One 182x218x182 subject in memory (a T1-like
float32 head and its uint8 labels), one process with one intra-op thread and the volume pool, as
a worker runs. For each wrapped transform, every repeat times

* the adapter applied to the shmqueue Subject: converting it to the library's form, seeding,
  the transform, converting back (what a worker runs), and within that call the wrapped
  transform's own call, on the very input the adapter made; the difference is the adapter's own
  cost, free of the transform's run-to-run spread (tens of ms for an affine);
* the transform alone on its library's own input, built beforehand, with the same random draw
  (the same seeds): a check that the transform costs the same inside the adapter.

The target is an own cost (median over repeats) of at most 5 % of the transform's median time.
The seed is fixed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import shmqueue as sq
from shmqueue.phantoms import head_phantom
from shmqueue.seeding import draw_seeds, seeded_global_generators
from shmqueue.volumes import use_volume_pool

SHAPE = (182, 218, 182)
SEED = 0
TARGET = 0.05
DEFAULT_REPEATS = 7
SEEDING_CALLS = 2000


@dataclass(frozen=True)
class Case:
    """A library transform, its adapter, and how to build the library's own input."""

    name: str
    adapter: sq.Transform
    transform: Any
    library_input: Callable[[sq.Subject], Any]


@dataclass(frozen=True)
class Timing:
    """Median seconds: the transform alone, the adapter's whole call, the transform's call within
    it, and the adapter's own cost (whole call minus the transform's, per repeat)."""

    name: str
    alone: float
    adapted: float
    inside: float
    overhead: float

    @property
    def share(self) -> float:
        return self.overhead / self.inside


def make_subject() -> sq.Subject:
    t1, labels = head_phantom(np.random.default_rng(SEED), SHAPE)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-90.0, -126.0, -72.0]
    return sq.Subject(
        t1=sq.ScalarImage(t1, affine=affine),
        seg=sq.LabelMap(labels[np.newaxis], affine=affine),
        name="head",
    )


def torchio_input(subject: sq.Subject) -> Any:
    import torchio

    return torchio.Subject(
        t1=torchio.ScalarImage(tensor=subject.t1.data, affine=subject.t1.affine),
        seg=torchio.LabelMap(tensor=subject.seg.data, affine=subject.seg.affine),
        name=subject["name"],
    )


def monai_input(subject: sq.Subject) -> Any:
    from monai.data import MetaTensor

    images = {
        name: MetaTensor(image.data.clone(), affine=torch.tensor(image.affine))
        for name, image in subject.images.items()
    }
    return {**images, "name": subject["name"]}


def cases() -> list[Case]:
    import torchio
    from monai.transforms import RandAffined, RandFlipd

    keys = ["t1", "seg"]
    library_cases = [
        ("TorchIO RandomAffine", torchio.RandomAffine(), torchio_input),
        (
            "TorchIO RandomFlip",
            torchio.RandomFlip(axes=(0, 1, 2), flip_probability=1.0),
            torchio_input,
        ),
        (
            "MONAI RandAffined",
            RandAffined(
                keys,
                prob=1.0,
                rotate_range=[0.17] * 3,
                scale_range=[0.1] * 3,
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            monai_input,
        ),
        ("MONAI RandFlipd", RandFlipd(keys, prob=1.0, spatial_axis=0), monai_input),
    ]
    adapters = {torchio_input: sq.TorchioAdapter, monai_input: sq.MonaiAdapter}
    return [
        Case(name, adapters[build](transform), transform, build)
        for name, transform, build in library_cases
    ]


@contextmanager
def timing_calls(transform: Any) -> Iterator[list[float]]:
    """Record the seconds of each call of ``transform`` (an instance) while in the block.

    Its class's ``__call__`` is wrapped for the block's length, so that the adapter still holds
    the transform itself (MONAI's adapter seeds it only if it is ``Randomizable``)."""
    cls = type(transform)
    own = vars(cls).get("__call__")
    call = cls.__call__
    seconds: list[float] = []

    def timed(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self is not transform:
            return call(self, *args, **kwargs)
        start = time.perf_counter()
        try:
            return call(self, *args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    cls.__call__ = timed
    try:
        yield seconds
    finally:
        if own is None:
            del cls.__call__
        else:
            cls.__call__ = own


def time_adapted(case: Case, subject: sq.Subject, seed: int) -> tuple[float, float]:
    """Seconds of the adapter's whole call and of the wrapped transform's call within it."""
    generator = torch.Generator().manual_seed(seed)
    with timing_calls(case.transform) as inside:
        start = time.perf_counter()
        case.adapter(subject, generator)
        whole = time.perf_counter() - start
    return whole, sum(inside)


def time_alone(case: Case, subject: sq.Subject, seed: int) -> float:
    """The wrapped transform on its own input, after the seeding the adapter does (untimed)."""
    inputs = case.library_input(subject)
    generator = torch.Generator().manual_seed(seed)
    with seeded_global_generators(generator):
        if hasattr(case.transform, "set_random_state"):  # MONAI's own state, as the adapter
            case.transform.set_random_state(seed=draw_seeds(generator, 1)[0])
        start = time.perf_counter()
        case.transform(inputs)
        return time.perf_counter() - start


def measure(case: Case, subject: sq.Subject, repeats: int) -> Timing:
    time_adapted(case, subject, SEED)  # warm-up: first calls initialise libraries
    time_alone(case, subject, SEED)
    alone, adapted, inside = [], [], []
    for repeat in range(repeats):
        seed = SEED + 1 + repeat
        whole, within = time_adapted(case, subject, seed)
        adapted.append(whole)
        inside.append(within)
        alone.append(time_alone(case, subject, seed))
    return Timing(
        case.name,
        statistics.median(alone),
        statistics.median(adapted),
        statistics.median(inside),
        statistics.median(whole - within for whole, within in zip(adapted, inside)),
    )


def seeding_seconds() -> float:
    """Seconds to seed and restore torch's, numpy's and Python's global generators once."""
    generator = torch.Generator().manual_seed(SEED)
    start = time.perf_counter()
    for _ in range(SEEDING_CALLS):
        with seeded_global_generators(generator):
            pass
    return (time.perf_counter() - start) / SEEDING_CALLS


def table(timings: Sequence[Timing], seeding: float, repeats: int) -> str:
    x, y, z = SHAPE
    lines = [
        f"Adapters' own cost per subject ({x}x{y}x{z} float32 T1 + uint8 labels, one process,"
        f" one intra-op thread, volume pool, medians of {repeats} repeats, seed {SEED})",
        "",
        "| transform | alone (ms) | within the adapter (ms) | adapter's whole call (ms) |"
        f" adapter's own cost (ms) | share | target <= {TARGET:.0%} |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for timing in timings:
        verdict = "met" if timing.share <= TARGET else "MISSED"
        lines.append(
            f"| {timing.name} | {timing.alone * 1e3:.1f} | {timing.inside * 1e3:.1f} |"
            f" {timing.adapted * 1e3:.1f} | {timing.overhead * 1e3:.1f} | {timing.share:.1%} |"
            f" {verdict} |"
        )
    lines += ["", f"Seeding and restoring the global generators: {seeding * 1e6:.0f} us per call."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adapters", description=__doc__)
    parser.add_argument(
        "--repeats",
        type=int,
        default=DEFAULT_REPEATS,
        help=f"paired timings per transform (default {DEFAULT_REPEATS})",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    torch.set_num_threads(1)  # as a worker
    use_volume_pool()
    torch.manual_seed(SEED)
    subject = make_subject()
    timings = [measure(case, subject, args.repeats) for case in cases()]
    print(table(timings, seeding_seconds(), args.repeats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
