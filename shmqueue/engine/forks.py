"""What a forked copy of the training process must not hold of the engine.

Only the process that built an engine may act on it. A fork of the training process (a plain
``os.fork()``, a ``multiprocessing.Manager()``, a logging ``Process`` started with fork, a torch
``DataLoader`` worker, or a later queue's own fork-started workers) inherits every descriptor and
Python object of the engines alive at that moment. Left alone, such a child keeps the workers'
lifeline open after the training process dies (so orphans live on), keeps a closed queue's ring
allocated, and, when it exits, runs finalizers that send shutdown down the parent's pipes or
signal the parent's workers.

So every engine object that owns descriptors registers here, and in any forked child
:meth:`ForkDetachable.detach_in_child` closes the child's copies and marks the object detached:
from then on it does nothing in that process. The ring's mapping is unmapped in the child by
the same detachment (the coordinator's resources close their copy of the segment).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkDetachable(Protocol):
    """An engine object that owns descriptors of the training process."""

    def detach_in_child(self) -> None:
        """Close this process's copies of the descriptors; act on nothing any more."""
        ...


_registered: weakref.WeakSet[ForkDetachable] = weakref.WeakSet()


def register(owner: ForkDetachable) -> None:
    """Detach ``owner`` in every process forked from this one while it is alive."""
    _registered.add(owner)


def unregister(owner: ForkDetachable) -> None:
    _registered.discard(owner)


def _detach_all_in_child() -> None:
    for owner in list(_registered):
        owner.detach_in_child()
    _registered.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_detach_all_in_child)
