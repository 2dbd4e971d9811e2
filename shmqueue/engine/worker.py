"""The worker loop: take a subject task, write its patches into the ring, report, repeat.

Runs in a worker process (see protocol.py for the messages). It never decides anything: which
subject, which seed and which slots all come from the coordinator, so its output does not depend
on which worker it is (contract 6 of DESIGN.md).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch

from ..machine import peak_rss
from ..pipeline import SubjectPipeline
from ..volumes import use_volume_pool
from .layout import SlotLayout
from .protocol import (
    Shutdown,
    SubjectState,
    TaskDone,
    TaskFailed,
    TaskMessage,
    WorkerReady,
    WorkerStartFailed,
)
from .ring import RingView, SegmentHandle

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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
            for name, patches in ring.patches.items():
                patches[slot].copy_(subject.images[name].voxels_at(location.index, location.size))
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
    return TaskDone(worker_id, message.generation, task, state, elapsed, peak_rss())


class PipelineParcel:
    """The subjects, transform and sampler on their way to a worker, opened by the worker.

    Under spawn and forkserver the parcel is pickled while the worker's process starts, with
    multiprocessing's own pickler (so tensors travel as shared memory, and the start-up message
    stays small), into bytes that the worker unpickles in :func:`worker_main` rather than in
    multiprocessing's bootstrap: a failure there (a class the worker cannot import) reaches the
    training process with its cause instead of an exit code. Under fork the worker inherits the
    pipeline itself.
    """

    def __init__(self, pipeline: SubjectPipeline | None, payload: bytes | None = None) -> None:
        self._pipeline = pipeline
        self._payload = payload

    def __reduce__(self) -> tuple[Any, ...]:
        return (PipelineParcel, (None, bytes(ForkingPickler.dumps(self._pipeline))))

    def open(self) -> SubjectPipeline:
        if self._payload is None:
            assert self._pipeline is not None
            return self._pipeline
        pipeline: SubjectPipeline = pickle.loads(self._payload)
        return pipeline


@dataclass(frozen=True)
class WorkerStart:
    """How a worker knows its training process, so that it never outlives it.

    ``owner_pid`` is the training process; ``parent_pid`` the worker's expected parent (the
    training process, or None under forkserver, whose server is the parent);
    ``die_with_parent`` asks the kernel to SIGKILL the worker when its parent's forking thread
    dies (Linux's parent-death signal; it reaches a worker stopped with SIGSTOP too).
    """

    owner_pid: int
    parent_pid: int | None
    die_with_parent: bool


def _exit_with_owner(start: WorkerStart, lifeline: Connection) -> None:
    """Exit as soon as the training process is gone, whatever else holds our descriptors.

    Three guards: the parent-death signal; a thread that waits on the training process's pidfd
    and on the lifeline (whose write end only the training process holds: forks close theirs)
    and ends the process at once, also in the middle of a subject; and a check that the parent
    did not die before the first two were in place.
    """
    if start.die_with_parent and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if start.parent_pid is not None and os.getppid() != start.parent_pid:
        os._exit(0)
    watched: list[Connection | int] = [lifeline]
    if hasattr(os, "pidfd_open"):
        try:
            watched.append(os.pidfd_open(start.owner_pid))
        except ProcessLookupError:
            os._exit(0)
    threading.Thread(
        target=_exit_when_ready, args=(watched,), name="shmqueue-owner-watch", daemon=True
    ).start()


def _exit_when_ready(watched: list[Connection | int]) -> None:
    wait(watched)
    os._exit(0)  # the training process is gone (or closed the pool): nothing to finish


def _descriptor_census() -> dict[str, int]:
    """This process's open descriptors by kind (pipe, memfd, pidfd, socket, file, ...)."""
    census: dict[str, int] = {}
    for entry in os.scandir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            target = os.readlink(entry.path)
        except OSError:
            continue  # the descriptor scandir itself used
        kind = target.lstrip("/").split(":", 1)[0] if ":" in target else "file"
        if kind == "anon_inode":
            kind = target.split(":", 1)[1].strip("[]")
        census[kind] = census.get(kind, 0) + 1
    return census


def worker_main(
    worker_id: int,
    parcel: PipelineParcel,
    handle: SegmentHandle,
    layout: SlotLayout,
    tasks: Connection,
    results: Connection,
    lifeline: Connection,
    start: WorkerStart,
) -> None:
    """Entry point of a worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    _exit_with_owner(start, lifeline)
    torch.set_num_threads(1)
    use_volume_pool()
    try:
        ring = RingView(handle.open(), layout)
        pipeline = parcel.open()
    except Exception as error:
        results.send(WorkerStartFailed(worker_id, _picklable(error), traceback.format_exc()))
        return
    try:
        results.send(WorkerReady(worker_id, _descriptor_census()))
        while True:
            message = tasks.recv()
            if isinstance(message, Shutdown):
                return
            results.send(run_task(worker_id, message, pipeline, ring))
    except (EOFError, BrokenPipeError):
        return  # the coordinator closed our pipes
    finally:
        ring.release()
