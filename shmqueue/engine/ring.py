"""The ring: one shared-memory allocation of ``max_length`` patch slots, made once and reused.

Two backends behind one interface (:class:`Segment` for the creator, a picklable handle whose
``open()`` maps it in a worker):

* ``memfd`` (Linux): an anonymous ``memfd_create`` file handed to workers as a file descriptor.
  Nothing has a name, so nothing can leak: the kernel frees it when the last mapping goes, also
  when every process is SIGKILLed. It is not bounded by /dev/shm's size (Docker's 64 MB).
* ``named``: ``multiprocessing.shared_memory`` in /dev/shm, for platforms without memfd. The
  creator unlinks the name as soon as every worker has mapped it (:meth:`Segment.seal`), which
  closes the window in which a killed process group could leave it behind.

Both reserve their space with ``posix_fallocate`` at construction, so a full tmpfs or an
exhausted memory gives :class:`RingAllocationError` now instead of a SIGBUS on a later write.

:class:`RingView` gives typed views: a ``(max_length, C, X, Y, Z)`` tensor per image and the
``(max_length, METADATA_FIELDS)`` int64 metadata. Views never leave the engine: the consumer copies
out of a slot before releasing it.
"""

from __future__ import annotations

import mmap
import os
import secrets
import shutil
from multiprocessing import reduction, resource_tracker, shared_memory
from typing import Any, Protocol

import numpy as np
import torch

from ..errors import RingAllocationError
from .layout import METADATA_FIELDS, SlotLayout

BACKENDS = ("auto", "memfd", "named")


def pretty_bytes(size: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``memfd`` where the OS has it, else ``named``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "memfd" if hasattr(os, "memfd_create") else "named"
    if backend == "memfd" and not hasattr(os, "memfd_create"):
        raise ValueError("backend='memfd' needs Linux's memfd_create; use backend='named'")
    return backend


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


class SegmentHandle(Protocol):
    """What a worker receives: enough to map the ring itself."""

    def open(self) -> Any:
        """Map the segment; returns an object exporting the buffer (mmap or memoryview)."""
        ...


class Segment(Protocol):
    """The creator's side of the ring's memory."""

    buffer: Any

    def handle(self) -> SegmentHandle: ...

    def seal(self) -> None:
        """Every worker has mapped the segment: nobody else needs to find it."""
        ...

    def close(self) -> None: ...


class MemfdHandle:
    """A memfd's descriptor; pickles for spawn/forkserver children by duplicating the fd."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_memfd_handle, (reduction.DupFd(self.fd), self.size))

    def open(self) -> mmap.mmap:
        return mmap.mmap(self.fd, self.size)


def _rebuild_memfd_handle(duplicate: Any, size: int) -> MemfdHandle:
    return MemfdHandle(duplicate.detach(), size)


class MemfdSegment:
    """An anonymous memfd of ``size`` bytes, reserved up front."""

    def __init__(self, size: int) -> None:
        self.fd = os.memfd_create("shmqueue-ring", os.MFD_CLOEXEC)
        try:
            _reserve(
                self.fd,
                size,
                "memory (memfd)",
                "Free memory, or lower max_length, the patch size or the number of images.",
            )
            self.buffer: mmap.mmap = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size

    def handle(self) -> MemfdHandle:
        return MemfdHandle(self.fd, self.size)

    def seal(self) -> None:
        """Workers have mapped it; keep the fd only while workers may still need it."""

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        try:
            self.buffer.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes with it


class NamedHandle:
    """The name of a /dev/shm segment."""

    def __init__(self, name: str) -> None:
        self.name = name

    def open(self) -> memoryview:
        # All processes of a pool share the creator's resource tracker (it starts before the
        # workers), so this attach's registration is the creator's own and unlinks nothing.
        self._segment = shared_memory.SharedMemory(name=self.name)
        assert self._segment.buf is not None
        return self._segment.buf


class NamedSegment:
    """A ``multiprocessing.shared_memory`` segment, reserved up front, unlinked once mapped."""

    def __init__(self, size: int) -> None:
        name = f"shmqueue-{os.getpid()}-{secrets.token_hex(4)}"
        self._segment = shared_memory.SharedMemory(name=name, create=True, size=size)
        self._linked = True
        try:
            free = shutil.disk_usage("/dev/shm").free if os.path.isdir("/dev/shm") else 0
            _reserve(
                self._segment._fd,  # type: ignore[attr-defined]
                size,
                f"/dev/shm ({pretty_bytes(free)} free)",
                "In Docker, raise the limit with --shm-size (e.g. --shm-size=8g); or use"
                " backend='memfd' (the default on Linux), which /dev/shm's size does not bound;"
                " or lower max_length or the patch size.",
            )
        except BaseException:
            self._segment.close()
            self.seal()
            raise
        assert self._segment.buf is not None
        self.buffer: memoryview = self._segment.buf
        self.size = size

    def handle(self) -> NamedHandle:
        return NamedHandle(self._segment.name)

    def seal(self) -> None:
        if self._linked:
            self._linked = False
            try:
                self._segment.unlink()
            except FileNotFoundError:
                # Someone removed the name behind our back (a /dev/shm cleaner): it is gone
                # either way, and close() must still release the mapping and the descriptor.
                resource_tracker.unregister(
                    self._segment._name,  # type: ignore[attr-defined]
                    "shared_memory",
                )

    def close(self) -> None:
        """Unlink (if not yet sealed) and unmap; safe to call twice, like the memfd backend."""
        self.seal()
        if hasattr(self, "buffer"):
            del self.buffer  # our reference only: the segment releases the view itself
        try:
            self._segment.close()
        except BufferError:
            pass  # a view is still alive somewhere; the mapping goes with it


def create_segment(backend: str, size: int) -> Segment:
    """Allocate and reserve ``size`` bytes with the resolved ``backend``."""
    if resolve_backend(backend) == "memfd":
        return MemfdSegment(size)
    return NamedSegment(size)


def _numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    return torch.empty(0, dtype=dtype).numpy().dtype


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
            flat = base[start:].view(_numpy_dtype(field.dtype))
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
