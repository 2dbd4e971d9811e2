"""The steady-state benchmark (issue 3): throughput, waits and memory of a queue while training.

The workload, as the issue states it: 48 subjects (24 generated 182x218x182 int16 ``.nii.gz``
files, each listed twice), patches of 64^3, 10 patches per volume, ``max_length=100``, batches of
16, ``Compose([Flip(axes=(0,), p=0.5), Noise(std=0.1)])``, 2 epochs, once with a no-op training
step and once with a 0.15 s step per batch (``time.sleep`` stands in for the GPU: it is the
simulated workload, not synchronisation). Each runs with 2 workers and, as the in-run baseline,
with ``num_workers=0``: the in-process path, which refills synchronously as TorchIO 1.x does.

Every measured run starts in a fresh interpreter (:mod:`benchmarks.isolation`), configurations
are interleaved within each repeat so that load from other processes spreads over all of them,
and the yardstick (seconds per subject in one process, :mod:`benchmarks.single_process`) is
measured again in every repeat.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch

import shmqueue as sq
from shmqueue.tree_memory import TreeMemoryPeaks, TreeMemorySampler

from .data import DatasetSpec, data_dir, ensure_dataset
from .isolation import run_isolated
from .report import MIB, Summary, markdown_table, ratio, text_table
from .single_process import SubjectCost, measure_subject_cost


@dataclass(frozen=True)
class Workload:
    """A steady-state workload: the dataset, the queue's settings and the training steps."""

    name: str
    dataset: DatasetSpec
    listings: int  # each file appears this many times in the subject list
    patch_size: int
    patches_per_volume: int
    max_length: int
    batch_size: int
    epochs: int
    num_workers: int
    step_seconds: tuple[float, ...]
    calibration_files: int  # the first one is an untimed warm-up
    timeout_seconds: float  # per isolated run; only turns a hang into an error
    seed: int = 0

    @property
    def num_subjects(self) -> int:
        return self.dataset.num_files * self.listings

    def configurations(self) -> list[RunConfig]:
        """Each training step with the in-process baseline first, then with workers."""
        return [
            RunConfig(workers, step)
            for step in self.step_seconds
            for workers in (0, self.num_workers)
        ]

    def describe(self) -> str:
        x, y, z = self.dataset.shape
        return (
            f"{self.num_subjects} subjects ({self.dataset.num_files} int16 {x}x{y}x{z} .nii.gz"
            f" files, each listed {self.listings}x), patch {self.patch_size},"
            f" patches_per_volume {self.patches_per_volume}, max_length {self.max_length},"
            f" batch {self.batch_size}, Compose([Flip(axes=(0,), p=0.5), Noise(std=0.1)]),"
            f" {self.epochs} epochs, seed {self.seed}"
        )


FULL = Workload(
    name="steady state (issue 3)",
    dataset=DatasetSpec(num_files=24, shape=(182, 218, 182)),
    listings=2,
    patch_size=64,
    patches_per_volume=10,
    max_length=100,
    batch_size=16,
    epochs=2,
    num_workers=2,
    step_seconds=(0.0, 0.15),
    calibration_files=5,
    timeout_seconds=1800.0,
)

QUICK = Workload(
    name="steady state, quick smoke variant",
    dataset=DatasetSpec(num_files=4, shape=(64, 64, 64)),
    listings=2,
    patch_size=32,
    patches_per_volume=10,
    max_length=40,
    batch_size=16,
    epochs=2,
    num_workers=2,
    step_seconds=(0.0, 0.15),
    calibration_files=3,
    timeout_seconds=300.0,
)


@dataclass(frozen=True)
class RunConfig:
    """One measured configuration: how many workers, and how long each training step takes."""

    num_workers: int
    step_seconds: float

    def describe(self) -> str:
        workers = "in-process" if self.num_workers == 0 else f"{self.num_workers} workers"
        return f"{workers}, step {self.step_seconds:g} s"


@dataclass(frozen=True)
class Timing:
    """What the training loop saw, in seconds from its first batch request."""

    patches: int
    batches: int
    seconds: float  # first batch request to the last batch's arrival
    first_batch_seconds: float
    wait_after_first_seconds: float  # inside next(iterator), every call after the first batch


@dataclass(frozen=True)
class RunResult:
    """One run of one configuration."""

    config: RunConfig
    timing: Timing
    stats_wait_seconds: float  # queue.stats().consumer_wait_seconds
    subject_seconds: float  # median per processed subject, from queue.stats().subject_seconds
    ring_bytes: int  # 0 in-process: no ring is allocated
    memory: TreeMemoryPeaks
    load_average: float  # of the machine, over the minute before the run
    start_method: str  # how the workers were started: the platform's default

    @property
    def patches_per_second(self) -> float:
        return self.timing.patches / self.timing.seconds

    @property
    def peak_tree_bytes(self) -> int:
        """Peak USS of the training process and its workers, plus the ring."""
        return self.memory.uss + self.ring_bytes


def make_transform() -> sq.Compose:
    """The issue's augmentation."""
    return sq.Compose([sq.Flip(axes=(0,), p=0.5), sq.Noise(std=0.1)])


def measure_run(workload: Workload, paths: Sequence[Path], config: RunConfig) -> RunResult:
    """Train ``workload.epochs`` epochs on a fresh queue, timing the loop and sampling memory.

    Meant to run in a fresh interpreter (see :func:`benchmarks.isolation.run_isolated`).
    """
    load_average = os.getloadavg()[0]
    subjects = [
        sq.Subject(t1=sq.ScalarImage(path)) for _ in range(workload.listings) for path in paths
    ]
    queue = sq.Queue(
        subjects,
        sq.UniformSampler(subjects[0], patch_size=workload.patch_size),
        max_length=workload.max_length,
        patches_per_volume=workload.patches_per_volume,
        num_workers=config.num_workers,
        transform=make_transform(),
        seed=workload.seed,
    )
    with queue:
        loader = sq.SubjectsLoader(queue, batch_size=workload.batch_size)
        with TreeMemorySampler() as sampler:
            timing = _train(loader, workload.epochs, config.step_seconds)
        stats = queue.stats()
        subject_seconds = [
            seconds for per_worker in stats.subject_seconds.values() for seconds in per_worker
        ]
        ring_bytes = queue.layout.ring_bytes if config.num_workers else 0
    return RunResult(
        config,
        timing,
        stats.consumer_wait_seconds,
        statistics.median(subject_seconds),
        ring_bytes,
        sampler.peaks,
        load_average,
        multiprocessing.get_start_method(),
    )


def _train(loader: sq.SubjectsLoader, epochs: int, step_seconds: float) -> Timing:
    """Iterate ``epochs`` epochs, sleeping ``step_seconds`` per batch as the training step."""
    started = time.perf_counter()
    first_batch: float | None = None
    last_batch = started
    waited = 0.0
    patches = batches = 0
    for _ in range(epochs):
        iterator = iter(loader)
        while True:
            requested = time.perf_counter()
            batch = next(iterator, None)
            arrived = time.perf_counter()
            if first_batch is None:
                first_batch = arrived - requested
            else:
                waited += arrived - requested  # also the call that ends the epoch
            if batch is None:
                break
            last_batch = arrived
            patches += batch.t1.data.shape[0]
            batches += 1
            if step_seconds:
                time.sleep(step_seconds)  # the simulated training step
    assert first_batch is not None
    return Timing(patches, batches, last_batch - started, first_batch, waited)


def ideal_patches_per_second(
    workload: Workload, config: RunConfig, seconds_per_subject: float
) -> float:
    """The best throughput the machine allows, from the single-process cost per subject.

    With workers: ``num_workers * patches_per_volume / seconds_per_subject`` (the issue's ideal),
    capped by the training step (``batch_size / step_seconds``). In-process, loading and training
    take turns: ``1 / (seconds_per_subject / patches_per_volume + step_seconds / batch_size)``.
    """
    per_patch = seconds_per_subject / workload.patches_per_volume
    step_per_patch = config.step_seconds / workload.batch_size
    if config.num_workers == 0:
        return 1.0 / (per_patch + step_per_patch)
    producers = config.num_workers / per_patch
    return producers if step_per_patch == 0 else min(producers, 1.0 / step_per_patch)


def run_benchmark(workload: Workload, repeats: int, output: Path) -> str:
    """Run every configuration ``repeats`` times; write markdown and JSON; return the text table."""
    paths = ensure_dataset(workload.dataset)
    calibration_paths = paths[: workload.calibration_files]
    started = datetime.now(timezone.utc)
    costs: list[SubjectCost] = []
    runs: list[RunResult] = []
    for repeat in range(1, repeats + 1):
        _progress(f"[{repeat}/{repeats}] single-process cost per subject")
        cost = run_isolated(
            measure_subject_cost,
            calibration_paths,
            workload.patch_size,
            workload.patches_per_volume,
            make_transform(),
            workload.seed,
            timeout=workload.timeout_seconds,
        )
        costs.append(cost)
        _progress(f"    {cost.pipeline_seconds:.3f} s per subject")
        for config in workload.configurations():
            _progress(f"[{repeat}/{repeats}] {config.describe()}")
            result = run_isolated(
                measure_run, workload, paths, config, timeout=workload.timeout_seconds
            )
            runs.append(result)
            _progress(
                f"    {result.patches_per_second:.1f} patches/s, first batch"
                f" {result.timing.first_batch_seconds:.2f} s, waited"
                f" {result.timing.wait_after_first_seconds:.2f} s after it"
            )
    report = _Report(workload, costs, runs, repeats)
    output.mkdir(parents=True, exist_ok=True)
    (output / "steady_state.md").write_text(report.markdown())
    raw = {
        "workload": dataclasses.asdict(workload),
        "environment": _environment(started),
        "data_dir": str(data_dir()),
        "subject_costs": [dataclasses.asdict(cost) for cost in costs],
        "runs": [
            {
                **dataclasses.asdict(run),
                "patches_per_second": run.patches_per_second,
                "peak_tree_bytes": run.peak_tree_bytes,
            }
            for run in runs
        ],
    }
    (output / "steady_state.json").write_text(json.dumps(raw, indent=2) + "\n")
    return report.text()


class _Report:
    """The tables of one benchmark: absolute numbers, ratios to the baseline, cost per subject."""

    def __init__(
        self,
        workload: Workload,
        costs: Sequence[SubjectCost],
        runs: Sequence[RunResult],
        repeats: int,
    ) -> None:
        self.workload = workload
        self.costs = costs
        self.repeats = repeats
        self.seconds_per_subject = statistics.median(cost.pipeline_seconds for cost in costs)
        self.runs = {
            config: [run for run in runs if run.config == config]
            for config in workload.configurations()
        }

    def _summary(self, config: RunConfig, metric: Callable[[RunResult], float]) -> Summary:
        return Summary.of([metric(run) for run in self.runs[config]])

    def _ideal(self, config: RunConfig) -> float:
        return ideal_patches_per_second(self.workload, config, self.seconds_per_subject)

    def results_table(self) -> tuple[list[str], list[list[str]]]:
        headers = [
            "step s",
            "workers",
            "patches/s",
            "ideal p/s",
            "of ideal",
            "first batch s",
            "wait after first s",
            "stats wait s",
            "s/subject",
            "peak USS+ring MiB",
            "peak PSS MiB",
        ]
        rows = []
        for config in self.runs:
            throughput = self._summary(config, lambda run: run.patches_per_second)
            rows.append(
                [
                    f"{config.step_seconds:g}",
                    str(config.num_workers) if config.num_workers else "0 (in-process)",
                    throughput.format(1),
                    f"{self._ideal(config):.1f}",
                    f"{throughput.median / self._ideal(config):.0%}",
                    self._summary(config, lambda run: run.timing.first_batch_seconds).format(2),
                    self._summary(config, lambda run: run.timing.wait_after_first_seconds).format(
                        2
                    ),
                    self._summary(config, lambda run: run.stats_wait_seconds).format(2),
                    self._summary(config, lambda run: run.subject_seconds).format(3),
                    self._summary(config, lambda run: run.peak_tree_bytes / MIB).format(0),
                    self._summary(config, lambda run: run.memory.pss / MIB).format(0),
                ]
            )
        return headers, rows

    def ratio_table(self) -> tuple[list[str], list[list[str]]]:
        headers = [
            "step s",
            "workers",
            "patches/s",
            "first batch",
            "wait after first",
            "peak USS+ring",
            "peak PSS",
        ]
        metrics: list[Callable[[RunResult], float]] = [
            lambda run: run.patches_per_second,
            lambda run: run.timing.first_batch_seconds,
            lambda run: run.timing.wait_after_first_seconds,
            lambda run: run.peak_tree_bytes,
            lambda run: run.memory.pss,
        ]
        rows = []
        for config in self.runs:
            if config.num_workers == 0:
                continue
            baseline = RunConfig(0, config.step_seconds)
            rows.append(
                [
                    f"{config.step_seconds:g}",
                    str(config.num_workers),
                    *(
                        ratio(
                            self._summary(config, metric).median,
                            self._summary(baseline, metric).median,
                        )
                        for metric in metrics
                    ),
                ]
            )
        return headers, rows

    def cost_table(self) -> tuple[list[str], list[list[str]]]:
        headers = ["per subject (1 process, 1 thread)", "ms"]
        steps: list[tuple[str, Callable[[SubjectCost], float]]] = [
            ("gzip decompression alone (read + inflate)", lambda cost: cost.decompress_seconds),
            ("load (decompress, int16 -> float32 C,X,Y,Z)", lambda cost: cost.load_seconds),
            ("Flip (when applied, p=0.5)", lambda cost: cost.flip_seconds),
            ("Noise (std=0.1)", lambda cost: cost.noise_seconds),
            (
                f"draw {self.workload.patches_per_volume} locations + copy patches to slots",
                lambda cost: cost.sample_copy_seconds,
            ),
            ("worker's whole job (pipeline.run + copies)", lambda cost: cost.pipeline_seconds),
        ]
        rows = [
            [label, Summary.of([value(cost) * 1000 for cost in self.costs]).format(1)]
            for label, value in steps
        ]
        return headers, rows

    def _notes(self) -> list[str]:
        cost = self.costs[0]
        return [
            f"Workload: {self.workload.describe()}.",
            f"Median of {self.repeats} repeat(s), (min-max) when repeated. Each run is a fresh"
            " interpreter; configurations are interleaved within a repeat; workers start with"
            f" {self._all_runs()[0].start_method} (the platform's default).",
            f"Files: {cost.compressed_bytes / MIB:.1f} MiB compressed,"
            f" {cost.raw_bytes / MIB:.1f} MiB raw ({cost.raw_bytes / cost.compressed_bytes:.1f}x).",
            "patches/s: over all epochs, from the first batch request to the last batch.",
            f"ideal: {self.workload.num_workers} workers x {self.workload.patches_per_volume}"
            f" patches / {self.seconds_per_subject:.3f} s per subject (single process, one"
            " thread), capped by batch/step; in-process: loading and steps in turn.",
            "wait after first: wall time inside next(iterator) after the first batch, epoch"
            " boundaries included; stats wait: queue.stats().consumer_wait_seconds (in-process:"
            " the time spent loading, first fill included); their difference is the consumer's own"
            " work (copying patches out of the ring, building batches).",
            "s/subject: median time to load, augment and sample one subject during the run, from"
            " queue.stats().subject_seconds (in a worker, or in the training process); compare"
            " with the single-process figure above to see contention for the CPU.",
            "peak USS+ring: peak of the summed USS of the training process and its workers,"
            " followed every 20 ms (exact every 0.5 s, anonymous RSS in between: see"
            " shmqueue/tree_memory.py), plus the ring's bytes. It can count ring pages only a"
            " worker has touched twice and misses pages shared copy-on-write after fork. peak PSS:"
            " the summed PSS, followed the same way, which counts each page of the tree once.",
            "Machine load (1 min average before each run): "
            + ", ".join(f"{run.load_average:.2f}" for run in self._all_runs())
            + f"; memory sampler CPU: {self._sampler_share():.0%} of the runs' wall time.",
        ]

    def _all_runs(self) -> list[RunResult]:
        return [run for runs in self.runs.values() for run in runs]

    def _sampler_share(self) -> float:
        runs = self._all_runs()
        return sum(run.memory.cpu_seconds for run in runs) / sum(run.timing.seconds for run in runs)

    def text(self) -> str:
        return "\n\n".join(
            [
                self.workload.name,
                text_table(*self.results_table()),
                "Ratios to the in-process baseline (num_workers=0), medians:",
                text_table(*self.ratio_table()),
                text_table(*self.cost_table()),
                "\n".join(f"- {note}" for note in self._notes()),
            ]
        )

    def markdown(self) -> str:
        return (
            "\n\n".join(
                [
                    f"# Benchmark: {self.workload.name}",
                    markdown_table(*self.results_table()),
                    "## Ratios to the in-process baseline (num_workers=0), medians",
                    markdown_table(*self.ratio_table()),
                    "## Where a worker's time goes",
                    markdown_table(*self.cost_table()),
                    "## Notes",
                    "\n".join(f"- {note}" for note in self._notes()),
                ]
            )
            + "\n"
        )


def _environment(started: datetime) -> dict[str, object]:
    return {
        "started": started.isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "shmqueue": sq.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "argv": sys.argv,
    }


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
