"""Torch dtypes as numpy sees them: the one map between the two.

A leaf module: it imports nothing from shmqueue, so any module may use it.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch


@functools.cache
def numpy_dtype(dtype: torch.dtype) -> np.dtype[Any]:
    """The numpy dtype whose items have ``dtype``'s bytes, asked of torch itself (cached).

    Raises:
        TypeError: numpy has no such dtype (``torch.bfloat16``, the float8 types).

    Example:
        >>> numpy_dtype(torch.float32), numpy_dtype(torch.int16)
        (dtype('float32'), dtype('int16'))
    """
    return torch.empty(0, dtype=dtype).numpy().dtype
