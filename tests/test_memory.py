"""The memory estimator (contract 9): terms that add up, the ring's exact size, no voxel read,
the model's terms for each kind of input, and the preflight that fails before any allocation."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import psutil
import pytest
import torch

import shmqueue as sq
import shmqueue.memory as memory
from shmqueue.image import Image
from shmqueue.machine import MemoryCapacity, cgroup_headroom, return_free_memory
from shmqueue.memory import PROCESS_BASELINE, budget, measure, preflight
from shmqueue.sampling.base import spatial_voxels
from shmqueue.specs import SubjectSpec
from shmqueue.testing import check_queue

MiB = 2**20


def _worker_terms(worker: sq.memory.WorkerPeak) -> int:
    return sum(
        getattr(worker, field.name)
        for field in dataclasses.fields(worker)
        if isinstance(getattr(worker, field.name), int)
    )


def _ring_segment_sizes() -> list[int]:
    """Sizes of the ring segments this process holds open (memfd descriptors)."""
    sizes = []
    for entry in Path("/proc/self/fd").iterdir():
        try:
            target = os.readlink(entry)
        except OSError:
            continue
        if "shmqueue-ring" in target:
            sizes.append(os.fstat(int(entry.name)).st_size)
    return sizes


def _capacity(available: int, shm_free: int | None = None) -> MemoryCapacity:
    return MemoryCapacity(available, shm_free, f"{available} bytes available (test)")


@pytest.mark.parametrize(
    ("num_workers", "start_method", "pin_memory", "ranks"),
    [
        (0, "fork", False, 1),
        (2, "fork", True, 1),
        (3, "spawn", False, 4),
        (1, "forkserver", True, 2),
    ],
)
def test_terms_add_up(
    nifti_subjects: list[sq.Subject],
    num_workers: int,
    start_method: str,
    pin_memory: bool,
    ranks: int,
) -> None:
    estimate = sq.estimate_memory(
        nifti_subjects,
        16,
        max_length=40,
        num_workers=num_workers,
        batch_size=8,
        transform=sq.Compose([sq.Flip(), sq.Noise()]),
        ranks_per_node=ranks,
        pin_memory=pin_memory,
        patches_per_volume=5,
        multiprocessing_context=start_method,
    )
    worker = estimate.worker
    assert worker.total == _worker_terms(worker) > 0
    consumer, coordinator = estimate.consumer, estimate.coordinator
    assert consumer.total == (
        consumer.batches + consumer.pinned + consumer.allocator + consumer.buffered_patches
    )
    assert coordinator.total == (
        coordinator.baseline
        + coordinator.shared_libraries
        + coordinator.helpers
        + coordinator.copy_on_write
        + coordinator.subjects
    )
    assert estimate.total_per_rank == (
        estimate.ring + max(num_workers, 1) * worker.total + consumer.total + coordinator.total
    )
    assert estimate.total_per_node == ranks * estimate.total_per_rank
    report = json.loads(json.dumps(estimate.to_dict()))
    assert report["total_per_rank"] == estimate.total_per_rank
    assert report["worker"]["total"] == worker.total
    assert report["config"]["start_method"] == start_method
    text = str(estimate)
    assert "total per rank" in text and "training process" in text
    assert ("total per node" in text) == (ranks > 1)


def test_ring_term_is_the_allocated_segment(nifti_subjects: list[sq.Subject]) -> None:
    queue = sq.Queue(
        nifti_subjects,
        sq.UniformSampler(None, 16),
        max_length=30,
        patches_per_volume=5,
        num_workers=1,
        seed=0,
    )
    with queue:
        estimate = queue.estimate_memory(batch_size=4)
        batches = iter(sq.SubjectsLoader(queue, batch_size=4))
        next(batches)
        sizes = _ring_segment_sizes()  # the coordinator's descriptor (and the workers' handle)
        assert sizes and set(sizes) == {estimate.ring}
        assert estimate.ring == queue.layout.ring_bytes
        del batches
    standalone = sq.estimate_memory(
        nifti_subjects, 16, max_length=30, num_workers=1, patches_per_volume=5
    )
    assert standalone.ring == estimate.ring  # the same layout, derived from the headers


def test_no_voxel_is_read(
    nifti_subjects: list[sq.Subject], monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the estimate read voxels")

    monkeypatch.setattr(Image, "load", refuse)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "get_unscaled", refuse)
    monkeypatch.setattr(nib.arrayproxy.ArrayProxy, "__array__", refuse)
    estimate = sq.estimate_memory(
        nifti_subjects, 16, num_workers=2, transform=sq.Noise(), patches_per_volume=5
    )
    assert estimate.worker.raw > 0  # sized from the headers
    assert estimate.worker.allocator > 0  # the pooled volumes of the last subject
    queue = sq.Queue(
        nifti_subjects,
        sq.UniformSampler(None, 16),
        num_workers=2,
        transform=sq.Noise(),
        patches_per_volume=5,
    )
    assert queue.estimate_memory().worker == estimate.worker
    queue.close()


def test_loading_terms_follow_the_files(make_nifti: Callable[..., Path]) -> None:
    """A .nii.gz int16 scalar image at its peak: the inflated bytes, the pieces in flight (a read
    and an inflated piece, each at most the voxels' size) and what the volume pool keeps: the last
    subject's float32 volume and one more of a nearby size (2 + 2 x 2 + 2 x 4 bytes per voxel)."""
    volume = np.arange(32 * 24 * 20, dtype=np.int16).reshape(32, 24, 20)
    voxels = v = volume.size
    compressed = sq.Subject(t1=sq.ScalarImage(make_nifti("t1.nii.gz", volume)))
    worker = sq.estimate_memory([compressed], 8, num_workers=1).worker
    assert worker.phase == "decompressing 't1'"
    assert (worker.raw, worker.decompression, worker.allocator) == (2 * v, 4 * v, 8 * v)
    assert worker.loaded == worker.conversion == 0

    labels = sq.Subject(seg=sq.LabelMap(make_nifti("seg.nii", (volume % 3).astype(np.uint8))))
    worker = sq.estimate_memory([labels], 8, num_workers=1).worker
    assert (worker.raw, worker.loaded) == (voxels, voxels)  # the memory map and the label map
    assert worker.phase == "reordering 'seg'"

    scaled_image = nib.Nifti1Image(volume, np.eye(4))
    scaled_image.header.set_slope_inter(2.0, -1024.0)
    path = Path(make_nifti("ct.nii.gz", volume)).with_name("scaled.nii.gz")
    nib.save(scaled_image, path)
    worker = sq.estimate_memory([sq.Subject(ct=sq.ScalarImage(path))], 8, num_workers=1).worker
    assert worker.conversion == 0  # scaled in place, in the float32 volume
    assert (worker.raw, worker.allocator) == (2 * v, 8 * v)
    assert worker.decompression == 4 * v


def test_transform_terms(tensor_subjects: list[sq.Subject]) -> None:
    """Deferred to the 8^3 patches, an augmentation costs a patch's input and result (a
    resampling some 80 bytes a voxel); on the whole volume, the new volume and a slab's values
    (here the whole volume: it is smaller than a slab). ZNormalization one volume; unknown
    callables two of every image."""
    volume = 24 * 20 * 16 * 4
    patch = 8**3

    def transform_bytes(transform: object, patch_evaluation: bool = True) -> int:
        estimate = sq.estimate_memory(
            tensor_subjects,
            8,
            transform=transform,  # type: ignore[arg-type]
            patch_evaluation=patch_evaluation,
        )
        return estimate.worker.transform

    assert transform_bytes(None) == 0
    assert transform_bytes(sq.Noise()) == transform_bytes(sq.Flip()) == patch * 8
    assert transform_bytes(sq.Compose([sq.Flip(), sq.Noise()])) == patch * 8
    assert transform_bytes(sq.Compose([sq.Noise(), sq.Affine(default_pad_value=0)])) == patch * 80
    # the fill value 'minimum' is the noisy image's: it is made whole once (with a slab's
    # values), which the heap keeps while the patches are computed
    filled, zero = (
        sq.estimate_memory(
            tensor_subjects,
            8,
            transform=sq.Compose([sq.Noise(), sq.Affine(default_pad_value=fill)]),
        ).worker
        for fill in ("minimum", 0)
    )
    assert filled.total - zero.total == 3 * volume and filled.phase == "evaluating patches"
    assert transform_bytes(sq.OneOf([sq.Noise(), sq.Affine()])) == patch * 80
    assert transform_bytes(sq.Noise(), patch_evaluation=False) == 3 * volume
    assert transform_bytes(sq.ZNormalization()) == volume
    assert transform_bytes(sq.Compose([sq.ZNormalization(), sq.Noise()])) == volume
    assert transform_bytes(lambda subject: subject) == 2 * volume
    scalar_only = sq.Lambda(lambda data: data, types_to_apply=(sq.LabelMap,))
    assert transform_bytes(scalar_only) == 0


def test_deferred_images_a_sampler_reads_are_made_whole_slab_by_slab(
    tensor_subjects: list[sq.Subject],
) -> None:
    """A label sampler reads its (deferred, resampled) label map whole: the map is made slab by
    slab, some 160 bytes a voxel in flight (which the heap keeps while the sampler draws, 21
    bytes a voxel), and kept while the patches are computed."""
    subjects = [
        sq.Subject(t1=subject.t1, seg=sq.LabelMap(subject.t1.data.gt(0).to(torch.uint8)))
        for subject in tensor_subjects
    ]
    voxels = 24 * 20 * 16
    label = sq.LabelSampler(None, 8, label_name="seg")
    worker = sq.estimate_memory(subjects, label, transform=sq.Affine()).worker
    assert (worker.phase, worker.sampler) == ("sampling", voxels + 160 * voxels + 21 * voxels)
    uniform = sq.estimate_memory(subjects, 8, transform=sq.Affine()).worker
    assert (uniform.phase, uniform.sampler, uniform.transform) == (
        "evaluating patches",
        0,
        160 * 8**3,
    )


def test_a_compose_frees_each_step_input(make_nifti: Callable[..., Path]) -> None:
    """From a file, Flip's input (the loaded volume) is freed before Noise runs, so Flip then
    Noise costs a worker what Noise alone does."""
    volume = np.zeros((24, 20, 16), np.int16)
    subjects = [sq.Subject(t1=sq.ScalarImage(make_nifti("t1.nii.gz", volume)))]

    def worker_total(transform: object) -> int:
        estimate = sq.estimate_memory(
            subjects,
            8,
            transform=transform,  # type: ignore[arg-type]
            num_workers=1,
            patch_evaluation=False,
        )
        return estimate.worker.total

    assert worker_total(sq.Compose([sq.Flip(), sq.Noise()])) == worker_total(sq.Noise())
    assert worker_total(sq.Noise()) > worker_total(None)


def test_baselines_follow_the_start_method(tensor_subjects: list[sq.Subject]) -> None:
    def estimate(start_method: str) -> sq.MemoryEstimate:
        return sq.estimate_memory(
            tensor_subjects, 8, num_workers=2, multiprocessing_context=start_method
        )

    fork, spawn, forkserver = estimate("fork"), estimate("spawn"), estimate("forkserver")
    assert fork.worker.baseline < spawn.worker.baseline == PROCESS_BASELINE
    assert fork.coordinator.helpers == 0 < spawn.coordinator.helpers
    assert fork.coordinator.copy_on_write > 0 == spawn.coordinator.copy_on_write
    assert forkserver.coordinator.helpers > spawn.coordinator.helpers  # the fork server itself
    in_memory = sum(subject.t1.data.numel() * 4 for subject in tensor_subjects)
    assert spawn.worker.subject_list - fork.worker.subject_list == in_memory  # pickled copies


def test_consumer_terms(tensor_subjects: list[sq.Subject]) -> None:
    patch = 8**3 * 4
    engine = sq.estimate_memory(tensor_subjects, 8, num_workers=1, batch_size=6)
    assert engine.consumer.batches >= 2 * 6 * patch
    assert engine.consumer.buffered_patches == 0
    pinned = sq.estimate_memory(tensor_subjects, 8, num_workers=1, batch_size=6, pin_memory=True)
    assert pinned.consumer.pinned == 2 * 2 ** (6 * patch - 1).bit_length()
    in_process = sq.estimate_memory(
        tensor_subjects, 8, max_length=20, batch_size=6, patches_per_volume=10
    )
    assert in_process.ring == 0
    assert in_process.consumer.buffered_patches >= (20 + 6) * patch
    small_epoch = sq.estimate_memory(
        tensor_subjects[:1], 8, max_length=20, batch_size=6, patches_per_volume=10
    )
    assert small_epoch.consumer.buffered_patches < in_process.consumer.buffered_patches


def test_measure_replaces_the_model(nifti_subjects: list[sq.Subject]) -> None:
    estimate = sq.estimate_memory(
        nifti_subjects,
        16,
        num_workers=1,
        transform=sq.Noise(),
        patches_per_volume=3,
        measure=True,
        multiprocessing_context="fork",
    )
    worker = estimate.worker
    assert worker.measured > 0
    assert worker.raw == worker.loaded == worker.transform == 0
    assert worker.total == worker.baseline + worker.subject_list + worker.measured


def test_a_dying_measuring_process_is_reported_with_its_signal(
    tensor_subjects: list[sq.Subject], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measuring process is started, watched and reaped by the pool's code, and its death
    is told as a worker's: by signal, with the likely cause, naming the subjects it measured."""

    def killed(*_: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would

    monkeypatch.setattr(measure, "_measure_child", killed)
    with pytest.raises(sq.WorkerDiedError) as raised:
        sq.estimate_memory(
            tensor_subjects, 8, num_workers=1, measure=True, multiprocessing_context="fork"
        )
    message = str(raised.value)
    for expected in ("was killed by SIGKILL", "out-of-memory killer", "subject 0 's0'"):
        assert expected in message


class MyFlip(sq.Flip):
    """A user's Flip: estimated and run as the Flip it derives from, with no edit elsewhere."""


class CornerSampler(sq.PatchSampler):
    """A sampler new to shmqueue: patches at random corners of the volume. It states its own
    working memory (a float32 volume, say); the estimator asks for it."""

    def locations(
        self, subject: sq.Subject, num_patches: int, generator: torch.Generator
    ) -> list[sq.PatchLocation]:
        self.check_fits(subject)
        last = [size - patch for size, patch in zip(subject.spatial_shape, self.patch_size)]
        corners = torch.randint(0, 2, (num_patches, 3), generator=generator).tolist()
        return [
            sq.PatchLocation((i * last[0], j * last[1], k * last[2]), self.patch_size)
            for i, j, k in corners
        ]

    def memory_cost(self, images: SubjectSpec) -> int:
        return 4 * spatial_voxels(images)


def test_a_new_transform_and_sampler_are_estimated_and_run_without_edits_elsewhere(
    tensor_subjects: list[sq.Subject],
) -> None:
    volume = 24 * 20 * 16 * 4

    def worker(sampler: sq.PatchSampler, transform: sq.Transform | None) -> sq.memory.WorkerPeak:
        return sq.estimate_memory(
            tensor_subjects, sampler, num_workers=2, transform=transform
        ).worker

    flipped = worker(sq.UniformSampler(None, 8), MyFlip(axes=(1,)))
    assert flipped == worker(sq.UniformSampler(None, 8), sq.Flip(axes=(1,)))
    assert flipped.transform == 8**3 * 8  # a patch's input and result: Flip's, deferred
    cornered = worker(CornerSampler(None, 8), None)
    assert cornered.sampler == volume and cornered.phase == "sampling"

    def queue() -> sq.Queue:
        return sq.Queue(
            tensor_subjects,
            CornerSampler(None, 8),
            max_length=8,
            patches_per_volume=4,
            num_workers=2,
            transform=sq.Compose([MyFlip(axes=(0,), p=0.5), sq.Noise(std=0.1)]),
            multiprocessing_context="fork",
            seed=0,
        )

    report = check_queue(queue, epochs=1, batch_size=4)
    assert report.ok, str(report)
    assert report.patches == 4 * len(tensor_subjects)


def test_preflight_fails_before_anything_is_allocated(
    nifti_subjects: list[sq.Subject],
) -> None:
    children = {child.pid for child in psutil.Process().children(recursive=True)}
    with pytest.raises(sq.MemoryBudgetError) as raised:
        sq.Queue(
            nifti_subjects,
            sq.UniformSampler(None, 16),
            max_length=10**8,  # 1.6 TB of patch slots
            patches_per_volume=10,
            num_workers=1,
        )
    error = raised.value
    assert isinstance(error, MemoryError) and isinstance(error, sq.ShmqueueError)
    assert error.estimate.ring > 10**12
    message = str(error)
    assert "max_length to at most" in message and "(now 100000000)" in message
    assert "total per rank" in message  # the breakdown follows
    assert {child.pid for child in psutil.Process().children(recursive=True)} == children
    assert _ring_segment_sizes() == []


def test_check_memory_false_skips_only_the_total(
    tensor_subjects: list[sq.Subject], monkeypatch: pytest.MonkeyPatch
) -> None:
    estimate = sq.estimate_memory(tensor_subjects, 8, max_length=10, num_workers=1)
    room = estimate.ring + MiB  # the ring fits, the whole plan does not
    monkeypatch.setattr(budget, "memory_capacity", lambda: _capacity(room))

    def queue(check_memory: bool) -> sq.Queue:
        return sq.Queue(
            tensor_subjects,
            sq.UniformSampler(None, 8),
            max_length=10,
            patches_per_volume=5,
            num_workers=1,
            check_memory=check_memory,
        )

    with pytest.raises(sq.MemoryBudgetError, match=r"The plan needs .* free memory"):
        queue(check_memory=True)
    queue(check_memory=False).close()
    monkeypatch.setattr(budget, "memory_capacity", lambda: _capacity(estimate.ring // 2))
    with pytest.raises(sq.MemoryBudgetError, match="ring of patch slots"):
        queue(check_memory=False)


def test_named_backend_is_bounded_by_dev_shm(tensor_subjects: list[sq.Subject]) -> None:
    estimate = sq.estimate_memory(tensor_subjects, 8, max_length=100, num_workers=1)
    capacity = _capacity(10**12, shm_free=estimate.ring - 1)
    (problem,) = memory.budget_problems(estimate, "named", capacity)
    assert "/dev/shm" in problem and "--shm-size" in problem
    assert memory.budget_problems(estimate, "memfd", capacity) == []
    with pytest.raises(sq.MemoryBudgetError) as raised:
        preflight(estimate, "named", check_memory=False, capacity=capacity)
    assert raised.value.estimate is estimate


def test_a_huge_header_fails_the_budget_naming_its_file(huge_header_file: Path) -> None:
    """A header that claims 2 PiB (a corrupt or wrong header) is named in the budget error."""
    path = huge_header_file
    subject = sq.Subject(t1=sq.ScalarImage(path), name="sub-huge")
    with pytest.raises(sq.MemoryBudgetError) as raised:
        sq.Queue([subject], sq.UniformSampler(None, 16), max_length=4, patches_per_volume=2)
    message = str(raised.value)
    assert f"set by subject 0 'sub-huge' (t1: '{path}')" in message


def test_per_node_budget_counts_every_rank(tensor_subjects: list[sq.Subject]) -> None:
    estimate = sq.estimate_memory(tensor_subjects, 8, num_workers=2, ranks_per_node=8)
    capacity = _capacity(estimate.total_per_rank * 4)
    assert memory.budget_problems(estimate, capacity=capacity) == []
    (problem,) = memory.budget_problems(estimate, capacity=capacity, per_node=True)
    assert "8 ranks" in problem


def test_cgroup_headroom_reads_v2_and_v1(tmp_path: Path) -> None:
    v2 = tmp_path / "v2"
    (v2 / "job").mkdir(parents=True)
    (v2 / "job" / "memory.max").write_text(f"{1024 * MiB}\n")
    (v2 / "job" / "memory.current").write_text(f"{700 * MiB}\n")
    (v2 / "job" / "memory.stat").write_text(f"anon 1\ninactive_file {100 * MiB}\n")
    (v2 / "memory.max").write_text("max\n")
    membership = tmp_path / "cgroup-v2"
    membership.write_text("0::/job\n")
    assert cgroup_headroom(v2, membership) == (1024 * MiB, 424 * MiB)

    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{2048 * MiB}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{48 * MiB}\n")
    membership.write_text("4:memory:/\n1:cpu:/\n")
    assert cgroup_headroom(tmp_path / "v1", membership) == (2048 * MiB, 2000 * MiB)

    (v1 / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # no limit
    assert cgroup_headroom(tmp_path / "v1", membership) is None


def test_memory_budget_error_pickles(tensor_subjects: list[sq.Subject]) -> None:
    import pickle

    estimate = sq.estimate_memory(tensor_subjects, 8)
    error = pickle.loads(pickle.dumps(sq.MemoryBudgetError("too big", estimate)))
    assert str(error) == "too big" and error.estimate == estimate


def test_return_free_memory_is_safe() -> None:
    before = torch.empty(8 * MiB, dtype=torch.uint8)
    del before
    return_free_memory()  # a no-op where glibc is absent; must never raise
