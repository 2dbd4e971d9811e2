"""Volume-sized buffers that a process reuses instead of asking the OS for fresh pages.

A worker makes the same few volumes for every subject: the inflated file, the loaded image,
then one per transform step (Flip's copy, Noise's sum). Each is too large for the heap, so the
allocator maps fresh pages for it and unmaps them when it is freed, and the kernel zeroes and
faults in every page again: about 0.7 ms per MiB on the reference machine, 60 ms per subject for
a 182x218x182 volume that is loaded, flipped and noised, as much as the work itself.
:func:`empty_volume` hands out a buffer that the process allocated before and that nothing
references any more, when one of about the same size exists.

A buffer is free when only the pool references it: a tensor made from it holds a reference to it
(through ``torch.from_numpy``), and so does every view of that tensor, so a buffer is never
handed out while any tensor can still read it. A free buffer serves requests of its size or
slightly smaller; on a miss, free buffers that served none of the last few requests are released,
so the pool holds about the volumes that were alive together while processing one subject.
Only worker processes pool (:func:`use_volume_pool`). Buffers are anonymous memory maps, not heap
blocks: a long-lived block in the middle of the heap would keep the heap from returning the
memory around it to the OS.
"""

from __future__ import annotations

import math
import mmap
import sys
from dataclasses import dataclass

import numpy as np
import torch

from .dtypes import numpy_dtype

SMALLEST_POOLED = 1 * 2**20
"""Tensors smaller than this come from torch's allocator: the heap reuses them already."""

ROOM = 1.25
"""A free buffer serves a request of at least ``1 / ROOM`` of its size (volumes of similar
shapes share buffers)."""

KEPT_REQUESTS = 8
"""A free buffer that served none of the last this many requests is released on the next miss:
a worker makes a handful of pooled volumes per subject."""


@dataclass
class _Entry:
    buffer: np.ndarray
    last_request: int

    @property
    def free(self) -> bool:
        # Referenced by this entry and by getrefcount's argument only: no tensor, view or array
        # made from it is alive.
        return sys.getrefcount(self.buffer) == 2


class VolumePool:
    """This process's reusable volume buffers (see the module docstring)."""

    def __init__(self) -> None:
        self._entries: list[_Entry] = []
        self._requests = 0

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor, in a reused buffer when one of its size is free."""
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if nbytes < SMALLEST_POOLED:
            return torch.empty(shape, dtype=dtype)
        try:
            numpy_type = numpy_dtype(dtype)
        except TypeError:  # numpy has no bfloat16
            return torch.empty(shape, dtype=dtype)
        self._requests += 1
        fitting = [
            entry
            for entry in self._entries
            if nbytes <= entry.buffer.nbytes <= nbytes * ROOM and entry.free
        ]
        if fitting:
            entry = min(fitting, key=lambda entry: entry.buffer.nbytes)
        else:
            stale = self._requests - KEPT_REQUESTS
            self._entries = [e for e in self._entries if e.last_request > stale or not e.free]
            entry = _Entry(np.frombuffer(_private_map(nbytes), np.uint8), 0)
            self._entries.append(entry)
        entry.last_request = self._requests
        return torch.from_numpy(entry.buffer[:nbytes].view(numpy_type).reshape(shape))

    @property
    def pooled_bytes(self) -> int:
        """Bytes of all buffers the pool holds, in use or free."""
        return sum(entry.buffer.nbytes for entry in self._entries)


def _private_map(nbytes: int) -> mmap.mmap:
    """Anonymous private memory: ``mmap.mmap(-1, n)`` alone maps shared memory, which a forked
    child would share with its parent and which counts as shmem, not as the process's own."""
    return mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)


_POOL: VolumePool | None = None


def use_volume_pool() -> None:
    """Make this process reuse volume buffers from now on (workers call it when they start).

    Only shmqueue's worker processes pool: they live for the queue's lifetime and process one
    subject after another. The training process does not, so a volume it loads once (the
    in-process path, or a user's own look at a subject) is given back to the OS when freed.
    """
    global _POOL
    _POOL = VolumePool()


def empty_volume(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous tensor, from this process's pool if it uses one."""
    if _POOL is None:
        return torch.empty(shape, dtype=dtype)
    return _POOL.empty(shape, dtype)
