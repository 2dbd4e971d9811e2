"""The volume pool: buffers are reused only when nothing can read them any more."""

from __future__ import annotations

import numpy as np
import torch

from shmqueue.volumes import KEPT_REQUESTS, SMALLEST_POOLED, VolumePool

SHAPE = (1, 64, 64, 64)  # 1 MiB of float32: pooled


def address(tensor: torch.Tensor) -> int:
    return int(tensor.data_ptr())


def test_a_freed_volume_is_reused() -> None:
    pool = VolumePool()
    first = pool.empty(SHAPE, torch.float32)
    where = address(first)
    del first
    second = pool.empty(SHAPE, torch.float32)
    assert address(second) == where
    assert pool.pooled_bytes == second.nbytes


def test_a_volume_is_not_reused_while_a_tensor_or_view_can_read_it() -> None:
    pool = VolumePool()
    volume = pool.empty(SHAPE, torch.float32)
    volume.fill_(7.0)
    view = volume[0, 10:20]
    array = volume.numpy()
    del volume
    other = pool.empty(SHAPE, torch.float32)
    other.fill_(-1.0)
    assert bool((view == 7.0).all())
    assert float(array[0, 0, 0, 0]) == 7.0
    del view, other
    third = pool.empty(SHAPE, torch.float32)  # the first buffer is still read through `array`
    third.fill_(-2.0)
    assert float(array[0, 0, 0, 0]) == 7.0


def test_same_bytes_other_dtype_reuses_and_has_the_right_dtype() -> None:
    pool = VolumePool()
    where = address(pool.empty(SHAPE, torch.float32))
    labels = pool.empty((1, 128, 64, 64), torch.int16)  # 1 MiB too
    assert labels.dtype == torch.int16 and labels.shape == (1, 128, 64, 64)
    assert address(labels) == where
    assert labels.is_contiguous()


def test_a_miss_releases_buffers_unused_for_a_while() -> None:
    pool = VolumePool()
    mib = SHAPE
    kept = pool.empty(mib, torch.float32)  # alive throughout
    pool.empty((2, 64, 64, 64), torch.float32)  # freed at once, then never asked for again
    for _ in range(KEPT_REQUESTS):
        pool.empty(mib, torch.float32)  # freed at once: one new buffer, then reused
    assert pool.pooled_bytes == (1 + 2 + 1) * kept.nbytes
    pool.empty((3, 64, 64, 64), torch.float32)  # a miss: the stale 2 MiB buffer goes
    assert pool.pooled_bytes == (1 + 1 + 3) * kept.nbytes


def test_a_slightly_smaller_request_reuses_a_free_buffer() -> None:
    pool = VolumePool()
    where = address(pool.empty((2, 64, 64, 64), torch.float32))
    smaller = pool.empty((2, 64, 64, 56), torch.float32)  # 7/8 of the buffer
    assert address(smaller) == where and smaller.shape == (2, 64, 64, 56)
    del smaller
    half = pool.empty((1, 64, 64, 64), torch.float32)  # a buffer of its own
    assert address(half) != where


def test_small_and_unpooled_dtypes_come_from_torch() -> None:
    pool = VolumePool()
    small = pool.empty((SMALLEST_POOLED // 8,), torch.float32)
    brain_float = pool.empty(SHAPE, torch.bfloat16)
    assert small.numel() == SMALLEST_POOLED // 8 and brain_float.dtype == torch.bfloat16
    assert pool.pooled_bytes == 0


def test_pooled_volumes_hold_what_is_written() -> None:
    pool = VolumePool()
    values = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    for _ in range(3):
        volume = pool.empty(SHAPE, torch.float32)
        volume.copy_(torch.from_numpy(values))
        assert np.array_equal(volume.numpy(), values)
        del volume
