"""Shared fixtures, and a check after every test that it left no process, segment or descriptor.

multiprocessing's own helpers (the resource tracker and the forkserver) live as long as the
interpreter once started; they are not leaks and are ignored.

Hypothesis profiles: ``ci`` (the default) keeps property tests that leave ``max_examples`` to the
profile fast; ``HYPOTHESIS_PROFILE=thorough`` runs them at length.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch
from hypothesis import settings

import shmqueue as sq

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


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail the test if it leaves a child process, a /dev/shm entry or a memfd/pipe open."""
    children_before = set(_children())
    segments_before = _segments()
    fds_before = _descriptors()
    yield
    new_children = [p for pid, p in _children().items() if pid not in children_before]
    _, alive = psutil.wait_procs(new_children, timeout=10)
    for process in alive:
        process.kill()
    leaked_segments = _segments() - segments_before
    for name in leaked_segments:
        (_SHM / name).unlink(missing_ok=True)
    leaked_fds = {
        fd: target
        for fd, target in _descriptors().items()
        if fd not in fds_before and ("memfd:" in target or "/dev/shm" in target)
    }
    assert not alive, f"test left processes running: {[p.pid for p in alive]}"
    assert not leaked_segments, f"test left /dev/shm segments: {sorted(leaked_segments)}"
    assert not leaked_fds, f"test left descriptors open: {leaked_fds}"


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
def tensor_subjects() -> list[sq.Subject]:
    """Five in-memory subjects with distinct content (voxel value encodes subject and position)."""
    subjects = []
    for index in range(5):
        grid = torch.arange(24 * 20 * 16, dtype=torch.float32).reshape(1, 24, 20, 16)
        subjects.append(sq.Subject(t1=sq.ScalarImage(grid + 100_000 * index), name=f"s{index}"))
    return subjects
