"""The platform's choices for the engine: where the ring's memory comes from, how workers start.

Both are user arguments of :class:`~shmqueue.Queue` and :func:`~shmqueue.estimate_memory`
resolved here once, so that the queue, the ring and the estimator agree on what ``"auto"`` or
``None`` means on this platform. Imports nothing from shmqueue.
"""

from __future__ import annotations

import multiprocessing
import os
from multiprocessing.context import BaseContext

BACKENDS = ("auto", "memfd", "named")
"""The ring's backends: ``memfd`` (Linux, nothing named to leak), ``named`` (/dev/shm), or
``auto``, the first of them this platform has."""


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``memfd`` where the OS has it, else ``named``.

    Raises:
        ValueError: ``backend`` is not one of :data:`BACKENDS`, or is ``memfd`` where the OS
            lacks ``memfd_create``.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "memfd" if hasattr(os, "memfd_create") else "named"
    if backend == "memfd" and not hasattr(os, "memfd_create"):
        raise ValueError("backend='memfd' needs Linux's memfd_create; use backend='named'")
    return backend


def resolve_context(context: str | BaseContext | None) -> BaseContext:
    """A start method's name (``"fork"``, ``"spawn"``, ``"forkserver"``), a context, or None
    for the platform's default -> the multiprocessing context that starts workers.

    Example:
        >>> resolve_context("spawn").get_start_method()
        'spawn'
    """
    if context is None or isinstance(context, str):
        return multiprocessing.get_context(context)
    return context
