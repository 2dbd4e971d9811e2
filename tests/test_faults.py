"""Every way the engine can fail, as one table of cases run across the start methods that matter.

Contracts 7 and 8 of DESIGN.md: a worker's exception reaches the training process naming the
subject and file, with the worker's traceback and the original exception as the cause; a worker
killed by a signal is reported with the signal and its likely cause at once; Ctrl-C, close(),
context exit, garbage collection and the training process being SIGKILLed all leave no worker and
no shared-memory segment behind. The autouse ``no_leaks`` fixture checks processes, /dev/shm and
descriptors after each case.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import shmqueue as sq
from shmqueue.errors import RemoteTraceback

START_METHODS = ("fork", "spawn", "forkserver")
PATCHES_PER_VOLUME = 4
MAX_LENGTH = 8  # two subjects' patches
PROMPT = 5.0  # seconds: "at once" on a loaded two-core machine; only a hang exceeds it
REPO = Path(__file__).resolve().parents[1]


# Transforms that misbehave, at module level so that spawn and forkserver workers can unpickle them


class MisbehaveOn(sq.Transform):
    """Passes subjects through, except the one named ``name``, on which it calls :meth:`act`."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        if subject["name"] == self.name:
            self.act()
        return subject

    def act(self) -> None:
        raise NotImplementedError


class FailOn(MisbehaveOn):
    """Raises, as a corrupt volume would."""

    def act(self) -> None:
        raise ValueError(f"intensities of {self.name} are corrupt")


class ExitOn(MisbehaveOn):
    """Ends the worker process, as a library calling exit() would."""

    def act(self) -> None:
        os._exit(3)


class InterruptTrainingOn(MisbehaveOn):
    """Sends Ctrl-C to the training process (waiting for this subject), then hangs."""

    def act(self) -> None:
        os.kill(os.getppid(), signal.SIGINT)
        threading.Event().wait()  # a stuck worker: close() must terminate it


# Helpers -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setup:
    """What a fault case gets: the subjects (six NIfTI files) and the start method."""

    subjects: list[sq.Subject]
    start_method: str
    tmp_path: Path

    def queue(self, num_workers: int = 2, **options: Any) -> sq.Queue:
        settings: dict[str, Any] = {
            "max_length": MAX_LENGTH,
            "patches_per_volume": PATCHES_PER_VOLUME,
            "shuffle_subjects": False,  # subject i is the i-th task: the cases pick which fails
            "seed": 0,
            "multiprocessing_context": self.start_method,
        }
        settings.update(options)
        return sq.Queue(
            self.subjects, sq.UniformSampler(None, 8), num_workers=num_workers, **settings
        )


def worker_pids(queue: sq.Queue) -> list[int]:
    assert queue._coordinator is not None, "the engine starts with the first iteration"
    pids = [pid for pid in queue._coordinator.worker_pids if pid is not None]
    assert len(pids) == queue.num_workers
    return pids


def wait_for_exit(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait (on pidfds, without reaping) until every process has exited; return those alive."""
    deadline = time.monotonic() + timeout
    alive = []
    for pid in pids:
        try:
            descriptor = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # already gone and reaped
        try:
            if not select.select([descriptor], [], [], max(0.0, deadline - time.monotonic()))[0]:
                alive.append(pid)
        finally:
            os.close(descriptor)
    return alive


def assert_gone(pids: Iterable[int]) -> None:
    pids = list(pids)
    assert not wait_for_exit(pids, timeout=0), f"workers still running: {pids}"


def assert_closed(queue: sq.Queue, reason: str) -> None:
    with pytest.raises(sq.QueueClosedError, match=reason):
        next(iter(queue))


# The cases ---------------------------------------------------------------------------------------


def transform_raises(setup: Setup) -> None:
    """A subject's transform raises in a worker: the error names it, with the remote traceback."""
    failing = setup.subjects[1]
    with setup.queue(transform=FailOn("sub-01")) as queue:
        yielded = 0
        with pytest.raises(sq.SubjectProcessingError) as caught:
            for _ in queue:
                yielded += 1
        # Subject 1 is in the first buffer fill, so its failure must be raised before any patch
        # is yielded, not after the rest of the epoch.
        assert yielded == 0
        message = str(caught.value)
        assert "sub-01" in message
        assert str(failing.t1.path) in message and str(failing.seg.path) in message
        assert "epoch 0" in message
        assert "ValueError: intensities of sub-01 are corrupt" in message
        original = caught.value.__cause__
        assert isinstance(original, ValueError)
        assert str(original) == "intensities of sub-01 are corrupt"
        remote = original.__cause__
        assert isinstance(remote, RemoteTraceback)
        assert "Traceback (most recent call last)" in remote.traceback_text
        assert 'raise ValueError(f"intensities of {self.name} are corrupt")' in (
            remote.traceback_text
        )
        assert "in act" in remote.traceback_text
        pids = worker_pids(queue)
        assert_closed(queue, "SubjectProcessingError")
    assert_gone(pids)


def worker_sigkilled(setup: Setup) -> None:
    """A worker is SIGKILLed mid-epoch (as by the OOM killer): reported at once, with the cause."""
    with setup.queue() as queue:
        patches = iter(queue)
        next(patches)
        pids = worker_pids(queue)
        os.kill(pids[0], signal.SIGKILL)
        assert not wait_for_exit(pids[:1], timeout=30), "SIGKILL did not end the worker"
        started = time.monotonic()
        with pytest.raises(sq.WorkerDiedError) as caught:
            for _ in patches:
                pass
        assert time.monotonic() - started < PROMPT
        message = str(caught.value)
        assert f"Worker 0 (pid {pids[0]}) was killed by SIGKILL" in message
        assert "out-of-memory" in message
        assert "num_workers" in message  # says what to do
        assert_closed(queue, "WorkerDiedError")
    assert_gone(pids)


def worker_exits(setup: Setup) -> None:
    """A worker's process exits in user code: the exit code and the subject it was on."""
    with setup.queue(transform=ExitOn("sub-01")) as queue:
        with pytest.raises(sq.WorkerDiedError) as caught:
            for _ in queue:
                pass
        message = str(caught.value)
        assert "exited with code 3" in message
        assert "while processing subject 1 'sub-01'" in message
        pids = worker_pids(queue)
    assert_gone(pids)


def keyboard_interrupt_in_loop(setup: Setup) -> None:
    """Ctrl-C in the training loop's body: workers survive it, the queue stays usable."""
    with setup.queue() as queue:
        loader = sq.SubjectsLoader(queue, batch_size=4)
        with pytest.raises(KeyboardInterrupt):
            for number, _ in enumerate(loader):
                if number == 1:
                    pids = worker_pids(queue)
                    for pid in pids:  # a terminal's Ctrl-C reaches the whole process group
                        os.kill(pid, signal.SIGINT)
                    signal.raise_signal(signal.SIGINT)
        assert worker_pids(queue) == pids
        assert sum(batch.t1.data.shape[0] for batch in loader) == len(queue)
        stats = queue.stats()
        assert stats.ready + stats.in_workers <= MAX_LENGTH
    assert_gone(pids)


def ctrl_c_while_waiting(setup: Setup) -> None:
    """Ctrl-C while the training process waits for a stuck worker: close() still ends it."""
    with setup.queue(transform=InterruptTrainingOn("sub-01")) as queue:
        with pytest.raises(KeyboardInterrupt):
            for _ in queue:
                pass
        pids = worker_pids(queue)
        queue.close()
        assert_gone(pids)
        queue.close()


def close_twice(setup: Setup) -> None:
    """close() mid-epoch stops the workers; a second close() does nothing."""
    queue = setup.queue()
    patches = iter(queue)
    next(patches)
    pids = worker_pids(queue)
    queue.close()
    assert_gone(pids)
    queue.close()
    assert_closed(queue, "the queue was closed")
    with pytest.raises(sq.QueueClosedError):
        next(patches)


def context_exit_on_error(setup: Setup) -> None:
    """An exception in user code inside ``with queue:`` closes the queue on the way out."""
    with pytest.raises(RuntimeError, match="user code"), setup.queue() as queue:
        next(iter(queue))
        pids = worker_pids(queue)
        raise RuntimeError("user code")
    assert_gone(pids)
    assert_closed(queue, "the queue was closed")


def garbage_collected(setup: Setup) -> None:
    """A queue dropped without close() is cleaned up when collected."""
    queue = setup.queue()
    assert sum(1 for _ in queue) == len(queue)
    pids = worker_pids(queue)
    del queue
    gc.collect()
    assert_gone(pids)


def unpicklable_transform(setup: Setup) -> None:
    """A lambda cannot reach spawn/forkserver workers: say so, and what to do instead."""
    with setup.queue(transform=lambda subject: subject) as queue:
        with pytest.raises(TypeError) as caught:
            next(iter(queue))
        message = str(caught.value)
        assert f"'{setup.start_method}' start method" in message
        assert "<lambda>" in message
        assert "module level" in message
        assert "multiprocessing_context='fork'" in message
        assert queue._coordinator is None  # nothing was left half-started
        with pytest.raises(TypeError, match="module level"):  # and trying again says the same
            next(iter(queue))


_TRAINING_SCRIPT = """
import json, os, sys
import torch
import shmqueue as sq


def main() -> None:
    subjects = [
        sq.Subject(t1=sq.ScalarImage(torch.rand(1, 24, 20, 16)), name=f"s{index}")
        for index in range(4)
    ]
    running = []
    for backend in ("memfd", "named"):
        queue = sq.Queue(
            subjects, sq.UniformSampler(None, 8), max_length=8, patches_per_volume=4,
            num_workers=2, backend=backend, multiprocessing_context=sys.argv[1], seed=0,
        )
        patches = iter(queue)
        next(patches)
        running.append((queue, patches))
    workers = {queue.backend: queue._coordinator.worker_pids for queue, _ in running}
    print(json.dumps(workers), flush=True)
    sys.stdin.read()  # train until killed


if __name__ == "__main__":
    main()
"""


def _training_process_killed(setup: Setup, whole_group: bool) -> None:
    """A training process (in its own session) with a memfd and a named queue is SIGKILLed."""
    script = setup.tmp_path / "train.py"
    script.write_text(textwrap.dedent(_TRAINING_SCRIPT))
    with (setup.tmp_path / "stderr.txt").open("w+") as stderr:
        training = subprocess.Popen(
            [sys.executable, str(script), setup.start_method],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            cwd=REPO,
            start_new_session=True,
        )
        try:
            assert training.stdout is not None
            ready = select.select([training.stdout], [], [], 120)[0]
            line = training.stdout.readline() if ready else ""
            stderr.seek(0)
            assert line, f"the training script did not start: {stderr.read()}"
            workers: dict[str, list[int]] = json.loads(line)
            pids = workers["memfd"] + workers["named"]
            assert len(set(pids)) == 4
            # The named ring was unlinked once its workers had mapped it: nothing to leak.
            prefix = f"shmqueue-{training.pid}-"
            assert not [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]
            for pid in workers["named"]:
                maps = Path(f"/proc/{pid}/maps").read_text()
                assert f"/dev/shm/{prefix}" in maps and "(deleted)" in maps
            for pid in workers["memfd"]:
                assert "memfd:shmqueue-ring (deleted)" in Path(f"/proc/{pid}/maps").read_text()
        finally:
            if whole_group:
                os.killpg(training.pid, signal.SIGKILL)
            else:
                training.kill()
            training.wait(30)
            assert training.stdout is not None and training.stdin is not None
            training.stdout.close()
            training.stdin.close()
    assert training.returncode == -signal.SIGKILL
    # Orphaned workers see their lifeline's EOF and exit; a killed group is gone at once.
    assert not wait_for_exit(pids, timeout=30), "workers outlived the training process"
    assert not [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def training_process_group_sigkilled(setup: Setup) -> None:
    _training_process_killed(setup, whole_group=True)


def training_process_sigkilled(setup: Setup) -> None:
    _training_process_killed(setup, whole_group=False)


@dataclass(frozen=True)
class Fault:
    """A fault case and the start methods where it differs (pickling, inheritance, lifelines)."""

    provoke: Callable[[Setup], None]
    start_methods: tuple[str, ...]


FAULTS = (
    Fault(transform_raises, START_METHODS),
    Fault(worker_sigkilled, START_METHODS),
    Fault(worker_exits, ("fork",)),
    Fault(keyboard_interrupt_in_loop, ("fork",)),
    Fault(ctrl_c_while_waiting, ("fork",)),
    Fault(close_twice, ("fork",)),
    Fault(context_exit_on_error, ("fork",)),
    Fault(garbage_collected, ("fork",)),
    Fault(unpicklable_transform, ("spawn", "forkserver")),
    Fault(training_process_group_sigkilled, ("fork",)),
    Fault(training_process_sigkilled, ("fork", "forkserver")),  # forkserver: grandchildren
)


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("fault", "start_method"),
    [
        pytest.param(fault, method, id=f"{fault.provoke.__name__}-{method}")
        for fault in FAULTS
        for method in fault.start_methods
    ],
)
def test_fault(
    fault: Fault, start_method: str, nifti_subjects: list[sq.Subject], tmp_path: Path
) -> None:
    """Provoke the fault and check the case's outcome; ``no_leaks`` then checks the aftermath."""
    fault.provoke(Setup(nifti_subjects, start_method, tmp_path))
