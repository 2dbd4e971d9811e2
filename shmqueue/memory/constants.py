"""The memory model's constants, measured on the reference machine.

Measured (Linux 6.18, x86-64, Python 3.11.7, torch 2.13.0+cpu, numpy 2.4.6, nibabel 5.4.2) by
``benchmarks/memory_accuracy.py``, which also checks the whole model against measured peaks. On
another stack, ``estimate_memory(..., measure=True)`` replaces the per-worker data model with a
measurement.
"""

from __future__ import annotations

MiB = 2**20

PROCESS_BASELINE = 155 * MiB
"""Anonymous memory of an interpreter that imported shmqueue (torch, numpy, nibabel) and has run
the pipeline: a spawned worker, or the training process, besides the data it holds. Measured
149-150 MiB idle, 155-157 MiB once it has loaded and transformed subjects."""

SHARED_LIBRARIES = 88 * MiB
"""Resident pages of the shared libraries (libtorch and the rest), counted once per rank: every
process of the tree maps the same pages. Measured 83-87 MiB."""

FORK_WORKER_BASELINE = 8 * MiB
"""What a forked worker adds: its own small allocations and the inherited pages it writes to.
Measured 5.4 MiB per worker."""

FORK_COPY_ON_WRITE = 42 * MiB
"""Under fork, pages the training process and its workers shared that one of them rewrites: a
full garbage collection in the training process rewrites every page holding Python objects
(measured: 42 MiB copied), once per rank. A worker that made a full collection itself would copy
as much again; its short-lived objects make that rare (``gc.freeze()`` before forking would rule
it out)."""

RESOURCE_TRACKER = 7 * MiB
"""multiprocessing's resource tracker, which the spawn and forkserver start methods start.
Measured 6.3 MiB."""

IMAGE_OBJECT_BYTES = 2048
"""An Image object with its cached header (path, affine, dtype), in a process's subject list."""

SUBJECT_PLAN_BYTES = 1024
"""Bookkeeping per subject in the training process: the current and next epoch's tasks."""

PATCH_OBJECT_BYTES = 4096
"""A patch image's objects besides its voxels (in-process path): Image, affine, location."""

RETAINED_BATCHES = 6
"""Freed batches the training process's heap keeps, beyond the two alive. glibc serves blocks
under its mmap threshold (which rises to 32 MiB after the first large free) from its heap, where
small allocations made between batches split the holes that freed batches leave. With a training
step that allocates little on the CPU the heap kept 2.5 to 4.5 batches (benchmark configurations);
6 leaves a margin. A step that allocates many small objects between batches can make it keep
more: up to 11 batches were measured over six epochs with a loop that parsed text each batch."""

HEAP_BLOCK_LIMIT = 32 * MiB
"""glibc's largest mmap threshold: blocks this large are always mapped and unmapped directly;
smaller ones may come from its heap, which keeps them when they are freed."""
