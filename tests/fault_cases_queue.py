"""Fault cases of the queue's own checks, for the fault table of ``test_faults.py``.

Each case gets a :class:`Setup` (six NIfTI subjects 'sub-00'..'sub-05', the start method, queues
of ``max_length=8``, ``patches_per_volume=4``, subjects in order), marks the moment it provokes
the fault with ``setup.strike()`` and lets the expected exception propagate; the table's row
gives its type, its message and the time allowed to detect it.

* a transform that changes the channels of one subject's image (issue 12, defect 1);
* a second iterator started over a queue while the first is live (defect 4);
* a second queue's ring that no longer fits when its engine starts (defect 10).
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from unittest import mock

import psutil
import torch

import shmqueue as sq
from shmqueue.machine import MemoryCapacity
from shmqueue.memory import budget

if TYPE_CHECKING:
    from test_faults import Setup


class DoubleChannelsOf(sq.Transform):
    """Gives one subject's T1 a second channel, which its one-channel ring slot cannot hold.

    At module level so that spawn and forkserver workers can unpickle it.
    """

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        if subject["name"] == self.name:
            data = subject.t1.data
            subject["t1"] = subject.t1.with_data(torch.cat([data, data]))
        return subject


def _children() -> set[int]:
    return {child.pid for child in psutil.Process().children(recursive=True)}


def _doubling_sub_02() -> sq.Compose:
    return sq.Compose([sq.Flip(axes=(0,)), DoubleChannelsOf("sub-02")])


def transform_changes_channels(setup: Setup) -> None:
    """A transform doubles sub-02's channels in a worker: refused, never broadcast or dropped."""
    with setup.queue(transform=_doubling_sub_02()) as queue:
        patches = iter(queue)
        next(patches)  # the engine runs; sub-02 is dispatched once the first slots come free
        setup.strike()
        for _ in patches:
            pass


def check_transform_changes_channels(error: BaseException, setup: Setup) -> None:
    """The worker's TransformOutputError is the cause, word for word what num_workers=0 says."""
    assert isinstance(error.__cause__, sq.TransformOutputError)
    with setup.queue(num_workers=0, transform=_doubling_sub_02()) as in_process:
        try:
            list(in_process)
        except sq.SubjectProcessingError as in_process_error:
            assert str(in_process_error.__cause__) == str(error.__cause__)
        else:
            raise AssertionError("the in-process path accepted what the workers refused")


def second_iterator_started(setup: Setup) -> None:
    """A patch iterator started beside a loader: the loader's next step raises, no split epoch."""
    queue = setup.queue()  # left open for the check; the table closes every queue
    batches = iter(sq.SubjectsLoader(queue, batch_size=4))
    next(batches)
    patches = iter(queue)
    next(patches)  # starts epoch 1
    setup.strike()
    next(batches)


def check_second_iterator_started(error: BaseException, setup: Setup) -> None:
    """The queue is left whole: the next epoch is complete."""
    queue = setup.queues[0]
    assert sum(1 for _ in queue) == len(queue)


def second_ring_does_not_fit(setup: Setup) -> None:
    """A validation queue admitted beside a training queue that has since taken the memory: its
    engine is refused before its ring or any worker exists."""
    training = setup.queue()
    validation = setup.queue()  # admitted: memory is still free
    next(iter(training))  # training's ring and workers now hold memory
    workers = _children()
    # What the training queue left: room for the validation ring, not for its workers.
    short = MemoryCapacity(2 * validation.layout.ring_bytes, None, "as the training queue left it")
    with mock.patch.object(budget, "memory_capacity", return_value=short):
        setup.strike()
        try:
            next(iter(validation))
        finally:
            assert _children() == workers, "a worker was started for a ring that does not fit"
