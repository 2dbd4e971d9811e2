"""RingWatch: what the process's memory map says about a queue's shared-memory ring.

Contract 3 says the ring is allocated once, ``layout.ring_bytes`` large, and reused; contract 4
that no patch handed to the user points into it. Both are checked from the outside: the ring's
address comes from the queue's engine, its mapping (start and size) from ``/proc/self/maps``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..queue import Queue
from .report import Contract, QueueReport

_MAPS = Path("/proc/self/maps")


@dataclass(frozen=True)
class MemoryMapping:
    """One mapping of the process's address space: ``[start, stop)`` and what is mapped."""

    start: int
    stop: int
    source: str

    @property
    def size(self) -> int:
        return self.stop - self.start

    def overlaps(self, start: int, stop: int) -> bool:
        return start < self.stop and self.start < stop


def mapping_at(address: int) -> MemoryMapping | None:
    """The mapping containing ``address``, from ``/proc/self/maps`` (None where unavailable)."""
    if not _MAPS.exists():
        return None
    for line in _MAPS.read_text().splitlines():
        fields = line.split(maxsplit=5)
        low, high = (int(bound, 16) for bound in fields[0].split("-"))
        if low <= address < high:
            return MemoryMapping(low, high, fields[5] if len(fields) > 5 else "")
    return None


def storage_span(tensor: torch.Tensor) -> tuple[int, int]:
    """The ``[start, stop)`` addresses of a tensor's whole storage."""
    storage = tensor.untyped_storage()
    return storage.data_ptr(), storage.data_ptr() + storage.nbytes()


class RingWatch:
    """Follows one queue's ring across epochs: found once, the same size, never replaced."""

    def __init__(self, queue: Queue, report: QueueReport) -> None:
        self.queue = queue
        self.report = report
        self.mapping: MemoryMapping | None = None
        if queue.num_workers > 0 and not _MAPS.exists():
            report.notes.append(
                "the ring's mapping is not observable without /proc/self/maps: its size and"
                " reuse were not checked"
            )

    def observe(self, epoch: int) -> None:
        """Check the ring the queue's engine uses now (call while an epoch is running)."""
        engine = self.queue.engine
        if engine is None or not _MAPS.exists():
            return
        address = engine.ring.metadata.ctypes.data
        mapping = mapping_at(address)
        expected = self.queue.layout.ring_bytes
        if mapping is None or mapping.start != address or mapping.size != expected:
            found = "no mapping" if mapping is None else f"a mapping of {mapping.size} bytes"
            self.report.fail(
                Contract.BOUNDED_BUFFER,
                f"the ring at {address:#x} is {found}; the layout of {self.queue.max_length}"
                f" slots of {self.queue.layout.slot_bytes} bytes needs exactly {expected} bytes",
                epoch,
            )
        elif self.mapping is None:
            self.mapping = mapping
        elif mapping != self.mapping:
            self.report.fail(
                Contract.BOUNDED_BUFFER,
                f"the ring was reallocated: it is now {mapping.size} bytes at {mapping.start:#x},"
                f" before {self.mapping.size} bytes at {self.mapping.start:#x}; it must be"
                " allocated once and reused",
                epoch,
            )

    def holds(self, tensor: torch.Tensor) -> bool:
        """True if the tensor's storage lies (partly) in the ring."""
        return self.mapping is not None and self.mapping.overlaps(*storage_span(tensor))
