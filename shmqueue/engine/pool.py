"""WorkerPool: the only code that starts, watches, stops and kills worker processes.

It waits on the workers' result pipes and process sentinels together
(``multiprocessing.connection.wait``), so a worker's death is noticed as soon as anyone waits,
never by polling. Shutdown follows steps 6-8 of protocol.py and is safe to call twice.
"""

from __future__ import annotations

import pickle
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from multiprocessing.process import BaseProcess
from typing import Any

from ..pipeline import SubjectPipeline
from .layout import SlotLayout
from .protocol import JOIN_TIMEOUT, Shutdown, TaskMessage, WorkerMessage
from .ring import SegmentHandle
from .worker import worker_main

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
        if self.exitcode is not None and self.exitcode < 0:
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
        handle: SegmentHandle,
        layout: SlotLayout,
    ) -> None:
        self._closed = False
        self._workers: list[_Worker] = []
        self._pids: list[int | None] = []
        lifeline_reader, self._lifeline = context.Pipe(duplex=False)
        fork = context.get_start_method() == "fork"
        inherited = (self._lifeline.fileno(),) if fork else ()
        try:
            for worker_id in range(num_workers):
                task_reader, task_writer = context.Pipe(duplex=False)
                result_reader, result_writer = context.Pipe(duplex=False)
                process = context.Process(  # type: ignore[attr-defined]
                    target=worker_main,
                    args=(
                        worker_id,
                        pipeline,
                        handle,
                        layout,
                        task_reader,
                        result_writer,
                        lifeline_reader,
                        inherited,
                    ),
                    name=f"shmqueue-worker-{worker_id}",
                    daemon=True,
                )
                self._workers.append(_Worker(worker_id, process, task_writer, result_reader))
                try:
                    _start(process, context.get_start_method())
                finally:  # the worker's ends: the child has its own copies (or never started)
                    task_reader.close()
                    result_writer.close()
                self._pids.append(process.pid)
        except BaseException:
            self.close()
            raise
        finally:
            lifeline_reader.close()

    @property
    def num_workers(self) -> int:
        return len(self._workers)

    @property
    def pids(self) -> list[int | None]:
        """The workers' process ids, also after :meth:`close` (a closed Process has none)."""
        return list(self._pids)

    def send(self, worker_id: int, message: TaskMessage) -> None:
        self._workers[worker_id].tasks.send(message)

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
        for worker in dict.fromkeys(died):
            worker.process.join(JOIN_TIMEOUT)
            events.append(
                WorkerExited(worker.worker_id, worker.process.pid, worker.process.exitcode)
            )
        return events

    def close(self) -> None:
        """Steps 6-8 of the protocol: ask, wait, terminate, kill, release the pipes."""
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            try:
                worker.tasks.send(Shutdown())
            except OSError:
                pass  # the worker is already gone
        self._lifeline.close()
        _join_all([worker.process for worker in self._workers], SHUTDOWN_GRACE)
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        _join_all([worker.process for worker in self._workers], JOIN_TIMEOUT)
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.tasks.close()
            worker.results.close()
            if worker.process.pid is not None:
                worker.process.close()


def _start(process: BaseProcess, start_method: str) -> None:
    """Start ``process``; under spawn or forkserver its arguments are pickled, and a failure
    to pickle becomes a :class:`TypeError` that says what to change."""
    try:
        process.start()
    except (pickle.PicklingError, AttributeError, TypeError) as error:
        if start_method == "fork":
            raise
        raise TypeError(
            f"Cannot start a worker process with the '{start_method}' start method: the subjects,"
            f" transform and sampler are pickled to reach it, and pickling failed: {error}."
            " Define transforms and functions at module level (a lambda or a function defined"
            " inside another cannot be pickled), or use multiprocessing_context='fork'."
        ) from error


def _join_all(processes: Sequence[BaseProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for process in processes:
        if process.pid is not None:
            process.join(max(0.0, deadline - time.monotonic()))
