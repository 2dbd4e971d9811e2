"""The ring: one shared-memory allocation of ``max_length`` patch slots, made once and reused.

Two backends give a shared file that workers receive as a file descriptor (:class:`Segment` for
the creator, a picklable :class:`SegmentHandle` per worker whose ``open()`` maps it):

* ``memfd`` (Linux): an anonymous ``memfd_create`` file. Nothing has a name, so nothing can leak:
  the kernel frees it when the last mapping goes, also when every process is SIGKILLed. It is not
  bounded by /dev/shm's size (Docker's 64 MB).
* ``named``: a ``multiprocessing.shared_memory`` segment in /dev/shm, for platforms without
  memfd, unlinked right after it is opened: from then on it is as anonymous as a memfd, so a
  process group killed at any moment (also while workers start) leaves nothing in /dev/shm.

Both reserve their space with ``posix_fallocate`` at construction, so a full tmpfs or an
exhausted memory gives :class:`RingAllocationError` now instead of a SIGBUS on a later write.

:class:`RingView` gives typed views: a ``(max_length, C, X, Y, Z)`` tensor per image and the
``(max_length, METADATA_FIELDS)`` int64 metadata. Views never leave the engine: the consumer copies
out of a slot before releasing it.
"""

from __future__ import annotations

import itertools
import mmap
import os
import secrets
import shutil
from multiprocessing import reduction, shared_memory
from typing import Any

import numpy as np
import torch

from ..dtypes import numpy_dtype
from ..errors import RingAllocationError
from ..units import pretty_bytes
from .backends import resolve_backend
from .layout import METADATA_FIELDS, SlotLayout


def _reserve(fd: int, size: int, what: str, advice: str) -> None:
    if not hasattr(os, "posix_fallocate"):
        os.ftruncate(fd, size)
        return
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        raise RingAllocationError(
            f"Cannot reserve the {pretty_bytes(size)} ring of patch slots in {what}:"
            f" {os.strerror(error.errno or 0)}. {advice}"
        ) from error


class SegmentHandle:
    """What a worker receives: its own descriptor of the ring's shared file, and the size.

    The creator makes one handle per worker (a duplicate descriptor) and closes it once the
    worker has started; the worker maps the ring and closes its copy (:meth:`open`). A handle
    pickles for spawn and forkserver by duplicating the descriptor into the child, and a forked
    worker inherits it: either way no process keeps a descriptor it does not need.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_handle, (reduction.DupFd(self.fd), self.size))

    def open(self) -> mmap.mmap:
        """Map the ring and close the descriptor (the mapping keeps the memory)."""
        try:
            return mmap.mmap(self.fd, self.size)
        finally:
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _rebuild_handle(duplicate: Any, size: int) -> SegmentHandle:
    return SegmentHandle(duplicate.detach(), size)


class Segment:
    """The creator's side of the ring: a reserved shared file and this process's mapping.

    :meth:`close` gives the memory back (safe to call twice). A forked copy of the creator drops
    its inherited descriptor and mapping (the coordinator's resources call :meth:`close` there,
    see :mod:`shmqueue.engine.forks`), so no later fork, a later queue's workers included, keeps
    a closed ring allocated.
    """

    def __init__(self, fd: int, size: int, what: str, advice: str) -> None:
        self.fd = fd
        self.size = size
        try:
            _reserve(fd, size, what, advice)
            self.buffer: mmap.mmap = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise

    def handle(self) -> SegmentHandle:
        """A handle for one worker, with a descriptor of its own (see :class:`SegmentHandle`)."""
        return SegmentHandle(os.dup(self.fd), self.size)

    def seal(self) -> None:
        """Every worker has mapped the ring: this process no longer needs its descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        self.seal()
        try:
            self.buffer.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes with it


_segment_numbers = itertools.count()


def _memfd_segment(size: int) -> Segment:
    """An anonymous memfd: nothing has a name, so nothing can leak."""
    name = f"shmqueue-ring-{os.getpid()}-{next(_segment_numbers)}"
    return Segment(
        os.memfd_create(name, os.MFD_CLOEXEC),
        size,
        "memory (memfd)",
        "Free memory, or lower max_length, the patch size or the number of images.",
    )


def _named_segment(size: int) -> Segment:
    """A /dev/shm segment unlinked as soon as it is opened, so a killed process group (even
    during the workers' start-up) leaves nothing behind; workers get its descriptor."""
    name = f"shmqueue-{os.getpid()}-{secrets.token_hex(4)}"
    created = shared_memory.SharedMemory(name=name, create=True, size=size)
    try:
        fd = os.dup(created._fd)  # type: ignore[attr-defined]
    finally:
        created.close()
        created.unlink()
    free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
    return Segment(
        fd,
        size,
        f"/dev/shm ({pretty_bytes(free)} free)",
        "In Docker, raise the limit with --shm-size (e.g. --shm-size=8g); or use"
        " backend='memfd' (the default on Linux), which /dev/shm's size does not bound;"
        " or lower max_length or the patch size.",
    )


def create_segment(backend: str, size: int) -> Segment:
    """Allocate and reserve ``size`` bytes with the resolved ``backend``."""
    if resolve_backend(backend) == "memfd":
        return _memfd_segment(size)
    return _named_segment(size)


class RingView:
    """Typed views over a mapped ring: patch tensors per image and the slot metadata."""

    def __init__(self, buffer: Any, layout: SlotLayout) -> None:
        self.layout = layout
        base = np.frombuffer(buffer, dtype=np.uint8)
        self.metadata = (
            base[: layout.max_length * METADATA_FIELDS * 8]
            .view(np.int64)
            .reshape(layout.max_length, METADATA_FIELDS)
        )
        self.patches: dict[str, torch.Tensor] = {}
        for field in layout.fields:
            start = layout.metadata_bytes + field.offset
            flat = base[start:].view(numpy_dtype(field.dtype))
            shape = (layout.max_length, *layout.patch_shape(field))
            itemsize = field.dtype.itemsize
            inner = np.empty(shape[1:], dtype=np.uint8).strides  # C-order, in elements
            strides = (layout.slot_bytes, *(stride * itemsize for stride in inner))
            view = np.lib.stride_tricks.as_strided(flat, shape=shape, strides=strides)
            self.patches[field.name] = torch.from_numpy(view)

    def release(self) -> None:
        """Drop every view so the mapping can close."""
        self.patches.clear()
        del self.metadata
