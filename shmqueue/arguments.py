"""Checks of the public entry points' arguments, worded once.

A leaf module: it imports nothing from shmqueue, so any module may use it.
"""

from __future__ import annotations


def check_count(name: str, value: int, minimum: int = 1) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; else a ValueError naming
    ``name``.

    Raises:
        ValueError: e.g. ``max_length must be a positive integer, got 0``.

    Example:
        >>> check_count("max_length", 300), check_count("num_workers", 0, minimum=0)
        (300, 0)
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {wanted}, got {value!r}")
    return value
