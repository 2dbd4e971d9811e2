"""Whole-volume statistics that do not depend on torch's thread count.

torch splits a reduction (a sum, a mean) among its threads, and the split changes the rounding:
the mean of one volume can differ in its last bit between a worker process (one thread) and the
training process (several), and so would every voxel normalised by it. Contract 2 (a patch is,
bit for bit, the in-process path's) needs the same statistics in both, so the transforms compute
theirs here: with numpy's pairwise summation in float64, which runs on one thread and always adds
in the same order (and is more accurate than a float32 sum over millions of voxels).
"""

from __future__ import annotations

import numpy as np
import torch


def mean(values: torch.Tensor) -> float:
    """The mean of all of ``values``.

    Example:
        >>> mean(torch.tensor([1.0, 2.0, 6.0]))
        3.0
    """
    return float(np.mean(_array(values), dtype=np.float64))


def mean_and_std(values: torch.Tensor) -> tuple[float, float]:
    """The mean and the standard deviation (unbiased, as ``torch.std``) of all of ``values``.

    Example:
        >>> mean_and_std(torch.tensor([1.0, 2.0, 3.0]))
        (2.0, 1.0)
    """
    array = _array(values)
    centre = np.mean(array, dtype=np.float64)
    if array.size < 2:
        return float(centre), float("nan")
    return float(centre), float(np.std(array, dtype=np.float64, ddof=1))


def channel_means(volume: torch.Tensor) -> torch.Tensor:
    """The mean of each channel of a ``(C, ...)`` volume, as float64 ``(C,)``.

    Example:
        >>> channel_means(torch.tensor([[1.0, 3.0], [0.0, 1.0]])).tolist()
        [2.0, 0.5]
    """
    flat = _array(volume).reshape(volume.shape[0], -1)
    return torch.from_numpy(np.mean(flat, axis=1, dtype=np.float64))


def _array(values: torch.Tensor) -> np.ndarray:
    """``values`` as a numpy array, without a copy where torch and numpy share the dtype."""
    if values.dtype in (torch.bfloat16, torch.float16):
        values = values.to(torch.float32)
    return values.detach().numpy()
