"""WorkerPool: the only code that starts, watches, stops and kills worker processes (and, with
:func:`run_in_child`, the one-off process that measures the memory of the pipeline).

It waits on the workers' result pipes and process sentinels together
(``multiprocessing.connection.wait``), so a worker's death is noticed as soon as anyone waits,
never by polling. Shutdown follows steps 7-9 of protocol.py, is safe to call twice (also from a
signal handler, or with ``SIGCHLD`` ignored) and releases every resource even when one release
fails. Only the process that built the pool acts on it: in a forked copy it is detached
(:mod:`shmqueue.engine.forks`).
"""

from __future__ import annotations

import errno
import logging
import multiprocessing.process
import os
import pickle
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from ..errors import WorkerStartError
from ..pipeline import SubjectPipeline
from . import forks
from .layout import SlotLayout
from .protocol import JOIN_TIMEOUT, Shutdown, TaskMessage, WorkerMessage
from .ring import Segment
from .worker import PipelineParcel, WorkerStart, worker_main

logger = logging.getLogger("shmqueue")

SHUTDOWN_GRACE = 1.0

_LIKELY_CAUSES = {
    signal.SIGKILL: "SIGKILL usually comes from the kernel's out-of-memory killer",
    signal.SIGSEGV: "SIGSEGV is a crash in native code (a C extension or a bad memory access)",
    signal.SIGBUS: "SIGBUS means a shared-memory page could not be backed (is /dev/shm full?)",
    signal.SIGTERM: "SIGTERM means another program (a job scheduler?) asked it to stop",
    signal.SIGABRT: "SIGABRT is an abort in native code (an assertion in a C library)",
}


@dataclass(frozen=True)
class WorkerExited:
    """A worker process ended without being asked to."""

    worker_id: int
    pid: int | None
    exitcode: int | None

    def describe(self) -> str:
        """``"was killed by SIGKILL (SIGKILL usually comes from ...)"``."""
        if self.exitcode is None:
            return (
                "exited with an unknown status (this process ignores SIGCHLD, so the kernel"
                " reaped it before its status could be read)"
            )
        if self.exitcode < 0:
            try:
                signum = signal.Signals(-self.exitcode)
            except ValueError:
                return f"was killed by signal {-self.exitcode}"
            cause = _LIKELY_CAUSES.get(signum)
            return f"was killed by {signum.name}" + (f" ({cause})" if cause else "")
        return (
            f"exited with code {self.exitcode} (user code called sys.exit or os._exit, or the"
            " interpreter failed)"
        )


class WorkerGone(Exception):
    """Sending to a worker failed because it has exited; carries how it ended."""

    def __init__(self, exited: WorkerExited) -> None:
        super().__init__(exited.describe())
        self.exited = exited


@dataclass(eq=False)  # hashed by identity: :meth:`WorkerPool.wait` collects the dead in a dict
class _Worker:
    worker_id: int
    process: BaseProcess
    tasks: Connection
    results: Connection


class WorkerPool:
    """``num_workers`` processes running :func:`~shmqueue.engine.worker.worker_main`."""

    def __init__(
        self,
        num_workers: int,
        context: BaseContext,
        pipeline: SubjectPipeline,
        segment: Segment,
        layout: SlotLayout,
    ) -> None:
        self._closed = False
        self._owner = os.getpid()
        self._workers: list[_Worker] = []
        self._pids: list[int | None] = []
        start_method = context.get_start_method()
        parcel = PipelineParcel(pipeline)
        # A worker's parent is this process, except under forkserver (the server); the
        # parent-death signal follows the thread that forked, so only the main thread asks it.
        start = WorkerStart(
            owner_pid=self._owner,
            parent_pid=None if start_method == "forkserver" else self._owner,
            die_with_parent=start_method == "forkserver"
            or threading.current_thread() is threading.main_thread(),
        )
        lifeline_reader, self._lifeline = context.Pipe(duplex=False)
        forks.register(self)
        try:
            for worker_id in range(num_workers):
                self._start_worker(
                    worker_id, context, parcel, segment, layout, start, lifeline_reader
                )
        except BaseException:
            self.close()
            raise
        finally:
            lifeline_reader.close()

    def _start_worker(
        self,
        worker_id: int,
        context: BaseContext,
        parcel: PipelineParcel,
        segment: Segment,
        layout: SlotLayout,
        start: WorkerStart,
        lifeline_reader: Connection,
    ) -> None:
        task_reader, task_writer = context.Pipe(duplex=False)
        result_reader, result_writer = context.Pipe(duplex=False)
        handle = segment.handle()
        process = context.Process(  # type: ignore[attr-defined]
            target=worker_main,
            args=(
                worker_id,
                parcel,
                handle,
                layout,
                task_reader,
                result_writer,
                lifeline_reader,
                start,
            ),
            name=f"shmqueue-worker-{worker_id}",
            daemon=True,
        )
        self._workers.append(_Worker(worker_id, process, task_writer, result_reader))
        try:
            _start(process, context.get_start_method())
        finally:  # the worker's ends: the child has its own copies (or never started)
            handle.close()
            task_reader.close()
            result_writer.close()
        self._pids.append(process.pid)

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int | None]:
        """The workers' process ids, also after :meth:`close` (a closed Process has none)."""
        return list(self._pids)

    def send(self, worker_id: int, message: TaskMessage) -> None:
        """Send ``message``; raises :class:`WorkerGone` if the worker has exited."""
        worker = self._workers[worker_id]
        try:
            worker.tasks.send(message)
        except OSError:
            raise WorkerGone(self._reap(worker)) from None

    def wait(self, timeout: float | None) -> list[WorkerMessage | WorkerExited]:
        """Messages that arrived within ``timeout`` seconds (all that are waiting, at least one
        unless the time ran out), and a :class:`WorkerExited` for each worker that died."""
        by_object: dict[Any, _Worker] = {}
        for worker in self._workers:
            by_object[worker.results] = worker
            by_object[worker.process.sentinel] = worker
        events: list[WorkerMessage | WorkerExited] = []
        died: list[_Worker] = []
        for ready in wait(list(by_object), timeout):
            worker = by_object[ready]
            if ready is worker.results:
                try:
                    while worker.results.poll():
                        events.append(worker.results.recv())
                except EOFError:
                    died.append(worker)
            else:
                died.append(worker)
        events.extend(self._reap(worker) for worker in dict.fromkeys(died))
        return events

    def _reap(self, worker: _Worker) -> WorkerExited:
        worker.process.join(JOIN_TIMEOUT)
        return WorkerExited(worker.worker_id, worker.process.pid, worker.process.exitcode)

    def close(self) -> None:
        """Steps 7-9 of the protocol: ask, wait, terminate, kill, release the pipes.

        Every step runs even if an earlier one fails; the first failure is raised at the end.
        Does nothing in a process other than the one that built the pool.
        """
        if self._closed or os.getpid() != self._owner:
            return
        self._closed = True
        forks.unregister(self)
        processes = [worker.process for worker in self._workers]
        steps: list[Callable[[], None]] = []
        steps += [_ignoring_gone(worker.tasks.send, Shutdown()) for worker in self._workers]
        steps.append(self._lifeline.close)
        steps.append(lambda: _join_all(processes, SHUTDOWN_GRACE))
        steps += [_signal_if_running(process, "terminate") for process in processes]
        steps.append(lambda: _join_all(processes, JOIN_TIMEOUT))
        steps += [_signal_if_running(process, "kill") for process in processes]
        steps.append(lambda: _join_all(processes, JOIN_TIMEOUT))
        for worker in self._workers:
            steps += [worker.tasks.close, worker.results.close, _closer(worker.process)]
        run_all(steps)

    def detach_in_child(self) -> None:
        """In a forked copy of the training process: close the inherited pipe ends and process
        sentinels, and make sure this process's exit handlers never signal the workers."""
        self._closed = True
        self._lifeline.close()
        for worker in self._workers:
            worker.tasks.close()
            worker.results.close()
            # multiprocessing would terminate these "daemon children" when this copy exits; they
            # are the parent's processes, not ours.
            multiprocessing.process._children.discard(worker.process)  # type: ignore[attr-defined]
            _close_inherited_sentinel(worker.process)


def _close_inherited_sentinel(process: BaseProcess) -> None:
    """Close a fork's copies of ``process``'s sentinel pipe ends.

    multiprocessing closes them through a finalizer that refuses to run in another process, so
    a fork would keep them for good (and every later worker would hold its predecessors');
    run its closing here once and cancel it, so that nothing closes them twice.
    """
    finalizer = getattr(getattr(process, "_popen", None), "finalizer", None)
    if finalizer is None or not finalizer.still_active():
        return
    for fd in finalizer._args:  # util.Finalize(popen, util.close_fds, (fd, ...))
        try:
            os.close(fd)
        except OSError:
            pass  # already closed in this process
    finalizer.cancel()


def _start(process: BaseProcess, start_method: str) -> None:
    """Start ``process``; under spawn or forkserver its arguments are pickled now, and a
    failure to pickle becomes a :class:`TypeError` that says what to change."""
    try:
        process.start()
    except (OSError, ValueError) as error:
        if not _out_of_descriptors(error):
            raise
        raise WorkerStartError(
            f"Cannot start a worker process with the '{start_method}' start method: {error}."
            " Under it every in-memory tensor of the subjects reaches each worker as a file"
            " descriptor, and there are too many. Use multiprocessing_context='fork', give the"
            " subjects as files (paths), or call"
            " torch.multiprocessing.set_sharing_strategy('file_system') before iterating."
        ) from error
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        if start_method == "fork":
            raise
        raise TypeError(
            f"Cannot start a worker process with the '{start_method}' start method: the subjects,"
            f" transform and sampler are pickled to reach it, and pickling failed: {error}."
            " Define transforms and functions at module level (a lambda or a function defined"
            " inside another cannot be pickled), or use multiprocessing_context='fork'."
        ) from error


def _out_of_descriptors(error: BaseException) -> bool:
    """Whether starting a process failed for lack of file descriptors (this process's limit, or
    the forkserver's 256 per message)."""
    if isinstance(error, OSError):
        return error.errno == errno.EMFILE
    return "too many fds" in str(error)


def run_in_child(
    context: BaseContext,
    target: Callable[..., None],
    args: tuple[Any, ...],
    name: str,
    timeout: float,
) -> Any:
    """Run ``target(*args, results)`` in a new process and return the one message it sends on
    ``results``, a pipe end; the process is watched through its sentinel and always reaped.

    Raises:
        WorkerGone: the process ended before sending; its :class:`WorkerExited` says how.
        TimeoutError: nothing came within ``timeout`` seconds (the process is killed).
    """
    reader, writer = context.Pipe(duplex=False)
    process = context.Process(  # type: ignore[attr-defined]
        target=target, args=(*args, writer), name=name, daemon=True
    )
    try:
        process.start()
        writer.close()  # the child's end: EOF on the reader once the child is gone
        if not wait([reader, process.sentinel], timeout):
            raise TimeoutError(f"{name} sent nothing within {timeout:.0f} s")
        try:
            return reader.recv()
        except EOFError:
            process.join(JOIN_TIMEOUT)
            raise WorkerGone(WorkerExited(0, process.pid, process.exitcode)) from None
    finally:
        run_all(
            [
                reader.close,
                writer.close,
                lambda: _join_all([process], JOIN_TIMEOUT),
                _signal_if_running(process, "kill"),
                lambda: _join_all([process], JOIN_TIMEOUT),
                _closer(process),
            ]
        )


def _has_exited(process: BaseProcess) -> bool:
    """Whether ``process`` has ended: its exit code is known, or its sentinel fired (which is
    right also when SIGCHLD is ignored and the kernel reaps it, where ``is_alive()`` stays true
    forever; a forkserver's sentinel, once its status is read, may not fire again)."""
    if process.pid is None or process.exitcode is not None:
        return True
    return bool(wait([process.sentinel], 0))


def _join_all(processes: Sequence[BaseProcess], timeout: float) -> None:
    """Join (reap) each process that ends within ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for process in processes:
        if process.pid is not None:
            process.join(max(0.0, deadline - time.monotonic()))


def _signal_if_running(process: BaseProcess, how: str) -> Callable[[], None]:
    def send() -> None:
        if not _has_exited(process):
            getattr(process, how)()

    return send


def _ignoring_gone(send: Callable[[Any], None], message: Any) -> Callable[[], None]:
    def call() -> None:
        try:
            send(message)
        except OSError:
            pass  # the worker is already gone

    return call


def _closer(process: BaseProcess) -> Callable[[], None]:
    def close() -> None:
        if process.pid is None or not _has_exited(process):
            return  # never started, or unkillable (stuck in the kernel): nothing to release
        if process.exitcode is None:  # reaped by the kernel (SIGCHLD ignored): close() refuses
            process._popen.close()  # type: ignore[attr-defined]  # so release its pipes directly
            return
        process.close()

    return close


def run_all(steps: Sequence[Callable[[], None]]) -> None:
    """Run every step; raise the first failure after all have run (log the others)."""
    first: BaseException | None = None
    for step in steps:
        try:
            step()
        except BaseException as error:
            if first is None:
                first = error
            else:
                logger.warning("while closing the worker pool: %r", error)
    if first is not None:
        raise first
