"""What one subject costs a worker, measured: the real pipeline on the largest subjects.

``estimate_memory(..., measure=True)`` replaces the per-worker data model
(:mod:`shmqueue.memory.worker_model`) with the peak a fresh process reaches while it runs load +
transform + sample on the largest few subjects, as a worker does. The process is started,
watched and reaped by the engine's pool (:func:`~shmqueue.engine.pool.run_in_child`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from multiprocessing.connection import Connection

import torch

from ..catalog import Catalog
from ..engine.backends import resolve_context
from ..engine.pool import WorkerGone, run_in_child
from ..errors import SubjectError, WorkerDiedError
from ..machine import peak_rss, return_free_memory
from ..pipeline import SubjectPipeline
from ..plan import SubjectTask
from ..sampling.base import PatchSampler
from ..subject import Subject
from ..transforms import SubjectTransform
from ..volumes import use_volume_pool

MEASURED_SUBJECTS = 3
"""How many of the largest subjects :func:`measure_pipeline` runs through the pipeline."""

MEASURE_TIMEOUT = 600.0


def _measure_child(
    pipeline: SubjectPipeline, tasks: Sequence[SubjectTask], results: Connection
) -> None:
    """Run each task's load + transform + sample as a worker does; send the peak's growth."""
    torch.set_num_threads(1)  # as a worker
    use_volume_pool()
    try:
        return_free_memory()  # free heap inherited under fork would hide the pipeline's growth
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # reset the peak resident set (VmHWM) to the current one
        before = peak_rss()  # just reset: the current resident set
        for task in tasks:
            pipeline.run(task)
        results.send(("ok", max(0, peak_rss() - before)))
    except Exception as error:
        results.send(("error", f"{type(error).__name__}: {error}"))


def measure_pipeline(
    subjects: Sequence[Subject],
    catalog: Catalog,
    transform: SubjectTransform | None,
    sampler: PatchSampler,
    start_method: str,
) -> int:
    """Peak bytes, above its start, of a fresh process running the largest subjects' pipeline
    for the catalog's ring, each with the patches an epoch draws from it.

    Raises:
        NotImplementedError: not on Linux (the peak is read from ``/proc``).
        SubjectError: the pipeline raised (the message names the measured subjects).
        WorkerDiedError: the process died (e.g. killed for lack of memory) or did not finish.
    """
    if not sys.platform.startswith("linux"):
        raise NotImplementedError("measure=True reads /proc, so it works on Linux only")
    entries = sorted(
        catalog.subjects,
        key=lambda entry: -sum(image.raw_bytes + image.loaded_bytes for image in entry.images),
    )[:MEASURED_SUBJECTS]
    tasks = [
        SubjectTask(0, position, entry.index, 0, entry.num_patches, seed=position)
        for position, entry in enumerate(entries)
    ]
    pipeline = SubjectPipeline(subjects, transform, sampler, catalog.layout.images)
    measured = ", ".join(entry.description for entry in entries)
    try:
        status, value = run_in_child(
            resolve_context(start_method),
            _measure_child,
            (pipeline, tasks),
            "shmqueue-memory-measure",
            MEASURE_TIMEOUT,
        )
    except (WorkerGone, TimeoutError) as error:
        how = (
            f"did not finish within {MEASURE_TIMEOUT:.0f} s"
            if isinstance(error, TimeoutError)
            else error.exited.describe()
        )
        raise WorkerDiedError(
            f"The process measuring the pipeline's memory on {measured} {how}. If it was killed"
            " for lack of memory, one subject alone does not fit: lower the patch size or the"
            " transform's cost, or free memory."
        ) from error
    if status == "error":
        raise SubjectError(f"Measuring the pipeline's memory on {measured} failed: {value}")
    return int(value)
