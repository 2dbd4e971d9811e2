"""Filling a cache ahead of training: every subject preprocessed once, in worker processes.

:func:`fill_cache` is what ``shmqueue cache fill`` runs. Each worker (spawned: it shares no
state, thread pool or descriptor with the caller) gets the subjects and the cached steps once,
then preprocesses subjects by index through :meth:`VolumeCache.preprocessed`, the same call a
queue's workers make, so the entries are the ones training reads, and a fill beside training (or
two fills) build each entry once. A subject already cached is only read (its key checked).
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

import torch

from ..errors import SubjectProcessingError
from ..subject import Subject
from ..transforms import SubjectTransform
from .prefix import cached_prefix, preprocess
from .store import VolumeCache


@dataclass(frozen=True)
class FillReport:
    """What a fill did: subjects built, subjects found already cached, and its seconds."""

    built: int
    found: int
    seconds: float


_state: tuple[VolumeCache, Sequence[Subject], list[SubjectTransform]] | None = None


def _start_worker(
    cache: VolumeCache, subjects: Sequence[Subject], steps: list[SubjectTransform]
) -> None:
    global _state
    torch.set_num_threads(1)  # one subject per process at a time, as the queue's workers
    _state = (cache, subjects, steps)


def _fill_one(index: int) -> bool:
    """Preprocess subject ``index`` into the cache; whether it was cached already."""
    assert _state is not None
    cache, subjects, steps = _state
    subject = subjects[index]
    try:
        _, found = cache.preprocessed(
            subject.copy(), steps, lambda loaded: preprocess(loaded, steps)
        )
    except Exception as error:
        raise SubjectProcessingError(
            f"Filling the cache '{cache.directory}' failed on {subject.describe(index)}:"
            f" {type(error).__name__}: {error}"
        ) from error
    return found


def fill_cache(
    cache: VolumeCache,
    subjects: Sequence[Subject],
    transform: SubjectTransform | None,
    num_workers: int = 2,
    on_subject: Callable[[bool], None] | None = None,
) -> FillReport:
    """Preprocess every subject into ``cache`` with ``num_workers`` spawned processes (0: in
    this process), calling ``on_subject(found)`` as each finishes.

    Raises:
        SubjectProcessingError: a subject failed; the message names it (the others finish or
            are cancelled first).
    """
    steps = cached_prefix(transform)
    started = time.monotonic()
    built = found = 0

    def count(was_found: bool) -> None:
        nonlocal built, found
        found += was_found
        built += not was_found
        if on_subject is not None:
            on_subject(was_found)

    if num_workers == 0:
        global _state
        _state = (cache, subjects, steps)
        for index in range(len(subjects)):
            count(_fill_one(index))
        return FillReport(built, found, time.monotonic() - started)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        num_workers, context, initializer=_start_worker, initargs=(cache, subjects, steps)
    ) as pool:
        futures = [pool.submit(_fill_one, index) for index in range(len(subjects))]
        try:
            for future in as_completed(futures):
                count(future.result())
        finally:
            for future in futures:
                future.cancel()
    return FillReport(built, found, time.monotonic() - started)
