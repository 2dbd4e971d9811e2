"""Run a library's runner in its own venv, sample its process tree, and keep what it measured.

Each measurement is a fresh ``python -m benchmarks.competitors.run_<library>`` process (so no run
inherits another's heap, caches or warm imports); this process follows the memory of the runner
and all its descendants from outside with :class:`~shmqueue.tree_memory.TreeMemorySampler`, the
same way for every library. A library that runs with a disk cache gets a fresh directory for it,
on the data's disk, made before the run and removed after it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from shmqueue.tree_memory import TreeMemoryPeaks, TreeMemorySampler

from ..competitors.runner import CacheKind, Result
from .scenarios import (
    AUGMENTATION,
    CACHE,
    FIRST_BATCH,
    PREPROCESSING,
    STEADY,
    TINY,
    WORKERS,
    Setting,
)

ROOT = Path(__file__).resolve().parents[2]
STDERR_LINES = 30  # of a failed runner's stderr, in the error


@dataclass(frozen=True)
class Library:
    """A library under comparison, as one configuration of it: its runner module, its venv under
    ``--venvs``, the scenarios it takes part in (by key), and the cache of preprocessed subjects
    its runner is asked for (None: none; a second entry with the same runner runs the cache)."""

    key: str
    label: str
    runner: str  # module in benchmarks.competitors
    venv: str  # directory under --venvs
    scenarios: tuple[str, ...]
    cache: CacheKind | None = None

    def interpreter(self, venvs: Path) -> Path:
        return venvs / self.venv / "bin" / "python"

    def runs(self, setting: Setting) -> bool:
        return setting.scenario.key in self.scenarios


FLIP_AND_NOISE = (STEADY.key, FIRST_BATCH.key, WORKERS.key, TINY.key)
"""The scenarios of (a)'s pipeline, which every library but batchgeneratorsv2 runs."""

SHMQUEUE = Library(
    "shmqueue",
    "shmqueue",
    "run_shmqueue",
    "shmqueue",
    (*FLIP_AND_NOISE, AUGMENTATION.key, CACHE.key, PREPROCESSING.key),
)
SHMQUEUE_CACHED = Library(
    "shmqueue-cache",
    "shmqueue + cache",
    "run_shmqueue",
    "shmqueue",
    (CACHE.key, PREPROCESSING.key),
    cache="disk",  # Queue(cache_dir=...)
)
TORCHIO_1 = Library(
    "torchio-1",
    "TorchIO 1.2.1",
    "run_torchio1",
    "torchio-1.2.1",
    (*FLIP_AND_NOISE, AUGMENTATION.key, CACHE.key, PREPROCESSING.key),
)
TORCHIO_2 = Library(
    "torchio-2",
    "TorchIO 2.0.0a2",
    "run_torchio2",
    "torchio-2.0.0a2",
    (*FLIP_AND_NOISE, AUGMENTATION.key, CACHE.key),
)
MONAI = Library("monai", "MONAI 1.6", "run_monai", "monai-1.6", (*FLIP_AND_NOISE, AUGMENTATION.key))
MONAI_PERSISTENT = Library(
    "monai-persistent",
    "MONAI 1.6 PersistentDataset",
    "run_monai",
    "monai-1.6",
    (PREPROCESSING.key,),
    cache="disk",
)
MONAI_CACHED = Library(
    "monai-cache",
    "MONAI 1.6 CacheDataset",
    "run_monai",
    "monai-1.6",
    (PREPROCESSING.key,),
    cache="memory",
)
BGV2 = Library(
    "bgv2",
    "batchgeneratorsv2 0.3.6",
    "run_bgv2",
    "batchgeneratorsv2-0.3.6",
    (AUGMENTATION.key,),  # nnU-Net's augmentation: a pipeline for (f) only
)
LIBRARIES = (
    SHMQUEUE,
    SHMQUEUE_CACHED,
    TORCHIO_1,
    TORCHIO_2,
    MONAI,
    MONAI_PERSISTENT,
    MONAI_CACHED,
    BGV2,
)


class RunFailed(RuntimeError):
    """A runner exited with an error or did not finish in time; the message has its stderr."""


@dataclass(frozen=True)
class Run:
    """One library's run of one setting."""

    library: Library
    setting: Setting
    repeat: int
    result: Result
    memory: TreeMemoryPeaks

    @property
    def batch_calls(self) -> list[list[float]]:
        """``[arrival s, wait s, patches]`` of the calls that returned a batch."""
        return [call for call in self.result.calls if call[2]]

    @property
    def patches(self) -> int:
        return sum(self.result.epoch_patches)

    @property
    def seconds(self) -> float:
        """From the first batch request to the last batch's arrival."""
        return self.batch_calls[-1][0]

    @property
    def patches_per_second(self) -> float:
        return self.patches / self.seconds

    @property
    def epoch_ends(self) -> list[float]:
        """When each epoch ended: the arrival of its last call, the one that returned no batch.

        An epoch lasts from the end of the one before (the first request, for the first) to its
        own end, so the epochs' times add up to the run's: whatever a library does between two
        epochs (stopping and starting its workers) counts in one of them.
        """
        return [arrival for arrival, _, patches in self.result.calls if not patches]

    @property
    def epoch_patches_per_second(self) -> list[float]:
        """Each epoch's patches over its time (see :attr:`epoch_ends`)."""
        starts = [0.0, *self.epoch_ends[:-1]]
        return [
            patches / (end - start)
            for patches, start, end in zip(self.result.epoch_patches, starts, self.epoch_ends)
        ]

    @property
    def later_epochs_patches_per_second(self) -> float:
        """The patches of every epoch after the first over their time together: from the first
        epoch's end to the last one's."""
        ends = self.epoch_ends
        return sum(self.result.epoch_patches[1:]) / (ends[-1] - ends[0])

    @property
    def first_batch_seconds(self) -> float:
        return self.result.calls[0][1]

    @property
    def wait_after_first_seconds(self) -> float:
        """Time inside ``next()`` after the first batch, calls that end an epoch included."""
        return sum(call[1] for call in self.result.calls[1:])

    @property
    def peak_pss(self) -> int:
        """Peak PSS of the tree, followed every 20 ms (exact every 0.5 s)."""
        return self.memory.pss

    @property
    def peak_uss(self) -> int:
        """Peak USS of the tree plus shared memory reserved up front (shmqueue's ring)."""
        return self.memory.uss + self.result.reserved_bytes


def taking_part(libraries: Sequence[Library], settings: Sequence[Setting]) -> list[Library]:
    """The libraries that run at least one of ``settings``, in their order."""
    return [lib for lib in libraries if any(lib.runs(setting) for setting in settings)]


def check_venvs(libraries: Sequence[Library], venvs: Path) -> None:
    """Raise SystemExit naming the missing venvs and how to make them."""
    missing = [
        str(lib.interpreter(venvs)) for lib in libraries if not lib.interpreter(venvs).exists()
    ]
    if missing:
        raise SystemExit(
            "missing competitor venvs (make bench-compare creates them): " + ", ".join(missing)
        )


def run_once(library: Library, setting: Setting, venvs: Path) -> tuple[Result, TreeMemoryPeaks]:
    """Run ``setting`` with ``library`` in a fresh process; its result and its tree's memory.

    Raises:
        RunFailed: the runner exited with an error, or did not finish within the setting's
            timeout (it is then killed with its workers).
    """
    command = [str(library.interpreter(venvs)), "-m", f"benchmarks.competitors.{library.runner}"]
    request = setting.request()
    with _fresh_cache_dir(library, Path(request.paths[0]).parent) as cache_dir:
        child = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with TreeMemorySampler(child.pid) as sampler:
                output, errors = child.communicate(
                    replace(request, cache=library.cache, cache_dir=cache_dir).to_json(),
                    timeout=setting.timeout_seconds,
                )
        except subprocess.TimeoutExpired:
            _kill_tree(child)  # before its cache directory is removed
            raise RunFailed(
                f"{library.label} on {setting.key!r} did not finish in"
                f" {setting.timeout_seconds:.0f} s"
            ) from None
    if child.returncode != 0 or not output.strip():
        tail = "\n".join(errors.splitlines()[-STDERR_LINES:])
        raise RunFailed(
            f"{library.label} on {setting.key!r} exited with {child.returncode}:\n{tail}"
        )
    return Result(**json.loads(output.splitlines()[-1])), sampler.peaks


@contextlib.contextmanager
def _fresh_cache_dir(library: Library, data: Path) -> Iterator[str | None]:
    """A new empty directory in ``data`` (the data's disk, so a cache reads from where the files
    are) for a library with a disk cache, removed with everything in it when the run is over;
    None for the others."""
    if library.cache != "disk":
        yield None
        return
    with tempfile.TemporaryDirectory(prefix=f".cache-{library.key}-", dir=data) as directory:
        yield directory


def _kill_tree(child: subprocess.Popen[str]) -> None:
    """Kill the runner and the worker processes it started."""
    try:
        descendants = psutil.Process(child.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    for process in descendants:
        process.kill()
    child.kill()
    child.communicate()


def run_all(
    settings: Sequence[Setting],
    libraries: Sequence[Library],
    venvs: Path,
    progress: Callable[[str], None],
) -> list[Run]:
    """Every setting with every library that takes part in it, ``setting.repeats`` times,
    interleaved.

    Within a repeat each setting runs once per library, back to back, and the libraries' order
    rotates from one repeat to the next, so that load from other processes and drift of the
    machine spread over all libraries instead of falling on one.
    """
    runs = []
    for repeat in range(max(setting.repeats for setting in settings)):
        order = [*libraries[repeat % len(libraries) :], *libraries[: repeat % len(libraries)]]
        for setting in settings:
            if repeat >= setting.repeats:
                continue
            for library in order:
                if not library.runs(setting):
                    continue
                started = time.monotonic()
                result, memory = run_once(library, setting, venvs)
                run = Run(library, setting, repeat, result, memory)
                runs.append(run)
                progress(
                    f"[{repeat + 1}/{setting.repeats}] {setting.key}, {library.label}:"
                    f" {run.patches_per_second:.1f} patches/s, first batch"
                    f" {run.first_batch_seconds:.2f} s, peak PSS {run.peak_pss / 2**20:.0f} MiB"
                    f" ({time.monotonic() - started:.0f} s)"
                )
    return runs


def wait_for_quiet_machine(
    progress: Callable[[str], None],
    threshold: float = 1.0,
    poll_seconds: float = 30.0,
    give_up_seconds: float = 1200.0,
) -> float:
    """Wait until the 1-minute load average is below ``threshold``; give up after a while.

    Returns the load average when the wait ended (above ``threshold`` if it gave up).
    """
    deadline = time.monotonic() + give_up_seconds
    while True:
        load = os.getloadavg()[0]
        if load < threshold:
            return load
        if time.monotonic() >= deadline:
            progress(f"load average still {load:.2f} after {give_up_seconds:.0f} s: running anyway")
            return load
        progress(f"load average {load:.2f} >= {threshold}: waiting {poll_seconds:.0f} s")
        time.sleep(poll_seconds)  # polling the load average: there is nothing to wait on
