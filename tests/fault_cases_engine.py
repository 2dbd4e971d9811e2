"""Fault cases of the engine's processes and descriptors, for the table in test_faults.py.

Issue 12's defects 2, 3, 5, 6, 7 and 11 and its weak messages: forked copies of the training
process, orphaned workers, a worker dying between epochs, a closed ring held by later processes,
a killed start-up, ``close()`` when releases fail or from a signal handler, stuck workers, and
spawn start-up failures. Each case provokes its fault, calling ``setup.strike()`` at that moment,
and lets the exception the training process sees propagate; the row states the rest.
"""

from __future__ import annotations

import atexit
import json
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import IO, TYPE_CHECKING

import torch
from misbehaving import HangOn, SignalTrainingOn
from torch.utils.data import DataLoader

import shmqueue as sq

if TYPE_CHECKING:
    from test_faults import Setup

REPO = Path(__file__).resolve().parents[1]
ORPHAN_EXIT = 5.0  # seconds: "within a couple of seconds" of the training process's death


def start_training_script(
    setup: Setup, source: str, *args: str, stderr: IO[str] | int = subprocess.DEVNULL
) -> subprocess.Popen[str]:
    """Run ``source`` as a training script in a session of its own (so that the case can kill
    its whole process group), with pipes for its stdin and stdout."""
    script = setup.tmp_path / "training.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        cwd=REPO,
        start_new_session=True,
    )


def _pids(queue: sq.Queue) -> list[int]:
    pids = queue.worker_pids
    assert len(pids) == queue.num_workers
    return pids


def _exit_normally_in_child(action: str, queue: sq.Queue) -> int:
    """Fork; the child does ``action`` and exits as an interpreter does (atexit handlers, which
    run finalizers and multiprocessing's own exit code), reporting an error by exit status."""
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            if action == "iterate":
                try:
                    next(iter(queue))
                    status = 3
                except sq.ForeignProcessError as error:
                    status = 0 if "built in process" in str(error) else 4
            atexit._run_exitfuncs()
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


# Forked copies of the training process (defect 2) -------------------------------------------------


def forked_child_exits(setup: Setup) -> None:
    """A plain fork of the training process that exits normally, and one that tries to iterate
    the queue: the parent's next epoch runs as if nothing happened."""
    queue = setup.queue()
    assert sum(1 for _ in queue) == len(queue)
    pids = _pids(queue)
    assert _exit_normally_in_child("exit", queue) == 0
    assert _exit_normally_in_child("iterate", queue) == 0, "the child was not refused"
    setup.strike()
    assert sum(1 for _ in queue) == len(queue)
    assert _pids(queue) == pids


def dataloader_workers_iterate(setup: Setup) -> None:
    """A torch DataLoader with workers over the queue: refused, naming SubjectsLoader."""
    queue = setup.queue()
    next(iter(queue))  # the engine runs: its workers must survive the DataLoader's forks
    loader = DataLoader(queue, batch_size=None, num_workers=2, multiprocessing_context="fork")
    batches = iter(loader)
    setup.strike()
    try:
        next(batches)
    except sq.ForeignProcessError as error:
        refused = error.with_traceback(None)  # its frames would keep the DataLoader's workers
    else:
        raise AssertionError("the DataLoader iterated the queue")
    del batches  # the DataLoader stops its workers
    assert sum(1 for _ in queue) == len(queue), "the queue still works"
    raise refused


# Orphans (defect 3) -------------------------------------------------------------------------------

_ORPHAN_SCRIPT = """
import json, multiprocessing, os, signal, sys, threading
import torch
import shmqueue as sq


class HangOnLater(sq.Transform):
    def apply(self, subject, generator):
        if subject["name"] in ("s2", "s3"):
            threading.Event().wait()  # a long subject: the worker is busy when we die
        return subject


def main():
    method, helper = sys.argv[1], sys.argv[2]
    subjects = [
        sq.Subject(t1=sq.ScalarImage(torch.rand(1, 24, 20, 16)), name=f"s{index}")
        for index in range(4)
    ]
    queue = sq.Queue(
        subjects, sq.UniformSampler(None, 8), max_length=8, patches_per_volume=4,
        num_workers=2, multiprocessing_context=method, transform=HangOnLater(),
        shuffle_subjects=False, shuffle_patches=False, seed=0,
    )
    patches = iter(queue)
    for _ in range(8):  # s0 and s1 yielded: s2 and s3 now hang in the two workers
        next(patches)
    helpers = []
    if helper == "manager":  # a long-lived fork of the training process
        manager = multiprocessing.get_context("fork").Manager()
        helpers.append(manager._process.pid)
    elif helper == "fork":
        pid = os.fork()
        if pid == 0:
            signal.pause()
            os._exit(0)
        helpers.append(pid)
    print(json.dumps({"workers": queue.worker_pids, "helpers": helpers}), flush=True)
    sys.stdin.read()  # train until killed


if __name__ == "__main__":
    main()
"""


def _orphaned(setup: Setup, helper: str, stop_worker: bool) -> None:
    with (setup.tmp_path / "stderr.txt").open("w+") as stderr:
        training = start_training_script(
            setup, _ORPHAN_SCRIPT, setup.start_method, helper, stderr=stderr
        )
        helpers: list[int] = []
        try:
            assert training.stdout is not None
            ready = select.select([training.stdout], [], [], 120)[0]
            line = training.stdout.readline() if ready else ""
            stderr.seek(0)
            assert line, f"the training script did not start: {stderr.read()}"
            started = json.loads(line)
            workers, helpers = started["workers"], started["helpers"]
            if stop_worker:
                os.kill(workers[0], signal.SIGSTOP)
            training.kill()
            training.wait(30)
            setup.strike()
            from test_faults import wait_for_exit

            alive = wait_for_exit(workers, timeout=ORPHAN_EXIT)
            assert not alive, f"workers {alive} outlived the training process by {ORPHAN_EXIT} s"
        finally:
            for pid in helpers:  # the helpers are the script's own business: end them
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            os.killpg(training.pid, signal.SIGKILL)
            training.wait(30)
            assert training.stdout is not None and training.stdin is not None
            training.stdout.close()
            training.stdin.close()


def orphaned_beside_a_manager(setup: Setup) -> None:
    """The training process, which forked a Manager after starting the queue, is SIGKILLed
    while both workers are in the middle of a subject: they exit within seconds anyway."""
    _orphaned(setup, "manager", stop_worker=False)


def orphaned_while_stopped(setup: Setup) -> None:
    """As above with an os.fork() helper, and one worker stopped with SIGSTOP: the kernel's
    parent-death signal ends even a stopped worker."""
    _orphaned(setup, "fork", stop_worker=True)


# Deaths between epochs, rings held by later processes (defects 5, 6, 7) ---------------------------


def worker_dies_between_epochs(setup: Setup) -> None:
    """A worker SIGKILLed while idle between epochs (e.g. for memory during validation): the
    next epoch says which worker died and why, not a bare BrokenPipeError.

    A plain list as ``subject_sampler`` keeps the next epoch from being prefetched, so once an
    epoch is consumed every worker is idle, with its reports read.
    """
    queue = setup.queue(subject_sampler=list(range(len(setup.subjects))))
    assert sum(1 for _ in queue) == len(queue)
    pids = _pids(queue)
    os.kill(pids[0], signal.SIGKILL)
    from test_faults import wait_for_exit

    assert not wait_for_exit(pids[:1], timeout=30)
    setup.strike()
    for _ in queue:
        pass


def _rings(pid: int) -> set[int]:
    """The memfd rings (by inode) that process ``pid`` maps or holds a descriptor of."""
    rings = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) > 5 and fields[5].startswith("/memfd:shmqueue-ring"):
            rings.add(int(fields[4]))
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(entry).startswith("/memfd:shmqueue-ring"):
                rings.add(os.stat(entry).st_ino)
        except OSError:
            continue
    return rings


def closed_ring_held_by_later_workers(setup: Setup) -> None:
    """Queue A runs, queue B starts (forking its workers while A is alive), A closes: no
    process keeps A's ring (B's workers inherited neither its descriptor nor its mapping)."""
    first = setup.queue()
    next(iter(first))
    (ring,) = _rings(_pids(first)[0])
    second = setup.queue()
    next(iter(second))
    first.close()
    setup.strike()
    holders = [pid for pid in [os.getpid(), *_pids(second)] if ring in _rings(pid)]
    assert not holders, f"processes {holders} still hold the closed queue's ring (inode {ring})"
    later = _rings(_pids(second)[1])
    assert len(later) == 1, f"a worker of the second queue holds rings {later}"


_STARTUP_SCRIPT = """
import multiprocessing.process, sys
import torch
import shmqueue as sq

start = multiprocessing.process.BaseProcess.start


def start_and_tell(process):  # the ring exists and the first worker is starting: kill us now
    start(process)
    print("worker started", flush=True)


if __name__ == "__main__":
    multiprocessing.process.BaseProcess.start = start_and_tell
    subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 24, 20, 16)))] * 4
    queue = sq.Queue(
        subjects, sq.UniformSampler(None, 8), max_length=8, patches_per_volume=4,
        num_workers=2, backend="named", multiprocessing_context=sys.argv[1],
    )
    next(iter(queue))
"""


def named_ring_killed_during_start_up(setup: Setup) -> None:
    """The process group is SIGKILLed while spawn workers start: nothing stays in /dev/shm."""
    training = start_training_script(setup, _STARTUP_SCRIPT, setup.start_method)
    try:
        assert training.stdout is not None
        assert select.select([training.stdout], [], [], 120)[0], "the script did not start"
        assert training.stdout.readline() == "worker started\n"
    finally:
        os.killpg(training.pid, signal.SIGKILL)
        training.wait(30)
        assert training.stdout is not None and training.stdin is not None
        training.stdout.close()
        training.stdin.close()
    setup.strike()
    prefix = f"shmqueue-{training.pid}-"
    left = [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]
    assert not left, f"the killed start-up left {left} in /dev/shm"


_UNGUARDED_SCRIPT = """
import torch
import shmqueue as sq

# No `if __name__ == "__main__":` guard: each spawn worker runs this again while starting.
subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 48, 40, 32)), name=str(i)) for i in range(8)]
queue = sq.Queue(
    subjects, sq.UniformSampler(None, 8), max_length=8, patches_per_volume=4, num_workers=2,
    multiprocessing_context="spawn",
)
next(iter(queue))
"""


def spawn_script_without_main_guard(setup: Setup) -> None:
    """A training script without the ``__main__`` guard, with in-memory subjects (their tensors
    would fill the pipe that spawn's start-up writes to): a prompt error saying what to do."""
    script = setup.tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(_UNGUARDED_SCRIPT))
    setup.strike()
    try:
        result = subprocess.run(
            [sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=REPO
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError("the script hung at start-up") from error
    assert result.returncode != 0
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("shmqueue.errors.WorkerDiedError: Worker"), last_line
    assert "during start-up" in last_line and '`if __name__ == "__main__":`' in last_line


def too_many_in_memory_subjects(setup: Setup) -> None:
    """Hundreds of in-memory subjects under forkserver: each tensor would travel as a file
    descriptor, more than one message may carry: say so, and what to do."""
    subjects = [sq.Subject(t1=sq.ScalarImage(torch.rand(1, 4, 4, 4))) for _ in range(300)]
    queue = sq.Queue(
        subjects,
        sq.UniformSampler(None, 2),
        max_length=2,
        patches_per_volume=1,
        num_workers=1,
        multiprocessing_context=setup.start_method,
    )
    setup.queues.append(queue)
    setup.strike()
    next(iter(queue))


# close() under duress (defect 11) -----------------------------------------------------------------


def close_with_sigchld_ignored(setup: Setup) -> None:
    """With SIGCHLD ignored the kernel reaps workers itself: close() still releases everything
    (the no_leaks check counts the ring and the pipes) and raises nothing."""
    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        queue = setup.queue()
        next(iter(queue))
        pids = _pids(queue)
        setup.strike()
        queue.close()
        queue.close()
    finally:
        signal.signal(signal.SIGCHLD, previous)
    from test_faults import assert_gone

    assert_gone(pids)


def close_from_a_signal_handler(setup: Setup) -> None:
    """A signal handler calls close() while the training loop waits inside the engine: the
    loop ends with QueueClosedError, and the stuck worker is stopped."""
    queue = setup.queue(transform=SignalTrainingOn("sub-01"))
    previous = signal.signal(signal.SIGUSR1, lambda *_: queue.close())
    try:
        setup.strike()
        for _ in queue:
            pass
    finally:
        signal.signal(signal.SIGUSR1, previous)


# Stuck workers and start-up failures (weak messages) ----------------------------------------------

TIMEOUT = 2.0


def worker_stuck(setup: Setup) -> None:
    """A worker hangs on a subject and the queue has a timeout: the error names the subject."""
    queue = setup.queue(transform=HangOn("sub-01"), timeout=TIMEOUT)
    setup.strike()
    for _ in queue:
        pass


def start_up_cannot_unpickle(setup: Setup) -> None:
    """The transform's module is gone by the time spawn workers import it (as a class defined
    in ``__main__`` or a notebook): the worker's own error, and what to do."""
    module = setup.tmp_path / "vanishing_transforms.py"
    module.write_text(
        "import shmqueue as sq\n\n\nclass Identity(sq.Transform):\n"
        "    def apply(self, subject, generator):\n        return subject\n"
    )
    sys.path.insert(0, str(setup.tmp_path))
    try:
        import vanishing_transforms  # type: ignore[import-not-found]

        queue = setup.queue(transform=vanishing_transforms.Identity())
        module.unlink()
        setup.strike()
        next(iter(queue))
    finally:
        sys.path.remove(str(setup.tmp_path))
        sys.modules.pop("vanishing_transforms", None)
