"""SlotTable as a state machine: hypothesis drives every transition, legal or not, against a model.

Contract 4 of DESIGN.md: a slot is owned by exactly one party at a time, and no slot is lost or
read twice. The model is a plain ``slot -> state`` dict; after every step the table must agree
with it, its counts must add up to the capacity, and a transition from the wrong state must raise
:class:`SlotStateError` and change nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from shmqueue.engine.slots import SlotState, SlotStateError, SlotTable

FREE, WORKER, READY, CONSUMER = SlotState

# name -> (call on the table, state the slots must be in, state they move to)
TRANSITIONS: dict[str, tuple[Callable[[SlotTable, list[int]], None], SlotState, SlotState]] = {
    "fill": (lambda table, slots: table.fill(slots), WORKER, READY),
    "claim": (lambda table, slots: table.claim(slots[0]), READY, CONSUMER),
    "release": (lambda table, slots: table.release(slots), CONSUMER, FREE),
    "abandon": (lambda table, slots: table.abandon(slots), WORKER, FREE),
    "discard": (lambda table, slots: table.discard(slots), READY, FREE),
}


class SlotTableMachine(RuleBasedStateMachine):
    """Random sequences of reserve/fill/claim/release/abandon/discard on one table."""

    table: SlotTable
    model: dict[int, SlotState]

    @initialize(capacity=st.integers(min_value=1, max_value=10))
    def build(self, capacity: int) -> None:
        self.table = SlotTable(capacity)
        self.model = dict.fromkeys(range(capacity), FREE)

    def _in_state(self, state: SlotState) -> list[int]:
        return [slot for slot, current in self.model.items() if current is state]

    @rule(count=st.integers(min_value=0, max_value=11))
    def reserve(self, count: int) -> None:
        free = self._in_state(FREE)
        if count > len(free):
            with pytest.raises(SlotStateError, match="free"):
                self.table.reserve(count)
            return
        slots = self.table.reserve(count)
        assert len(slots) == count == len(set(slots)), "reserve handed out a slot twice"
        assert set(slots) <= set(free), "reserve handed out a slot that was not free"
        for slot in slots:
            self.model[slot] = WORKER

    @rule(name=st.sampled_from(sorted(TRANSITIONS)), data=st.data())
    def transition(self, name: str, data: st.DataObject) -> None:
        """Apply a transition to slots that are mostly, but not always, in the right state."""
        call, expected, new = TRANSITIONS[name]
        capacity = self.table.capacity
        eligible = self._in_state(expected)
        any_slot = st.integers(min_value=0, max_value=capacity - 1)
        slot = st.sampled_from(eligible) | any_slot if eligible else any_slot
        size = 1 if name == "claim" else data.draw(st.integers(1, 3), label="size")
        slots = data.draw(st.lists(slot, min_size=size, max_size=size), label="slots")
        legal = len(set(slots)) == len(slots) and all(self.model[s] is expected for s in slots)
        if not legal:
            with pytest.raises(SlotStateError):
                call(self.table, slots)
            return  # the invariants check that nothing changed
        call(self.table, slots)
        for moved in slots:
            self.model[moved] = new

    @precondition(lambda self: self.table.free_count > 0)
    @rule()
    def no_free_slot_is_lost(self) -> None:
        """Reserving every free slot yields exactly the slots the model says are free."""
        free = set(self._in_state(FREE))
        slots = self.table.reserve(self.table.free_count)
        assert set(slots) == free
        assert len(slots) == len(free)
        self.table.abandon(slots)

    @invariant()
    def counts_add_up_to_capacity(self) -> None:
        assert sum(self.table.count(state) for state in SlotState) == self.table.capacity
        assert self.table.free_count == self.table.count(FREE)

    @invariant()
    def table_agrees_with_model(self) -> None:
        for state in SlotState:
            assert self.table.count(state) == len(self._in_state(state)), state
        for slot, state in self.model.items():
            assert self.table.state(slot) is state, slot


TestSlotTable = SlotTableMachine.TestCase
TestSlotTable.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


def _walk(table: SlotTable, slots: Iterable[int]) -> None:
    slots = list(slots)
    table.fill(slots)
    for slot in slots:
        table.claim(slot)
    table.release(slots)


def test_a_full_lifecycle_returns_every_slot() -> None:
    table = SlotTable(4)
    _walk(table, table.reserve(4))
    assert table.free_count == 4
    assert sorted(table.reserve(4)) == [0, 1, 2, 3]


def test_a_rejected_transition_names_the_slot_and_changes_nothing() -> None:
    table = SlotTable(3)
    first, second, _ = table.reserve(3)
    table.fill([first])
    with pytest.raises(SlotStateError, match=f"slot {first} is ready, expected worker"):
        table.abandon([second, first])
    assert table.state(second) is WORKER
    assert table.count(WORKER) == 2
    with pytest.raises(SlotStateError, match="twice"):
        table.fill([second, second])
    assert table.state(second) is WORKER
