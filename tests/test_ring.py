"""The ring: its byte layout, both shared-memory backends, and what happens when memory is short.

Contract 3 of DESIGN.md: the ring is one allocation of ``max_length x slot_bytes`` (plus the slot
metadata) laid out by :class:`SlotLayout`, which every party reads. Both backends must carry bytes
between processes, and a ring that cannot be backed must fail at construction
(:class:`RingAllocationError`), never with a SIGBUS on a later write.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shmqueue.engine.backends import resolve_backend
from shmqueue.engine.layout import (
    ALIGNMENT,
    METADATA_FIELDS,
    PAGE,
    MetadataField,
    SlotLayout,
)
from shmqueue.engine.ring import RingView, SegmentHandle, create_segment
from shmqueue.errors import RingAllocationError
from shmqueue.units import pretty_bytes

BACKENDS = ("memfd", "named")
DTYPES = (torch.float32, torch.float64, torch.int16, torch.uint8, torch.int64, torch.float16)


def _small_layout(max_length: int = 5) -> SlotLayout:
    """Three images whose odd patch (3x5x7 voxels) forces padding between fields."""
    return SlotLayout.build(
        (3, 5, 7),
        {"t1": (1, torch.float32), "seg": (1, torch.uint8), "dwi": (3, torch.int16)},
        max_length,
    )


# Layout -------------------------------------------------------------------------------------------


def test_layout_of_a_known_case() -> None:
    layout = _small_layout()
    t1, seg, dwi = layout.fields
    assert (t1.offset, t1.nbytes) == (0, 105 * 4)  # 420 bytes, padded to 448
    assert (seg.offset, seg.nbytes) == (448, 105)  # padded to 128
    assert (dwi.offset, dwi.nbytes) == (576, 3 * 105 * 2)  # 630 bytes, padded to 640
    assert layout.slot_bytes == 1216
    assert layout.metadata_bytes == 320  # 5 rows of 7 int64 = 280, padded to 320
    assert layout.patch_bytes == 5 * 1216
    assert layout.ring_bytes == 8192  # 320 + 6080 = 6400, rounded up to two pages
    assert layout.patch_shape(dwi) == (3, 3, 5, 7)
    assert layout.field("seg") is seg


@settings(max_examples=80, deadline=None)
@given(
    patch_size=st.tuples(*[st.integers(1, 9)] * 3),
    images=st.lists(st.tuples(st.integers(1, 4), st.sampled_from(DTYPES)), min_size=1, max_size=4),
    max_length=st.integers(1, 40),
)
def test_layout_fields_are_aligned_disjoint_and_fit_the_ring(
    patch_size: tuple[int, int, int],
    images: list[tuple[int, torch.dtype]],
    max_length: int,
) -> None:
    spec = {f"image{index}": image for index, image in enumerate(images)}
    layout = SlotLayout.build(patch_size, spec, max_length)
    voxels = patch_size[0] * patch_size[1] * patch_size[2]
    end = 0
    for field, (channels, dtype) in zip(layout.fields, images):
        assert field.offset % ALIGNMENT == 0
        assert field.offset >= end, "fields overlap"
        assert field.nbytes == channels * voxels * dtype.itemsize
        end = field.offset + field.nbytes
    assert layout.slot_bytes % ALIGNMENT == 0
    assert end <= layout.slot_bytes < end + ALIGNMENT
    assert layout.metadata_bytes % ALIGNMENT == 0
    assert layout.metadata_bytes >= max_length * METADATA_FIELDS * 8
    assert layout.patch_bytes == max_length * layout.slot_bytes
    used = layout.metadata_bytes + layout.patch_bytes
    assert layout.ring_bytes % PAGE == 0
    assert used <= layout.ring_bytes < used + PAGE


def test_views_lie_where_the_layout_says() -> None:
    layout = _small_layout()
    buffer = bytearray(layout.ring_bytes)
    ring = RingView(buffer, layout)
    for slot in range(layout.max_length):
        for number, field in enumerate(layout.fields):
            ring.patches[field.name][slot].fill_(10 * slot + number + 1)
        ring.metadata[slot] = np.arange(METADATA_FIELDS) + 100 * slot
    raw = np.frombuffer(buffer, dtype=np.uint8)
    for slot in range(layout.max_length):
        row = raw[slot * METADATA_FIELDS * 8 : (slot + 1) * METADATA_FIELDS * 8].view(np.int64)
        assert row.tolist() == list(range(100 * slot, 100 * slot + METADATA_FIELDS))
        for number, field in enumerate(layout.fields):
            start = layout.metadata_bytes + slot * layout.slot_bytes + field.offset
            numpy_dtype = torch.empty(0, dtype=field.dtype).numpy().dtype
            stored = raw[start : start + field.nbytes].view(numpy_dtype)
            assert (stored == 10 * slot + number + 1).all(), (slot, field.name)
            view = ring.patches[field.name][slot]
            assert view.shape == layout.patch_shape(field)
            assert view.is_contiguous()
    written = raw.copy()
    ring.release()
    assert not ring.patches
    assert (np.frombuffer(buffer, dtype=np.uint8) == written).all()


# Backends -----------------------------------------------------------------------------------------


def _own_segments() -> list[str]:
    """This process's named segments in /dev/shm (other test runs may share the machine)."""
    return [name for name in os.listdir("/dev/shm") if name.startswith(f"shmqueue-{os.getpid()}-")]


def _fill_from_child(handle: SegmentHandle, layout: SlotLayout) -> None:
    """Child process: check what the parent wrote, then write every slot for the parent."""
    ring = RingView(handle.open(), layout)
    try:
        if not (ring.patches["t1"][0] == -1).all():
            raise SystemExit(3)
        for slot in range(layout.max_length):
            for number, field in enumerate(layout.fields):
                ring.patches[field.name][slot].fill_(10 * slot + number + 1)
            ring.metadata[slot, MetadataField.SUBJECT_INDEX] = 1000 + slot
    finally:
        ring.release()


@pytest.mark.parametrize("start_method", ["fork", "spawn"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_ring_written_in_one_process_is_read_in_another(backend: str, start_method: str) -> None:
    layout = _small_layout()
    segment = create_segment(backend, layout.ring_bytes)
    ring = RingView(segment.buffer, layout)
    try:
        ring.patches["t1"][0].fill_(-1)
        assert not _own_segments(), "a named ring has no name from the moment it exists"
        handle = segment.handle()
        child = multiprocessing.get_context(start_method).Process(
            target=_fill_from_child, args=(handle, layout)
        )
        child.start()
        handle.close()  # like the pool: the child has its own descriptor now
        child.join(60)
        assert child.exitcode == 0
        segment.seal()  # like the coordinator: once the workers mapped it, drop the descriptor
        for slot in range(layout.max_length):
            for number, field in enumerate(layout.fields):
                assert (ring.patches[field.name][slot] == 10 * slot + number + 1).all()
            assert ring.metadata[slot, MetadataField.SUBJECT_INDEX] == 1000 + slot
    finally:
        ring.release()
        segment.close()


def test_a_segment_closes_twice_and_frees_its_descriptor() -> None:
    for backend in BACKENDS:
        segment = create_segment(backend, PAGE)
        segment.close()  # the no_leaks fixture checks that no descriptor stays open
        segment.close()
        assert segment.fd == -1


def _fail_to_reserve(fd: int, offset: int, size: int) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize(
    ("backend", "advice"),
    [("memfd", "lower max_length"), ("named", "--shm-size")],
)
def test_a_ring_that_cannot_be_reserved_fails_at_construction(
    backend: str, advice: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "posix_fallocate", _fail_to_reserve)
    with pytest.raises(RingAllocationError) as caught:
        create_segment(backend, 3 * 1024**2)
    message = str(caught.value)
    assert "3.0 MiB" in message
    assert "No space left on device" in message
    assert advice in message
    assert isinstance(caught.value, MemoryError)
    assert isinstance(caught.value.__cause__, OSError)
    assert not _own_segments()  # the named segment was unlinked


def test_backend_names_are_checked() -> None:
    assert resolve_backend("auto") == "memfd"  # Linux has memfd_create
    assert resolve_backend("named") == "named"
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("posix")
    assert pretty_bytes(1536) == "1.5 KiB"
    assert pretty_bytes(3 * 1024**3) == "3.0 GiB"
    assert pretty_bytes(12) == "12 B"


# A Docker-sized /dev/shm -------------------------------------------------------------------------

_SMALL_SHM_SCRIPT = """
import json, os
from shmqueue.engine.ring import create_segment
from shmqueue.errors import RingAllocationError

size = 1024**3
report = {"shm_total": os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize}
memfd = create_segment("memfd", size)
memfd.buffer[size - 4096 :] = b"\\x5a" * 4096
report["memfd_last_page"] = memfd.buffer[size - 1]
memfd.close()
try:
    create_segment("named", size)
except RingAllocationError as error:
    report["named_error"] = str(error)
report["shm_after"] = os.listdir("/dev/shm")
print(json.dumps(report))
"""


@pytest.mark.timeout(300)
def test_a_1_gib_ring_on_a_64_mib_dev_shm() -> None:
    """memfd is not bounded by /dev/shm; the named backend says how to fix Docker's limit."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare is not installed: cannot make a private /dev/shm")
    script = textwrap.dedent(_SMALL_SHM_SCRIPT)
    command = (
        f'mount -t tmpfs -o size=64m tmpfs /dev/shm || exit 77; exec "{sys.executable}" -c "$0"'
    )
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c", command, script],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=Path(__file__).resolve().parents[1],
    )
    if result.returncode == 77 or (result.returncode != 0 and result.stderr.startswith("unshare:")):
        pytest.skip(f"no permission for a private mount namespace: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    report: dict[str, Any] = json.loads(result.stdout)
    assert report["shm_total"] == 64 * 1024**2
    assert report["memfd_last_page"] == 0x5A
    error = report["named_error"]
    assert "1.0 GiB" in error
    assert "/dev/shm" in error
    assert "--shm-size" in error
    assert report["shm_after"] == []
