"""What every runner shares: the request it reads, the timed training loop, the result it prints.

Protocol: the driver writes one :class:`Request` as JSON on the runner's stdin; the runner builds
its library's :class:`Pipeline`, trains ``epochs`` epochs with a simulated step after each batch
(``time.sleep(step_seconds)`` stands in for the GPU: it is the workload, not synchronisation) and
prints one :class:`Result` as JSON on the last line of stdout. Whatever a library prints goes to
stderr, so stdout carries the result only. The driver samples the runner's process tree from
outside; the runner times only what the training loop sees.

This module is imported inside every competitor's venv: it needs only the standard library (and
:mod:`.augmentation` and :mod:`.preprocessing`, which do too), plus numpy and torch (present in
every venv) to seed them.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import sys
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeVar

from .augmentation import Augmentation
from .preprocessing import Preprocessing

Steps = TypeVar("Steps", Augmentation, Preprocessing)  # a scenario's steps that need labels
CacheKind = Literal["disk", "memory"]
"""A cache of preprocessed subjects: in files under a directory, or in the training process's
memory (MONAI's ``CacheDataset``)."""


@dataclass(frozen=True)
class Request:
    """One run's settings, the same for every library.

    ``paths`` lists the subjects in order (a file listed twice is two subjects). Without
    ``augmentation`` the transform is a flip of the first spatial axis with ``flip_probability``
    and Gaussian noise of ``noise_std``, and patches are drawn uniformly, in each library's own
    terms. With it (scenario f), each subject also has the label map ``label_paths[i]``, the
    transform is :mod:`~benchmarks.competitors.augmentation`'s realistic pipeline with the
    variant's probabilities, and patches are centred by label
    (:data:`~benchmarks.competitors.augmentation.LABEL_PROBABILITIES`). With ``preprocessing``
    (scenario h), each subject also has its label map, and the transform is
    :mod:`~benchmarks.competitors.preprocessing`'s pipeline, its flips and noise with
    ``flip_probability`` and ``noise_std``. ``cache`` asks for the library's cache of
    preprocessed subjects, a ``"disk"`` one in ``cache_dir`` (a fresh directory the driver makes
    and removes). Every field after ``seed`` defaults to off, so a request written before it
    existed still reads.
    """

    paths: tuple[str, ...]
    patch_size: tuple[int, int, int]
    patches_per_volume: int
    max_length: int
    batch_size: int
    epochs: int
    num_workers: int
    step_seconds: float
    seed: int
    flip_probability: float = 0.5
    noise_std: float = 0.1
    label_paths: tuple[str, ...] = ()
    augmentation: Augmentation | None = None
    preprocessing: Preprocessing | None = None
    cache: CacheKind | None = None
    cache_dir: str | None = None

    @classmethod
    def from_json(cls, text: str) -> Request:
        fields = json.loads(text)
        x, y, z = fields.pop("patch_size")
        augmentation = fields.pop("augmentation", None)
        preprocessing = fields.pop("preprocessing", None)
        if preprocessing is not None:
            sx, sy, sz = preprocessing.pop("shape")
            preprocessing = Preprocessing(shape=(sx, sy, sz), **preprocessing)
        return cls(
            paths=tuple(fields.pop("paths")),
            patch_size=(x, y, z),
            label_paths=tuple(fields.pop("label_paths", ())),
            augmentation=None if augmentation is None else Augmentation(**augmentation),
            preprocessing=preprocessing,
            **fields,
        )

    def require_augmentation(self) -> Augmentation:
        """The realistic augmentation's variant, for a pipeline that needs labels.

        Raises:
            ValueError: the request has no augmentation, or not one label path per subject.
        """
        return self._labelled("f", "augmentation", self.augmentation)

    def require_preprocessing(self) -> Preprocessing:
        """Scenario (h)'s preprocessing, for a pipeline that resamples labels with the volumes.

        Raises:
            ValueError: the request has no preprocessing, or not one label path per subject.
        """
        return self._labelled("h", "preprocessing", self.preprocessing)

    def _labelled(self, scenario: str, name: str, pipeline: Steps | None) -> Steps:
        """``pipeline`` (the field ``name``), checked to be there with one label path per
        subject, as scenario ``scenario``'s runners need it."""
        if pipeline is None or len(self.label_paths) != len(self.paths):
            raise ValueError(
                f"scenario ({scenario})'s pipeline needs its {name} and one label path per"
                f" subject; got {name}={pipeline}, {len(self.label_paths)} label paths for"
                f" {len(self.paths)} subjects"
            )
        return pipeline

    def require_cache(self, kinds: Collection[CacheKind], library: str) -> CacheKind | None:
        """The cache the request asks for (None: none), once checked against the ``kinds`` that
        ``library``'s runner has for the request's scenario, so that no run quietly goes
        without the cache it was asked for.

        Raises:
            ValueError: a kind the runner does not have, or a disk cache without ``cache_dir``.
        """
        if self.cache is not None and self.cache not in kinds:
            offered = ", ".join(sorted(kinds)) or "none"
            raise ValueError(
                f"{library}'s runner has no {self.cache} cache for this scenario (it has:"
                f" {offered})"
            )
        if self.cache == "disk" and not self.cache_dir:
            raise ValueError("a disk cache needs cache_dir, a directory the driver makes per run")
        return self.cache

    def to_json(self) -> str:
        return json.dumps(asdict(self))


@dataclass(frozen=True)
class Pipeline:
    """A library's patch pipeline, as the training loop drives it.

    Attributes:
        batches: epoch number -> that epoch's batches.
        patches_in: batch -> how many patches it holds.
        estimate: the library's own memory estimate in bytes (``None`` if it has none); called
            after training, so an estimate that loads a subject does not shift the run.
        estimate_label: how that estimate is computed.
        reserved_bytes: shared memory reserved up front and resident from the start, in no
            process's USS (shmqueue's ring); 0 for the others.
        close: releases workers and shared memory.
    """

    batches: Callable[[int], Iterable[Any]]
    patches_in: Callable[[Any], int]
    estimate: Callable[[], int | None]
    estimate_label: str
    reserved_bytes: int = 0
    close: Callable[[], None] = lambda: None


@dataclass(frozen=True)
class Result:
    """What one run saw. ``calls`` has one ``[arrival s, wait s, patches]`` per ``next()`` call,
    times from the first request; ``patches`` is 0 for the call that ends an epoch."""

    library: str
    version: str
    setup_seconds: float
    calls: list[list[float]] = field(default_factory=list)
    epoch_patches: list[int] = field(default_factory=list)
    estimate_bytes: int | None = None
    estimate_label: str = ""
    reserved_bytes: int = 0
    load_average: float = 0.0
    cpu_seconds: float = 0.0  # of the whole process tree, from the first batch request to close()


def train(
    pipeline: Pipeline, epochs: int, step_seconds: float
) -> tuple[list[list[float]], list[int]]:
    """Iterate ``epochs`` epochs, sleeping ``step_seconds`` per batch; time every ``next()``.

    Returns:
        ``calls`` (see :class:`Result`) and the patches yielded in each epoch.
    """
    calls: list[list[float]] = []
    epoch_patches = []
    started = time.perf_counter()
    for epoch in range(epochs):
        iterator = iter(pipeline.batches(epoch))
        yielded = 0
        while True:
            requested = time.perf_counter()
            batch = next(iterator, None)
            arrived = time.perf_counter()
            patches = 0 if batch is None else pipeline.patches_in(batch)
            calls.append([arrived - started, arrived - requested, patches])
            if batch is None:
                break
            yielded += patches
            del batch  # as a training step would: the batch is not kept while waiting
            if step_seconds:
                time.sleep(step_seconds)  # the simulated training step
        epoch_patches.append(yielded)
    return calls, epoch_patches


def tree_cpu_seconds() -> float:
    """CPU seconds (user + system) used so far by this process and all its descendants.

    Exited descendants count through ``getrusage(RUSAGE_CHILDREN)`` once reaped; live ones (a
    DataLoader's idle workers, say) are read from ``/proc/<pid>/stat``, their own reaped children
    included, so a worker's time counts whether or not it has been joined yet.
    """
    used = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        used += usage.ru_utime + usage.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in _live_descendants(os.getpid()):
        try:
            with open(f"/proc/{pid}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue  # it exited since it was listed; its time is its parent's to reap
        used += sum(int(value) for value in fields[11:15]) / ticks  # utime stime cutime cstime
    return used


def _live_descendants(pid: int) -> list[int]:
    found = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for thread in threads:
        try:
            with open(f"/proc/{pid}/task/{thread}/children") as file:
                children = [int(child) for child in file.read().split()]
        except OSError:
            continue
        for child in children:
            found += [child, *_live_descendants(child)]
    return found


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (libraries without a seed use them)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(library: str, version: str, build: Callable[[Request], Pipeline]) -> None:
    """Read the request from stdin, build, train, and print the result on stdout's last line."""
    request = Request.from_json(sys.stdin.read())
    load_average = os.getloadavg()[0]
    with contextlib.redirect_stdout(sys.stderr):
        seed_everything(request.seed)
        started = time.perf_counter()
        pipeline = build(request)
        setup_seconds = time.perf_counter() - started
        cpu_started = tree_cpu_seconds()
        try:
            calls, epoch_patches = train(pipeline, request.epochs, request.step_seconds)
        finally:
            pipeline.close()
        cpu_seconds = tree_cpu_seconds() - cpu_started
        estimate = pipeline.estimate()
    result = Result(
        library=library,
        version=version,
        setup_seconds=setup_seconds,
        calls=calls,
        epoch_patches=epoch_patches,
        estimate_bytes=estimate,
        estimate_label=pipeline.estimate_label,
        reserved_bytes=pipeline.reserved_bytes,
        load_average=load_average,
        cpu_seconds=cpu_seconds,
    )
    print(json.dumps(asdict(result)), flush=True)
