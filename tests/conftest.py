"""Shared fixtures, and a check after every test that it left no process, segment or descriptor.

multiprocessing's own helpers (the resource tracker and the forkserver) live as long as the
interpreter once started; they are not leaks and are ignored.

Hypothesis profiles: ``ci`` (the default) keeps property tests that leave ``max_examples`` to the
profile fast; ``HYPOTHESIS_PROFILE=thorough`` runs them at length.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from multiprocessing import forkserver, resource_tracker
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch
from hypothesis import settings

import shmqueue as sq
from shmqueue.engine.coordinator import Coordinator

settings.register_profile("ci", max_examples=15, deadline=None)
settings.register_profile("thorough", max_examples=250, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

_INFRASTRUCTURE = ("resource_tracker", "forkserver")
_SHM = Path("/dev/shm")


def _children() -> dict[int, psutil.Process]:
    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:
            continue
        if not any(name in command for name in _INFRASTRUCTURE):
            found[child.pid] = child
    return found


def _segments() -> set[str]:
    """shmqueue's /dev/shm segments made by this process, or by processes that are gone.

    Segments of other live processes (a colleague's test run on the same machine) are not ours.
    """
    if not _SHM.is_dir():
        return set()
    found = set()
    for entry in _SHM.iterdir():
        parts = entry.name.split("-")
        if parts[0] != "shmqueue" or len(parts) < 3 or not parts[1].isdigit():
            continue
        creator = int(parts[1])
        if creator == os.getpid() or not psutil.pid_exists(creator):
            found.add(entry.name)
    return found


def _descriptors() -> dict[int, str]:
    found = {}
    for entry in Path("/proc/self/fd").iterdir():
        try:
            found[int(entry.name)] = os.readlink(entry)
        except OSError:
            continue
    return found


def _infrastructure_descriptors() -> set[int]:
    """multiprocessing's helpers' pipes, which live as long as the interpreter once started."""
    fds = {
        getattr(forkserver._forkserver, "_forkserver_alive_fd", None),
        getattr(resource_tracker._resource_tracker, "_fd", None),
    }
    return {fd for fd in fds if fd is not None}


_ENGINE_DESCRIPTORS = ("pipe", "memfd", "pidfd")


class _EngineCensus:
    """Every engine started during a test, to compare its workers' descriptors afterwards."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.stats: list[sq.QueueStats] = []
        original = Coordinator.__init__

        def record(coordinator: Coordinator, *args: Any, **kwargs: Any) -> None:
            original(coordinator, *args, **kwargs)
            self.stats.append(coordinator.stats)

        monkeypatch.setattr(Coordinator, "__init__", record)

    def unequal(self) -> list[dict[int, dict[str, int]]]:
        """Engines whose workers hold different engine descriptors (a sibling's pipe end, an
        earlier ring). Plain files are left out: a fork-started worker also inherits whatever
        file another thread of the training process had open at that moment."""
        return [
            stats.worker_descriptors
            for stats in self.stats
            if len(
                {
                    tuple(census.get(kind, 0) for kind in _ENGINE_DESCRIPTORS)
                    for census in stats.worker_descriptors.values()
                }
            )
            > 1
        ]


SHUTDOWN_BOUND = 10.0  # seconds for a test's leftover workers to go once the test is over


@pytest.fixture(autouse=True)
def no_leaks(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if it leaves a child process, a /dev/shm entry or a memfd or pipe open, or
    if the workers of any queue it made held different descriptors (counted as each started)."""
    children_before = set(_children())
    segments_before = _segments()
    fds_before = _descriptors()
    census = _EngineCensus(monkeypatch)
    yield
    new_children = [p for pid, p in _children().items() if pid not in children_before]
    _, alive = psutil.wait_procs(new_children, timeout=SHUTDOWN_BOUND)
    for process in alive:
        process.kill()
    leaked_segments = _segments() - segments_before
    for name in leaked_segments:
        (_SHM / name).unlink(missing_ok=True)
    infrastructure = _infrastructure_descriptors()
    # Tensors sent to spawn workers live in torch's own /dev/shm/torch_* files, held by the
    # tensors (a fixture's subjects outlive this check): theirs, not the engine's.
    leaked_fds = {
        fd: target
        for fd, target in _descriptors().items()
        if fd not in infrastructure
        and fds_before.get(fd) != target
        and ("memfd:" in target or "/dev/shm/shmqueue" in target or target.startswith("pipe:"))
    }
    assert not alive, f"test left processes running: {[p.pid for p in alive]}"
    assert not leaked_segments, f"test left /dev/shm segments: {sorted(leaked_segments)}"
    assert not leaked_fds, (
        f"test left descriptors open: {leaked_fds} (infrastructure {infrastructure})"
    )
    assert not census.unequal(), (
        f"workers of one queue held different descriptors: {census.unequal()}"
    )


@pytest.fixture
def make_nifti(tmp_path: Path) -> Callable[..., Path]:
    """Write a NIfTI file: ``make_nifti("t1.nii.gz", array, affine=None)`` -> its path."""

    def write(name: str, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
        path = tmp_path / name
        nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
        return path

    return write


@pytest.fixture
def nifti_subjects(make_nifti: Callable[..., Path]) -> list[sq.Subject]:
    """Six subjects of int16 T1-like volumes (40x36x32) with uint8 label maps, as .nii.gz."""
    rng = np.random.default_rng(0)
    subjects = []
    for index in range(6):
        t1 = rng.integers(0, 1000, size=(40, 36, 32), dtype=np.int16)
        seg = (t1 > 700).astype(np.uint8) + (t1 > 900).astype(np.uint8)
        affine = np.diag([1.0, 1.2, 1.5, 1.0])
        subjects.append(
            sq.Subject(
                t1=sq.ScalarImage(make_nifti(f"t1_{index}.nii.gz", t1, affine)),
                seg=sq.LabelMap(make_nifti(f"seg_{index}.nii.gz", seg, affine)),
                name=f"sub-{index:02d}",
                age=20 + index,
            )
        )
    return subjects


@pytest.fixture
def huge_header_file(tmp_path: Path) -> Path:
    """A .nii.gz whose NIfTI-2 header claims 2 PiB of int16 (2^17 x 2^17 x 2^16) and that holds
    no voxels: a corrupt or wrong header, as far as anything but the header can tell."""
    header = nib.Nifti2Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((2**17, 2**17, 2**16))
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + bytes(4)))
    return path


@pytest.fixture
def tensor_subjects() -> list[sq.Subject]:
    """Five in-memory subjects with distinct content (voxel value encodes subject and position)."""
    subjects = []
    for index in range(5):
        grid = torch.arange(24 * 20 * 16, dtype=torch.float32).reshape(1, 24, 20, 16)
        subjects.append(sq.Subject(t1=sq.ScalarImage(grid + 100_000 * index), name=f"s{index}"))
    return subjects
