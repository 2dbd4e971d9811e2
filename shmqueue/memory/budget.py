"""The budget: whether an estimate fits this machine, checked before anything is allocated.

:func:`preflight` raises :class:`~shmqueue.MemoryBudgetError` when a queue's plan cannot fit
(contract 9 of DESIGN.md): the ring against its backend's capacity (available memory, or
/dev/shm's free space for the named backend), the total against the available memory.
:func:`budget_problems` lists what does not fit, with what to change, for the ``estimate``
command.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..engine.backends import resolve_backend
from ..errors import MemoryBudgetError
from ..machine import MemoryCapacity, memory_capacity
from ..units import pretty_bytes
from .breakdown import MemoryEstimate
from .constants import PATCH_OBJECT_BYTES


def _largest_fitting(budget: int, upper: int, cost: Any) -> int:
    """The largest ``max_length`` in ``[0, upper]`` with ``cost(max_length) <= budget``."""
    low, high = 0, upper
    while low < high:
        middle = (low + high + 1) // 2
        if cost(middle) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def budget_problems(
    estimate: MemoryEstimate,
    backend: str = "auto",
    capacity: MemoryCapacity | None = None,
    check_ram: bool = True,
    resident: int = 0,
    per_node: bool = False,
) -> list[str]:
    """What in a plan does not fit this machine, each with what to change; empty if it fits.

    Args:
        estimate: the plan.
        backend: the ring's backend (``"auto"``, ``"memfd"``, ``"named"``).
        capacity: the machine's capacity; read now when omitted.
        check_ram: also compare the total with the available memory. The ring is always checked
            against its backend's capacity, which cannot give more than it has.
        resident: bytes of the estimate that are already allocated (the running training
            process's baseline and subjects).
        per_node: check all ``ranks_per_node`` ranks together, rather than one rank.

    Returns:
        One message per problem, naming the numbers and what to change.
    """
    capacity = capacity or memory_capacity()
    ranks = estimate.ranks_per_node if per_node else 1
    layout = estimate.layout
    problems = []

    def ring_bytes(max_length: int) -> int:
        return ranks * dataclasses.replace(layout, max_length=max_length).ring_bytes

    if estimate.num_workers:
        named = resolve_backend(backend) == "named"
        room, where = capacity.available, f"memory has {pretty_bytes(capacity.available)}"
        where += f" available ({capacity.description})"
        if named and capacity.shm_free is not None and capacity.shm_free < room:
            room, where = capacity.shm_free, f"/dev/shm has {pretty_bytes(capacity.shm_free)} free"
        if ring_bytes(layout.max_length) > room:
            fits = _largest_fitting(room, layout.max_length, ring_bytes)
            advice = (
                "In a container, raise --shm-size (e.g. docker run --shm-size=8g), or use"
                " backend='memfd' (the default on Linux), which /dev/shm's size does not bound."
                if named
                else "In a container, raise its memory limit (e.g. docker run --memory=16g)."
            )
            problems.append(
                f"The ring of patch slots needs {pretty_bytes(ring_bytes(layout.max_length))}"
                f" but {where}. Lower max_length to at most {fits} (now {layout.max_length}), or"
                f" the patch size. {advice}"
            )
    total = (estimate.total_per_node if per_node else estimate.total_per_rank) - resident
    if check_ram and total > capacity.available:
        consumer = estimate.consumer
        per_patch = sum(field.nbytes + PATCH_OBJECT_BYTES for field in layout.fields)
        buffered = consumer.buffered_patches // per_patch - estimate.batch_size  # <= max_length

        def cost(max_length: int) -> int:
            if estimate.num_workers:
                return total - ring_bytes(layout.max_length) + ring_bytes(max_length)
            return total - ranks * per_patch * (buffered - min(max_length, buffered))

        changes = []
        fits = _largest_fitting(capacity.available, layout.max_length, cost)
        if fits >= estimate.patches_per_volume:
            changes.append(f"max_length to at most {fits} (now {layout.max_length})")
        if estimate.num_workers:
            spare = capacity.available - (total - ranks * estimate.workers)
            workers = spare // (ranks * estimate.worker.total)
            if workers >= 1:
                changes.append(f"num_workers to at most {workers} (now {estimate.num_workers})")
        scope = f"{ranks} ranks" if ranks > 1 else "the queue"
        advice = (
            f"Lower {', or '.join(changes)}, or the patch size"
            if changes
            else "Even the smallest max_length and fewer workers would not fit: free memory"
        )
        # The largest subject sets every worker's peak: name it and its files, since a header
        # that claims a huge volume (or a wrong one) is where such a plan usually comes from.
        peak = (
            f" Each subject-processing process peaks at {pretty_bytes(estimate.worker.total)},"
            f" set by {estimate.worker.subject}."
        )
        problems.append(
            f"The plan needs {pretty_bytes(total)} for {scope} but"
            f" {pretty_bytes(capacity.available)} is available ({capacity.description})."
            f"{peak} {advice}; in a container, raise its memory limit."
        )
    return problems


def preflight(
    estimate: MemoryEstimate,
    backend: str = "auto",
    check_memory: bool = True,
    resident: int = 0,
    capacity: MemoryCapacity | None = None,
) -> None:
    """Raise :class:`~shmqueue.MemoryBudgetError` if a plan cannot fit, before any allocation.

    Args:
        estimate: the plan of one rank.
        backend: the ring's backend.
        check_memory: also compare the total with the available memory; ``False`` keeps only
            the ring's check against its backend's capacity.
        resident: bytes of the estimate already allocated (see :func:`budget_problems`).
        capacity: the machine's capacity; read now when omitted.

    Raises:
        MemoryBudgetError: the ring exceeds its backend's capacity, or the total the available
            memory. Its ``estimate`` attribute holds the breakdown.
    """
    problems = budget_problems(estimate, backend, capacity, check_memory, resident)
    if problems:
        if check_memory:
            problems.append(
                "If you know better (e.g. memory is about to be freed), pass check_memory=False"
                " to skip the check of the total."
            )
        raise MemoryBudgetError(" ".join(problems) + f"\n\n{estimate}", estimate=estimate)
