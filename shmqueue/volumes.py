"""Volume-sized buffers that a process reuses instead of asking the OS for fresh pages.

A worker makes the same few volumes for every subject: the loaded image, then one per transform
step (Flip's copy, Noise's sum). Each is too large for the heap, so the allocator maps fresh pages
for it and unmaps them when it is freed, and the kernel zeroes and faults in every page again:
about 0.7 ms per MiB on the reference machine, 60 ms per subject for a 182x218x182 volume that is
loaded, flipped and noised, as much as the work itself. :func:`empty_volume` hands out a buffer
that the process allocated before and that nothing references any more, when one of the same
size exists.

A buffer is free when only the pool references it: a tensor made from it holds a reference to it
(through ``torch.from_numpy``), and so does every view of that tensor, so a buffer is never
handed out while any tensor can still read it. On a miss, free buffers of other sizes are
released, so the pool holds at most the volumes that were alive together, and one size's worth.
Buffers are anonymous memory maps, not heap blocks: a long-lived block in the middle of the heap
would keep the heap from returning the memory around it (patches, batches) to the OS.
"""

from __future__ import annotations

import math
import mmap
import sys

import numpy as np
import torch

SMALLEST_POOLED = 1 * 2**20
"""Tensors smaller than this come from torch's allocator: the heap reuses them already."""

_NUMPY_DTYPES: dict[torch.dtype, np.dtype[np.generic]] = {
    torch.float32: np.dtype(np.float32),
    torch.float64: np.dtype(np.float64),
    torch.float16: np.dtype(np.float16),
    torch.uint8: np.dtype(np.uint8),
    torch.int8: np.dtype(np.int8),
    torch.int16: np.dtype(np.int16),
    torch.int32: np.dtype(np.int32),
    torch.int64: np.dtype(np.int64),
    torch.bool: np.dtype(np.bool_),
}

_FREE_REFERENCES = 3  # the pool's list, the loop variable and getrefcount's argument


class VolumePool:
    """This process's reusable volume buffers (see the module docstring)."""

    def __init__(self) -> None:
        self._buffers: list[np.ndarray] = []

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """An uninitialised contiguous tensor, in a reused buffer when one of its size is free."""
        numpy_dtype = _NUMPY_DTYPES.get(dtype)
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        if numpy_dtype is None or nbytes < SMALLEST_POOLED:
            return torch.empty(shape, dtype=dtype)
        chosen = None
        for buffer in self._buffers:
            if buffer.nbytes == nbytes and sys.getrefcount(buffer) == _FREE_REFERENCES:
                chosen = buffer
                break
        if chosen is None:
            self._buffers = [
                buffer
                for buffer in self._buffers
                if sys.getrefcount(buffer) > _FREE_REFERENCES  # alive: keep track of it
            ]
            chosen = np.frombuffer(mmap.mmap(-1, nbytes), np.uint8)
            self._buffers.append(chosen)
        return torch.from_numpy(chosen.view(numpy_dtype).reshape(shape))

    @property
    def pooled_bytes(self) -> int:
        """Bytes of all buffers the pool holds, in use or free."""
        return sum(buffer.nbytes for buffer in self._buffers)


_POOL = VolumePool()


def empty_volume(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """:meth:`VolumePool.empty` of this process's pool."""
    return _POOL.empty(shape, dtype)
