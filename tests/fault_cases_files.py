"""Fault cases about image files, for the table in test_faults.py (issue 12, defects 8 and 9).

Each case provokes its fault, calling ``setup.strike()`` at that moment, and lets the exception
the training process sees propagate; its row in ``FAULTS`` states the type, the message and the
bounds, and its ``check_*`` function what the message alone cannot.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING
from unittest import mock

import nibabel as nib
import numpy as np

import shmqueue as sq
from shmqueue import image as image_module
from shmqueue.errors import RemoteTraceback

if TYPE_CHECKING:
    from test_faults import Setup

STRUCK = 4
"""The subject the fault strikes: past the two that fill ``max_length`` (8 patches, 4 each), so
that the prefetch of the next epoch has not loaded it before the fault is provoked."""

OUT_OF_MEMORY = "out-of-memory"
"""A file of this name beside a :class:`StarvedImage` makes its loads run out of memory."""


class StarvedImage(sq.ScalarImage):
    """A scalar image whose loads run out of memory where the volume to inflate into is
    allocated, once a file named :data:`OUT_OF_MEMORY` exists beside it.

    At module level so that spawn and forkserver workers can unpickle it; the file, not an
    attribute, says when, so that a case can starve workers that are already running. The
    allocation fails as the volume pool's mmap does beyond ``ulimit -v`` (ENOMEM); the patch
    lasts for one load in the loading process, so nothing else sees it.
    """

    def load(self) -> None:
        assert self.path is not None
        if not (self.path.parent / OUT_OF_MEMORY).exists():
            super().load()
            return
        enomem = OSError(errno.ENOMEM, "Cannot allocate memory")
        with mock.patch.object(image_module, "empty_volume", side_effect=enomem):
            super().load()


def file_changed_between_epochs(setup: Setup) -> None:
    """A subject's T1 is re-exported with its axes reordered between two epochs."""
    queue = setup.queue()
    assert sum(1 for _ in queue) == len(queue)
    t1 = setup.subjects[STRUCK].t1
    voxels = nib.Nifti1Image.from_filename(t1.path).get_fdata().astype(np.int16)
    nib.save(nib.Nifti1Image(voxels.T, t1.affine), t1.path)  # (40, 36, 32) -> (32, 36, 40)
    setup.strike()
    for _ in queue:
        pass


def check_file_changed(error: BaseException, setup: Setup) -> None:
    original = error.__cause__
    assert isinstance(original, sq.ImageChangedError)
    assert str(setup.subjects[STRUCK].t1.path) in str(original)
    assert "shape (40, 36, 32) -> (32, 36, 40)" in str(original)
    assert "Rebuild the subjects and the queue" in str(original)


def out_of_memory_while_inflating(setup: Setup) -> None:
    """A running worker runs out of memory inflating a subject's T1, in the second epoch."""
    subject = setup.subjects[STRUCK]
    subject["t1"] = StarvedImage(subject.t1.path)
    queue = setup.queue()
    assert sum(1 for _ in queue) == len(queue)
    (subject.t1.path.parent / OUT_OF_MEMORY).touch()
    setup.strike()
    for _ in queue:
        pass


def check_out_of_memory(error: BaseException, setup: Setup) -> None:
    assert "corrupt" not in str(error)
    original = error.__cause__
    assert isinstance(original, sq.ImageMemoryError)
    for figure in ("it needs 270.0 KiB", "RAM available", "ulimit -v", "Lower num_workers"):
        assert figure in str(original)
    remote = original.__cause__
    assert isinstance(remote, RemoteTraceback)
    assert "OSError: [Errno 12] Cannot allocate memory" in remote.traceback_text
