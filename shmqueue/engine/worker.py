"""The worker loop: take a subject task, write its patches into the ring, report, repeat.

Runs in a worker process (see protocol.py for the messages). It never decides anything: which
subject, which seed and which slots all come from the coordinator, so its output does not depend
on which worker it is (contract 6 of DESIGN.md).
"""

from __future__ import annotations

import os
import pickle
import resource
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait

import torch

from ..pipeline import SubjectPipeline
from ..volumes import use_volume_pool
from .layout import SlotLayout
from .protocol import Shutdown, SubjectState, TaskDone, TaskFailed, TaskMessage, WorkerReady
from .ring import RingView, SegmentHandle


def _peak_rss() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss is in KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _picklable(error: BaseException) -> BaseException | None:
    try:
        pickle.loads(pickle.dumps(error))
    except Exception:
        return None
    return error


def run_task(
    worker_id: int, message: TaskMessage, pipeline: SubjectPipeline, ring: RingView
) -> TaskDone | TaskFailed:
    """Process one subject into its slots; never raises for errors of the subject."""
    task = message.task
    started = time.perf_counter()
    try:
        subject, locations = pipeline.run(task)
        for patch_number, (slot, location) in enumerate(zip(message.slots, locations)):
            region = (slice(None), *location.to_slices())
            for name, patches in ring.patches.items():
                patches[slot].copy_(subject.images[name].data[region])
            ring.metadata[slot] = (
                task.epoch,
                task.position,
                task.subject_index,
                patch_number,
                *location.index,
            )
        state = SubjectState.of(pipeline.subjects[task.subject_index], subject)
        if state.changed_metadata:
            pickle.dumps(state.changed_metadata)  # fail here, naming the subject, if it can't go
    except Exception as error:
        description = pipeline.subjects[task.subject_index].describe(task.subject_index)
        return TaskFailed(
            worker_id,
            message.generation,
            task,
            _picklable(error),
            description,
            traceback.format_exc(),
        )
    elapsed = time.perf_counter() - started
    return TaskDone(worker_id, message.generation, task, state, elapsed, _peak_rss())


def worker_main(
    worker_id: int,
    pipeline: SubjectPipeline,
    handle: SegmentHandle,
    layout: SlotLayout,
    tasks: Connection,
    results: Connection,
    lifeline: Connection,
    inherited_fds: tuple[int, ...],
) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    for fd in inherited_fds:  # under fork: our copy of the lifeline's write end
        os.close(fd)
    torch.set_num_threads(1)
    use_volume_pool()
    ring = RingView(handle.open(), layout)
    try:
        results.send(WorkerReady(worker_id))
        while True:
            if lifeline in wait([tasks, lifeline]):
                return  # the coordinator is gone
            message = tasks.recv()
            if isinstance(message, Shutdown):
                return
            results.send(run_task(worker_id, message, pipeline, ring))
    except (EOFError, BrokenPipeError):
        return  # the coordinator closed our pipes
    finally:
        ring.release()
