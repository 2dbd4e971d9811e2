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
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fault_cases_engine import (
    TIMEOUT,
    close_from_a_signal_handler,
    close_with_sigchld_ignored,
    closed_ring_held_by_later_workers,
    dataloader_workers_iterate,
    forked_child_exits,
    named_ring_killed_during_start_up,
    orphaned_beside_a_manager,
    orphaned_while_stopped,
    spawn_script_without_main_guard,
    start_training_script,
    start_up_cannot_unpickle,
    too_many_in_memory_subjects,
    worker_dies_between_epochs,
    worker_stuck,
)
from fault_cases_files import (
    check_file_changed,
    check_out_of_memory,
    file_changed_between_epochs,
    out_of_memory_while_inflating,
)
from fault_cases_queue import (
    check_second_iterator_started,
    check_transform_changes_channels,
    second_iterator_started,
    second_ring_does_not_fit,
    transform_changes_channels,
)
from misbehaving import ExitOn, FailOn, InterruptTrainingOn

import shmqueue as sq
from shmqueue.errors import RemoteTraceback

START_METHODS = ("fork", "spawn", "forkserver")
PATCHES_PER_VOLUME = 4
MAX_LENGTH = 8  # two subjects' patches
PROMPT = 5.0  # seconds: "at once" on a loaded two-core machine; only a hang exceeds it
STARTUP = 30.0  # seconds to start two spawn workers (each imports torch) on a loaded machine
SHUTDOWN = 10.0  # seconds for close(): a grace period, then SIGTERM, then SIGKILL
REPO = Path(__file__).resolve().parents[1]


# Helpers -----------------------------------------------------------------------------------------


class Setup:
    """What a fault case gets: the subjects (six NIfTI files), the start method, and a record of
    the queues it made and of the moment it provoked the fault (for the row's time bounds)."""

    def __init__(self, subjects: list[sq.Subject], start_method: str, tmp_path: Path) -> None:
        self.subjects = subjects
        self.start_method = start_method
        self.tmp_path = tmp_path
        self.queues: list[sq.Queue] = []
        self.struck_at: float | None = None

    def queue(self, num_workers: int = 2, **options: Any) -> sq.Queue:
        settings: dict[str, Any] = {
            "max_length": MAX_LENGTH,
            "patches_per_volume": PATCHES_PER_VOLUME,
            "shuffle_subjects": False,  # subject i is the i-th task: the cases pick which fails
            "seed": 0,
            "multiprocessing_context": self.start_method,
        }
        settings.update(options)
        queue = sq.Queue(
            self.subjects, sq.UniformSampler(None, 8), num_workers=num_workers, **settings
        )
        self.queues.append(queue)
        return queue

    def strike(self) -> None:
        """Mark the moment the fault is provoked: detection is timed from here."""
        self.struck_at = time.monotonic()

    def close(self) -> list[int]:
        """Close every queue the case made; the pids of all their workers."""
        pids = [pid for queue in self.queues for pid in queue.worker_pids]
        for queue in self.queues:
            queue.close()
        return pids


def worker_pids(queue: sq.Queue) -> list[int]:
    pids = queue.worker_pids
    assert len(pids) == queue.num_workers, "the engine starts with the first iteration"
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
# A case provokes its fault (calling ``setup.strike()`` at that moment) and lets the exception the
# training process sees propagate; its row in FAULTS states the type, the message and the bounds.
# Checks beyond the message go in the row's ``check``.


def transform_raises(setup: Setup) -> None:
    """A subject's transform raises in a worker: the error names it, with the remote traceback."""
    queue = setup.queue(transform=FailOn("sub-01"))
    setup.strike()
    yielded = 0
    try:
        for _ in queue:
            yielded += 1
    finally:
        # Subject 1 is in the first buffer fill, so its failure must be raised before any patch
        # is yielded, not after the rest of the epoch.
        assert yielded == 0


def check_transform_raises(error: BaseException, setup: Setup) -> None:
    failing = setup.subjects[1]
    message = str(error)
    assert str(failing.t1.path) in message and str(failing.seg.path) in message
    assert "ValueError: intensities of sub-01 are corrupt. The worker's traceback" in message
    assert "corrupt.." not in message, "a doubled period"
    original = error.__cause__
    assert isinstance(original, ValueError)
    assert str(original) == "intensities of sub-01 are corrupt."
    remote = original.__cause__
    assert isinstance(remote, RemoteTraceback)
    assert "Traceback (most recent call last)" in remote.traceback_text
    assert 'raise ValueError(f"intensities of {self.name} are corrupt.")' in remote.traceback_text
    assert "in act" in remote.traceback_text
    assert_closed(setup.queues[0], "SubjectProcessingError")


def worker_sigkilled(setup: Setup) -> None:
    """A worker is SIGKILLed mid-epoch (as by the OOM killer): reported at once, with the cause."""
    queue = setup.queue()
    patches = iter(queue)
    next(patches)
    pids = worker_pids(queue)
    os.kill(pids[0], signal.SIGKILL)
    assert not wait_for_exit(pids[:1], timeout=30), "SIGKILL did not end the worker"
    setup.strike()
    for _ in patches:
        pass


def check_worker_sigkilled(error: BaseException, setup: Setup) -> None:
    pid = setup.queues[0].worker_pids[0]
    assert f"Worker 0 (pid {pid}) was killed by SIGKILL" in str(error)
    assert_closed(setup.queues[0], "WorkerDiedError")


def worker_exits(setup: Setup) -> None:
    """A worker's process exits in user code: the exit code and the subject it was on."""
    queue = setup.queue(transform=ExitOn("sub-01"))
    setup.strike()
    for _ in queue:
        pass


def keyboard_interrupt_in_loop(setup: Setup) -> None:
    """Ctrl-C in the training loop's body: workers survive it, the queue stays usable."""
    queue = setup.queue()
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


def ctrl_c_while_waiting(setup: Setup) -> None:
    """Ctrl-C while the training process waits for a stuck worker: close() still ends it."""
    queue = setup.queue(transform=InterruptTrainingOn("sub-01"))
    setup.strike()
    for _ in queue:
        pass


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
    setup.strike()
    next(patches)


def context_exit_on_error(setup: Setup) -> None:
    """An exception in user code inside ``with queue:`` closes the queue on the way out."""
    with pytest.raises(RuntimeError, match="user code"), setup.queue() as queue:
        next(iter(queue))
        pids = worker_pids(queue)
        raise RuntimeError("user code")
    assert_gone(pids)
    setup.strike()
    next(iter(queue))


def garbage_collected(setup: Setup) -> None:
    """A queue dropped without close() is cleaned up when collected."""
    queue = sq.Queue(  # not through setup.queue(), which would keep it alive
        setup.subjects,
        sq.UniformSampler(None, 8),
        max_length=MAX_LENGTH,
        patches_per_volume=PATCHES_PER_VOLUME,
        num_workers=2,
        multiprocessing_context=setup.start_method,
    )
    assert sum(1 for _ in queue) == len(queue)
    pids = worker_pids(queue)
    del queue
    gc.collect()
    assert_gone(pids)


def unpicklable_transform(setup: Setup) -> None:
    """A lambda cannot reach spawn/forkserver workers: say so, and what to do instead."""
    queue = setup.queue(transform=lambda subject: subject)
    with pytest.raises(TypeError, match="module level"):
        next(iter(queue))
    assert queue.worker_pids == []  # nothing was left half-started
    setup.strike()
    next(iter(queue))  # and trying again says the same


def check_unpicklable(error: BaseException, setup: Setup) -> None:
    message = str(error)
    assert f"'{setup.start_method}' start method" in message
    assert "<lambda>" in message
    assert "multiprocessing_context='fork'" in message


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
    workers = {queue.backend: queue.worker_pids for queue, _ in running}
    print(json.dumps(workers), flush=True)
    sys.stdin.read()  # train until killed


if __name__ == "__main__":
    main()
"""


def _training_process_killed(setup: Setup, whole_group: bool) -> None:
    """A training process (in its own session) with a memfd and a named queue is SIGKILLed."""
    with (setup.tmp_path / "stderr.txt").open("w+") as stderr:
        training = start_training_script(setup, _TRAINING_SCRIPT, setup.start_method, stderr=stderr)
        try:
            assert training.stdout is not None
            ready = select.select([training.stdout], [], [], 120)[0]
            line = training.stdout.readline() if ready else ""
            stderr.seek(0)
            assert line, f"the training script did not start: {stderr.read()}"
            workers: dict[str, list[int]] = json.loads(line)
            pids = workers["memfd"] + workers["named"]
            assert len(set(pids)) == 4
            # The named ring was unlinked as soon as it was made: nothing to leak.
            prefix = f"shmqueue-{training.pid}-"
            assert not [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]
            for pid in workers["named"]:
                maps = Path(f"/proc/{pid}/maps").read_text()
                assert f"/dev/shm/{prefix}" in maps and "(deleted)" in maps
            for pid in workers["memfd"]:
                assert (
                    f"memfd:shmqueue-ring-{training.pid}-" in Path(f"/proc/{pid}/maps").read_text()
                )
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
    """One row: a fault, when it strikes, the start methods where it differs (pickling,
    inheritance, lifelines), and what the training process must see, how soon."""

    provoke: Callable[[Setup], None]
    strikes: str
    start_methods: tuple[str, ...]
    raises: type[BaseException] | None  # None: the case checks its own outcome, nothing escapes
    message: str | None = None  # a regular expression the message must match
    detect_within: float = PROMPT  # seconds from setup.strike() to the exception
    shutdown_within: float = SHUTDOWN  # seconds for closing every queue and its workers
    check: Callable[[BaseException, Setup], None] | None = None


ALL = START_METHODS
FORK = ("fork",)
FAULTS = (
    Fault(
        transform_raises, "in the first fill", ALL, sq.SubjectProcessingError,
        r"Worker \d failed on subject 1 'sub-01' .* in epoch 0: ValueError: intensities",
        detect_within=STARTUP,  # the first fill includes starting the workers
        check=check_transform_raises,
    ),
    Fault(
        worker_sigkilled, "mid-epoch", ALL, sq.WorkerDiedError,
        r"was killed by SIGKILL \(SIGKILL usually comes from the kernel's out-of-memory killer\)"
        r".*lower num_workers",
        check=check_worker_sigkilled,
    ),
    Fault(
        worker_exits, "in the first fill", FORK, sq.WorkerDiedError,
        r"exited with code 3 .* while processing subject 1 'sub-01'",
    ),
    Fault(keyboard_interrupt_in_loop, "in the loop body", FORK, None),
    Fault(ctrl_c_while_waiting, "while the consumer waits", FORK, KeyboardInterrupt),
    Fault(close_twice, "mid-epoch", FORK, sq.QueueClosedError, "the queue was closed"),
    Fault(context_exit_on_error, "in the loop body", FORK, sq.QueueClosedError, "was closed"),
    Fault(garbage_collected, "after the epoch", FORK, None),
    Fault(
        unpicklable_transform, "at start-up", ("spawn", "forkserver"), TypeError,
        r"<lambda>.*module level", check=check_unpicklable,
    ),
    Fault(training_process_group_sigkilled, "mid-epoch", FORK, None),
    Fault(training_process_sigkilled, "mid-epoch", ("fork", "forkserver"), None),
    # Issue 12: processes and descriptors
    Fault(forked_child_exits, "between epochs", FORK, None),
    Fault(
        dataloader_workers_iterate, "at the first batch", FORK, sq.ForeignProcessError,
        r"inside a torch DataLoader worker.*shmqueue\.SubjectsLoader",
    ),
    Fault(orphaned_beside_a_manager, "mid-subject", ALL, None),
    Fault(orphaned_while_stopped, "mid-subject", ("fork", "spawn"), None),
    Fault(
        worker_dies_between_epochs, "between epochs", ALL, sq.WorkerDiedError,
        r"Worker 0 \(pid \d+\) was killed by SIGKILL \(.*out-of-memory killer\) while idle",
    ),
    Fault(closed_ring_held_by_later_workers, "after close()", FORK, None),
    Fault(named_ring_killed_during_start_up, "at start-up", ("spawn",), None),
    Fault(spawn_script_without_main_guard, "at start-up", ("spawn",), None),
    Fault(
        too_many_in_memory_subjects, "at start-up", ("forkserver",), sq.WorkerStartError,
        r"'forkserver' start method: too many fds\..*multiprocessing_context='fork'",
        detect_within=STARTUP,
    ),
    Fault(close_with_sigchld_ignored, "at close()", FORK, None),
    Fault(
        close_from_a_signal_handler, "while the consumer waits", FORK, sq.QueueClosedError,
        "the queue was closed",
    ),
    Fault(
        worker_stuck, "mid-subject", FORK, sq.WorkerTimeoutError,
        r"No worker reported for 2 s \(timeout=2\) while processing subject 1 'sub-01'",
        detect_within=TIMEOUT + PROMPT,
    ),
    Fault(
        start_up_cannot_unpickle, "at start-up", ("spawn", "forkserver"), sq.WorkerStartError,
        r"could not start under the '\w+' start method: ModuleNotFoundError: No module named"
        r" 'vanishing_transforms'.*__name__ == \"__main__\"",
        detect_within=60.0,  # spawn imports torch in every worker first
    ),
    # Issue 12: what the queue checks
    Fault(
        transform_changes_channels, "mid-epoch", ALL, sq.SubjectProcessingError,
        r"TransformOutputError: subject 2 'sub-02' .*: image 't1' is 2 channels of torch\.float32"
        r" after the transform, but the ring of patch slots \(laid out from the headers and the"
        r" transform's output_spec\) holds 1 channel of torch\.float32; transform step 2"
        r" \(DoubleChannelsOf\) changed it",
        check=check_transform_changes_channels,
    ),
    Fault(
        second_iterator_started, "mid-epoch", FORK, sq.ConcurrentIterationError,
        r"iterating epoch 0, but a newer iteration of the same queue started epoch 1: two"
        r" iterators over one queue would split",
        check=check_second_iterator_started,
    ),
    Fault(
        second_ring_does_not_fit, "at the second queue's first iteration", FORK,
        sq.MemoryBudgetError,
        r"The plan needs .* but .* is available \(as the training queue left it\)",
    ),
    # Issue 12: files
    Fault(
        file_changed_between_epochs, "between epochs", ALL, sq.SubjectProcessingError,
        r"Worker \d failed on subject 4 'sub-04' .* in epoch 1:"
        r" shmqueue\.errors\.ImageChangedError: Image file '.*t1_4\.nii\.gz'"
        r" changed since the queue was built .*:"
        r" shape \(40, 36, 32\) -> \(32, 36, 40\)\..*Rebuild the subjects and the queue",
        check=check_file_changed,
    ),
    Fault(
        out_of_memory_while_inflating, "mid-epoch", ALL, sq.SubjectProcessingError,
        r"Worker \d failed on subject 4 'sub-04' .* in epoch 1:"
        r" shmqueue\.errors\.ImageMemoryError: Out of memory while loading '.*t1_4\.nii\.gz':"
        r" it needs 270\.0 KiB .*RAM available"
        r".*ulimit -v.*Lower num_workers",
        check=check_out_of_memory,
    ),
)  # fmt: skip


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
    """Provoke the fault, check what the training process saw and how soon, then close.

    ``no_leaks`` then checks that no process, segment or descriptor is left.
    """
    setup = Setup(nifti_subjects, start_method, tmp_path)
    try:
        if fault.raises is None:
            fault.provoke(setup)
        else:
            with pytest.raises(fault.raises, match=fault.message) as caught:
                fault.provoke(setup)
            detected = time.monotonic()
            assert setup.struck_at is not None, "the case never called setup.strike()"
            took = detected - setup.struck_at
            assert took < fault.detect_within, f"detected after {took:.1f} s"
            if fault.check is not None:
                fault.check(caught.value, setup)
    finally:
        started = time.monotonic()
        pids = setup.close()
        alive = wait_for_exit(pids, timeout=fault.shutdown_within)
        took = time.monotonic() - started
    assert not alive, f"workers still running after close(): {alive}"
    assert took < fault.shutdown_within, f"shutdown took {took:.1f} s"
