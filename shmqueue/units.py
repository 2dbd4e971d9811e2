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


_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_bytes(size: int | str, name: str) -> int:
    """A size in bytes from an int or a text such as ``'50 GiB'``, ``'500M'``, ``'2 GB'``
    (every unit binary: 1 GB = 1 GiB, as in ``df -h``).

    Raises:
        ValueError: ``size`` is negative, or not a number with one of the units B, K, M, G, T;
            the message names ``name``.

    Example:
        >>> parse_bytes("1.5 KiB", "max_size"), parse_bytes(2048, "max_size")
        (1536, 2048)
    """
    if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
        return size
    text = str(size).strip().upper().removesuffix("IB").removesuffix("B")
    number, unit = text.rstrip("KMGT").strip(), text[len(text.rstrip("KMGT")) :]
    try:
        value = float(number)
    except ValueError:
        value = -1.0
    if value < 0 or unit not in _UNITS or isinstance(size, bool):
        raise ValueError(
            f"{name} must be a number of bytes or a size such as '50 GiB' or '500M', got {size!r}"
        )
    return int(value * _UNITS[unit])
