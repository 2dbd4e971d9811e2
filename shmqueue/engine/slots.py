"""SlotTable: who owns each slot of the ring, enforced (contract 4 of DESIGN.md).

Every slot is owned by exactly one party::

    FREE --reserve--> WORKER --fill--> READY --claim--> CONSUMER --release--> FREE
                        |                 |
                        +--abandon--------+--discard--> FREE   (stale epoch, failed task)

Each transition checks the slot's current state and raises :class:`SlotStateError` (an engine
bug, never user error) otherwise, so no slot is lost or read twice. Pure: no processes, no memory;
hypothesis drives it as a state machine.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum


class SlotState(Enum):
    FREE = "free"
    WORKER = "worker"
    READY = "ready"
    CONSUMER = "consumer"


class SlotStateError(RuntimeError):
    """A slot transition from the wrong state: a bug in the engine."""


class SlotTable:
    """The state of ``capacity`` slots, with the free ones available in O(1)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._states = [SlotState.FREE] * capacity
        self._free = list(range(capacity - 1, -1, -1))
        self._counts = {state: 0 for state in SlotState}
        self._counts[SlotState.FREE] = capacity

    def state(self, slot: int) -> SlotState:
        return self._states[slot]

    def count(self, state: SlotState) -> int:
        return self._counts[state]

    @property
    def free_count(self) -> int:
        return self._counts[SlotState.FREE]

    def reserve(self, count: int) -> list[int]:
        """Hand ``count`` free slots to a worker."""
        if count > len(self._free):
            raise SlotStateError(f"asked for {count} slots, {len(self._free)} are free")
        return self._move_all(
            [self._free.pop() for _ in range(count)], SlotState.FREE, SlotState.WORKER
        )

    def fill(self, slots: Iterable[int]) -> None:
        """The worker has written these slots."""
        self._move_all(slots, SlotState.WORKER, SlotState.READY)

    def claim(self, slot: int) -> None:
        """The consumer claims this slot to read it, until it releases it."""
        self._move_all((slot,), SlotState.READY, SlotState.CONSUMER)

    def release(self, slots: Iterable[int]) -> None:
        """The consumer is done with these slots."""
        self._free.extend(self._move_all(slots, SlotState.CONSUMER, SlotState.FREE))

    def abandon(self, slots: Iterable[int]) -> None:
        """A worker's reserved slots are not needed (stale or failed task)."""
        self._free.extend(self._move_all(slots, SlotState.WORKER, SlotState.FREE))

    def discard(self, slots: Iterable[int]) -> None:
        """Ready slots of a stale epoch go back unread."""
        self._free.extend(self._move_all(slots, SlotState.READY, SlotState.FREE))

    def _move_all(self, slots: Iterable[int], expected: SlotState, new: SlotState) -> list[int]:
        """Move every slot from ``expected`` to ``new``, or (if any cannot) none of them.

        All or nothing, so that after a :class:`SlotStateError` the table still describes the
        ring exactly and every slot is accounted for.
        """
        moving = list(slots)
        for slot in moving:
            current = self._states[slot]
            if current is not expected:
                raise SlotStateError(
                    f"slot {slot} is {current.value}, expected {expected.value} to become"
                    f" {new.value}"
                )
        if len(set(moving)) != len(moving):
            raise SlotStateError(f"slots {moving} name a slot twice (to become {new.value})")
        for slot in moving:
            self._states[slot] = new
        self._counts[expected] -= len(moving)
        self._counts[new] += len(moving)
        return moving
