"""Sizes for people: the one byte formatter of messages, tables and reports.

A leaf module: it imports nothing from shmqueue, so any module may use it.
"""

from __future__ import annotations


def pretty_bytes(size: float) -> str:
    """``1536`` -> ``'1.5 KiB'``.

    Example:
        >>> pretty_bytes(1536), pretty_bytes(3 * 1024**3), pretty_bytes(12)
        ('1.5 KiB', '3.0 GiB', '12 B')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")
