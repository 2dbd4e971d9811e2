"""The cache of preprocessed subjects: keys, hits and misses, atomic entries, concurrent
fillers, bounds, and patches bit-identical to an uncached queue's (contract 2)."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

import shmqueue as sq
from shmqueue.cache import cached_prefix
from shmqueue.testing import strategies

TIMEOUT = 60.0

PIPELINES: dict[str, Callable[[], sq.Compose]] = {
    "preprocess then augment": lambda: sq.Compose(
        [
            sq.ToCanonical(),
            sq.Resample(1.3),
            sq.CropOrPad((28, 28, 24)),
            sq.ZNormalization(),
            sq.Affine(degrees=10, p=0.5),
            sq.Noise(std=0.1),
            sq.Flip(axes=(0, 1, 2)),
        ]
    ),
    "labels to int64 one-hot": lambda: sq.Compose(
        [
            sq.RemapLabels({1: 3}),
            sq.OneHot(num_classes=4),
            sq.RescaleIntensity(out_min_max=(0, 1)),
            sq.Gamma(log_gamma=(-0.3, 0.3)),
        ]
    ),
    "nothing to preprocess": lambda: sq.Compose([sq.Noise(std=0.1), sq.Flip(axes=(0,))]),
}


def _queue(subjects: list[sq.Subject], transform: Any, **options: Any) -> sq.Queue:
    sampler = sq.UniformSampler(None, patch_size=16)
    return sq.Queue(
        subjects,
        sampler,
        max_length=8,
        patches_per_volume=2,
        transform=transform,
        seed=3,
        deterministic=True,
        **options,
    )


def _patches(queue: sq.Queue, epochs: int = 1) -> list[dict[str, torch.Tensor]]:
    patches = []
    try:
        for epoch in range(epochs):
            queue.set_epoch(epoch)
            for patch in queue:
                patches.append({name: image.data.clone() for name, image in patch.images.items()})
    finally:
        queue.close()
    return patches


def _assert_same(
    expected: list[dict[str, torch.Tensor]], actual: list[dict[str, torch.Tensor]]
) -> None:
    assert len(expected) == len(actual)
    for first, second in zip(expected, actual):
        assert first.keys() == second.keys()
        for name in first:
            assert first[name].dtype == second[name].dtype
            assert torch.equal(first[name], second[name]), name


# Contract 2: a cached queue gives the uncached queue's patches ---------------------------------


@pytest.mark.parametrize("pipeline", sorted(PIPELINES))
@pytest.mark.parametrize("num_workers", [0, 2])
def test_cached_patches_are_bit_identical_on_miss_and_hit(
    nifti_subjects: list[sq.Subject], tmp_path: Path, pipeline: str, num_workers: int
) -> None:
    subjects = nifti_subjects[:3]
    reference = _patches(_queue(subjects, PIPELINES[pipeline]()), epochs=2)
    cache = sq.VolumeCache(tmp_path / "cache")
    filled = _patches(
        _queue(subjects, PIPELINES[pipeline](), cache_dir=cache, num_workers=num_workers), 2
    )
    assert cache.usage().entries == len(subjects)
    read = _patches(
        _queue(subjects, PIPELINES[pipeline](), cache_dir=cache, num_workers=num_workers), 2
    )
    _assert_same(reference, filled)
    _assert_same(reference, read)


def test_cached_patches_are_bit_identical_with_whole_volume_evaluation(
    nifti_subjects: list[sq.Subject], tmp_path: Path
) -> None:
    transform = PIPELINES["preprocess then augment"]
    subjects = nifti_subjects[:2]
    reference = _patches(_queue(subjects, transform(), patch_evaluation=False))
    for _ in ("miss", "hit"):
        cached = _queue(subjects, transform(), cache_dir=tmp_path, patch_evaluation=False)
        _assert_same(reference, _patches(cached))


# Hits, misses and what rebuilds ----------------------------------------------------------------


def _preprocess_counting(calls: list[int], steps: list[Any]) -> Callable[[sq.Subject], sq.Subject]:
    def preprocess(subject: sq.Subject) -> sq.Subject:
        calls.append(1)
        subject.load()
        for step in steps:
            subject = step(subject)
        return subject

    return preprocess


def test_a_miss_then_a_hit(nifti_subjects: list[sq.Subject], tmp_path: Path) -> None:
    cache = sq.VolumeCache(tmp_path)
    steps = cached_prefix(PIPELINES["preprocess then augment"]())
    calls: list[int] = []
    built, hit = cache.preprocessed(
        nifti_subjects[0].copy(), steps, _preprocess_counting(calls, steps)
    )
    assert not hit
    read, hit = cache.preprocessed(
        nifti_subjects[0].copy(), steps, _preprocess_counting(calls, steps)
    )
    assert hit and len(calls) == 1
    assert read.t1.spatial_shape == (28, 28, 24)
    for name, image in built.images.items():
        assert torch.equal(image.data, read[name].data)
        np.testing.assert_array_equal(image.affine, read[name].affine)
        assert type(read[name]) is type(image) and read[name].path == image.path
    assert read["name"] == nifti_subjects[0]["name"]  # metadata comes back too


def _rewrite(image: sq.Image, make_nifti: Callable[..., Path], array: np.ndarray) -> None:
    """Write ``array`` to ``image``'s file with the same header, and a modification time that
    differs even on file systems whose times are coarse."""
    assert image.path is not None
    path = image.path
    before = path.stat().st_mtime_ns
    make_nifti(path.name, array, image.affine)
    os.utime(path, ns=(before + 2_000_000_000, before + 2_000_000_000))


def test_a_modified_file_rebuilds_its_entry(
    nifti_subjects: list[sq.Subject], make_nifti: Callable[..., Path], tmp_path: Path
) -> None:
    subject = nifti_subjects[0]
    cache = sq.VolumeCache(tmp_path / "cache")
    calls: list[int] = []
    cache.preprocessed(subject.copy(), [], _preprocess_counting(calls, []))
    path = subject.t1.path
    original = np.asarray(subject.t1.data[0].numpy(), dtype=np.int16)
    _rewrite(subject.t1, make_nifti, original + 7)
    read, hit = cache.preprocessed(
        sq.Subject(t1=sq.ScalarImage(path)), [], _preprocess_counting(calls, [])
    )
    assert not hit and len(calls) == 2
    assert torch.equal(read.t1.data[0], torch.from_numpy(original + 7).float())


def test_a_changed_parameter_rebuilds_and_the_old_entry_stays(
    nifti_subjects: list[sq.Subject], tmp_path: Path
) -> None:
    cache = sq.VolumeCache(tmp_path)
    calls: list[int] = []
    subject = nifti_subjects[0]
    for out_max in (1.0, 2.0, 1.0):
        steps: list[Any] = [sq.RescaleIntensity(out_min_max=(0, out_max))]
        read, _ = cache.preprocessed(subject.copy(), steps, _preprocess_counting(calls, steps))
        assert float(read.t1.data.max()) == out_max
    assert len(calls) == 2 and cache.usage().entries == 2


def test_content_hash_ignores_times_and_sees_content(
    nifti_subjects: list[sq.Subject], make_nifti: Callable[..., Path], tmp_path: Path
) -> None:
    subject = nifti_subjects[0]
    path = subject.t1.path
    cache = sq.VolumeCache(tmp_path / "cache", content_hash=True)
    calls: list[int] = []
    cache.preprocessed(subject.copy(), [], _preprocess_counting(calls, []))
    os.utime(path, ns=(1, 1))  # a copy that did not keep the times
    assert cache.preprocessed(subject.copy(), [], _preprocess_counting(calls, []))[1]
    status = path.stat()
    make_nifti(path.name, np.zeros(subject.t1.spatial_shape, dtype=np.int16), subject.t1.affine)
    os.utime(path, ns=(status.st_atime_ns, status.st_mtime_ns))  # same time, new content
    assert not cache.preprocessed(subject.copy(), [], _preprocess_counting(calls, []))[1]
    assert len(calls) == 2


def _function_of(offset: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def shifted(tensor: torch.Tensor) -> torch.Tensor:
        return tensor + offset

    return shifted


def _doubled(tensor: torch.Tensor) -> torch.Tensor:
    return tensor * 2


def _tripled(tensor: torch.Tensor) -> torch.Tensor:
    return tensor * 3


def test_the_key_sees_into_functions_and_refuses_what_it_cannot(
    nifti_subjects: list[sq.Subject], tmp_path: Path
) -> None:
    cache = sq.VolumeCache(tmp_path)
    subject = nifti_subjects[0]

    def key(function: Callable[[torch.Tensor], torch.Tensor]) -> str:
        return cache.key(subject, [sq.Lambda(function)])

    assert key(_function_of(1.0)) == key(_function_of(1.0))  # another process: same key
    assert key(_function_of(1.0)) != key(_function_of(2.0))  # the closure's value
    tripled = _tripled
    tripled_code = _tripled.__code__
    assert key(_doubled) != key(tripled)
    _doubled_code = _doubled.__code__
    try:  # the same function, edited: the code differs
        _doubled.__code__ = tripled_code
        assert key(_doubled) != cache.key(subject, [sq.Lambda(_function_of(0.0))])
    finally:
        _doubled.__code__ = _doubled_code
    opaque = object()
    with pytest.raises(sq.CacheKeyError, match=r"cached step 1 \(Lambda\).*object object at"):
        key(lambda tensor: tensor + (opaque is None))


# Atomic entries and concurrent fillers -------------------------------------------------------


def _write_then_hang(directory: Path, subject: sq.Subject, ready: Any, hold: Any) -> None:
    """Store ``subject``, telling ``ready`` after its first array and then waiting on ``hold``
    (until killed: a pipe, not an Event, whose bookkeeping a killed waiter would corrupt)."""
    real_save = np.save

    def save_and_wait(*args: Any, **kwargs: Any) -> None:
        real_save(*args, **kwargs)
        ready.send(True)
        hold.poll(TIMEOUT)

    np.save = save_and_wait  # type: ignore[assignment]
    cache = sq.VolumeCache(directory)
    steps: list[Any] = []
    cache.preprocessed(subject, steps, _preprocess_counting([], steps))


def test_a_writer_killed_midway_leaves_no_entry_that_is_read(
    nifti_subjects: list[sq.Subject], tmp_path: Path
) -> None:
    context = multiprocessing.get_context("fork")
    ready_reader, ready_writer = context.Pipe(duplex=False)
    hold_reader, hold_writer = context.Pipe(duplex=False)
    subject = nifti_subjects[0]  # two images: killed after the first
    writer = context.Process(
        target=_write_then_hang, args=(tmp_path, subject, ready_writer, hold_reader)
    )
    writer.start()
    try:
        assert ready_reader.poll(TIMEOUT), "the writer never wrote its first array"
        os.kill(writer.pid or 0, signal.SIGKILL)
    finally:
        writer.kill()
        writer.join(TIMEOUT)
        for connection in (ready_reader, ready_writer, hold_reader, hold_writer):
            connection.close()
    assert writer.exitcode == -signal.SIGKILL
    cache = sq.VolumeCache(tmp_path)
    assert cache.read(cache.key(subject, [])) is None
    assert any((tmp_path / "building").iterdir())  # the partial entry, never renamed
    usage = cache.usage()  # removes what the dead writer left
    assert (usage.entries, usage.building) == (0, 0)
    calls: list[int] = []
    read, hit = cache.preprocessed(subject.copy(), [], _preprocess_counting(calls, []))
    assert not hit and len(calls) == 1
    assert torch.equal(read.t1.data, subject.t1.data)


def _fill(directory: str, subject: sq.Subject, barrier: Any, built: Any) -> None:
    torch.set_num_threads(1)  # as a worker: a forked child must not use the parent's OpenMP pool
    cache = sq.VolumeCache(directory)
    steps: list[Any] = [sq.Resample(1.5)]
    barrier.wait(TIMEOUT)

    def preprocess(subject: sq.Subject) -> sq.Subject:
        with built.get_lock():
            built.value += 1
        subject.load()
        return steps[0](subject)

    read, _ = cache.preprocessed(subject, steps, preprocess)
    expected = steps[0](subject.copy())
    assert all(torch.equal(read[name].data, expected[name].data) for name in expected.images)


def test_two_processes_fill_the_same_entry_once(
    nifti_subjects: list[sq.Subject], tmp_path: Path
) -> None:
    context = multiprocessing.get_context("fork")
    barrier, built = context.Barrier(2), context.Value("i", 0)
    fillers = [
        context.Process(target=_fill, args=(str(tmp_path), nifti_subjects[1], barrier, built))
        for _ in range(2)
    ]
    for filler in fillers:
        filler.start()
    for filler in fillers:
        filler.join(TIMEOUT)
        filler.kill()  # only if it hung: then the exit codes below fail the test
        filler.join(TIMEOUT)
    assert [filler.exitcode for filler in fillers] == [0, 0]
    assert built.value == 1  # the second waited on the first's lock, then read its entry
    usage = sq.VolumeCache(tmp_path).usage()
    assert (usage.entries, usage.building) == (1, 0)
    assert not any((tmp_path / "locks").iterdir())


def test_a_damaged_entry_is_removed_and_rebuilt(
    nifti_subjects: list[sq.Subject], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = sq.VolumeCache(tmp_path)
    subject = nifti_subjects[0]
    calls: list[int] = []
    cache.preprocessed(subject.copy(), [], _preprocess_counting(calls, []))
    (array,) = (tmp_path / "entries").glob("*/*/image-0.npy")
    with open(array, "r+b") as file:
        file.truncate(array.stat().st_size // 2)
    with caplog.at_level(logging.WARNING, logger="shmqueue"):
        read, hit = cache.preprocessed(subject.copy(), [], _preprocess_counting(calls, []))
    assert not hit and len(calls) == 2 and "damaged cache entry" in caplog.text
    assert torch.equal(read.t1.data, subject.t1.data)
    assert cache.read(cache.key(subject, [])) is not None


# Size ------------------------------------------------------------------------------------------


def test_the_bound_removes_the_least_recently_read(
    nifti_subjects: list[sq.Subject], tmp_path: Path
) -> None:
    unbounded = sq.VolumeCache(tmp_path)
    keys = []
    for subject in nifti_subjects[:3]:
        unbounded.preprocessed(subject.copy(), [], _preprocess_counting([], []))
        keys.append(unbounded.key(subject, []))
    entry_bytes = unbounded.usage().bytes // 3
    first = unbounded.read(keys[0])  # read last: kept
    assert first is not None
    bounded = sq.VolumeCache(tmp_path, max_size=int(entry_bytes * 2.5))
    bounded.prune(bounded.max_bytes or 0)
    assert bounded.usage().entries == 2
    assert bounded.read(keys[1]) is None and bounded.read(keys[0]) is not None
    assert sq.VolumeCache(tmp_path).clear() > 0 and unbounded.usage().bytes == 0


def test_a_subject_larger_than_the_bound_is_not_stored(
    nifti_subjects: list[sq.Subject], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = sq.VolumeCache(tmp_path, max_size="1 KiB")
    with caplog.at_level(logging.WARNING, logger="shmqueue"):
        _, hit = cache.preprocessed(nifti_subjects[0].copy(), [], _preprocess_counting([], []))
    assert not hit and "exceed the cache's max_size of 1.0 KiB" in caplog.text
    usage = cache.usage()
    assert (usage.entries, usage.bytes, usage.building) == (0, 0, 0)
    assert "max 1.0 KiB" in str(usage)


def test_an_unwritable_directory_is_refused_by_name(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    with pytest.raises(sq.CacheError, match=f"Cannot use '{blocked}/cache'"):
        sq.VolumeCache(blocked / "cache")
    with pytest.raises(ValueError, match="max_size must be a number of bytes"):
        sq.VolumeCache(tmp_path, max_size="lots")


# Reading through the page cache ----------------------------------------------------------------


def _anonymous_bytes() -> int:
    for line in Path("/proc/self/smaps_rollup").read_text().splitlines():
        if line.startswith("Anonymous:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Anonymous line in smaps_rollup")


def test_a_hit_maps_the_volume_and_a_patch_reads_only_its_region(tmp_path: Path) -> None:
    volume = torch.rand(1, 256, 256, 256)  # 64 MiB
    subject = sq.Subject(t1=sq.ScalarImage(volume))
    cache = sq.VolumeCache(tmp_path)
    cache.preprocessed(subject.copy(), [], _preprocess_counting([], []))
    del volume, subject
    (entry,) = (tmp_path / "entries").glob("*/*")
    before = _anonymous_bytes()
    read = cache.read(entry.name)
    assert read is not None
    patch = read.t1.voxels_at((100, 100, 100), (32, 32, 32)).clone()
    total = float(read.t1.data.sum())  # every page touched: from the page cache, not copied
    grown = _anonymous_bytes() - before
    assert patch.shape == (1, 32, 32, 32) and total > 0
    assert grown < 16 * 1024**2, f"anonymous memory grew by {grown} B reading a 64 MiB entry"


# shmqueue cache --------------------------------------------------------------------------------

QUEUE_SCRIPT = """
import shmqueue as sq

def queue():
    subjects = [sq.Subject(t1=sq.ScalarImage(path)) for path in {paths!r}]
    transform = sq.Compose([sq.ToCanonical(), sq.Resample(1.5), sq.Noise()])
    return sq.Queue(subjects, sq.UniformSampler(None, 8), max_length=4, patches_per_volume=2,
                    transform=transform, cache_dir={cache!r})
"""


@pytest.mark.parametrize("num_workers", ["0", "1"])
def test_the_command_fills_what_the_queue_then_reads(
    nifti_subjects: list[sq.Subject],
    tmp_path: Path,
    num_workers: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from shmqueue.cli import main

    paths = [str(subject.t1.path) for subject in nifti_subjects[:3]]
    script = tmp_path / "training_setup.py"
    script.write_text(QUEUE_SCRIPT.format(paths=paths, cache=str(tmp_path / "cache")))
    target = f"{script}:queue"
    assert main(["cache", "fill", target, "--num-workers", num_workers, "--no-progress"]) == 0
    assert "3 subject(s) preprocessed, 0 already cached" in capsys.readouterr().out
    assert main(["cache", "fill", target, "--num-workers", num_workers, "--no-progress"]) == 0
    assert "0 subject(s) preprocessed, 3 already cached" in capsys.readouterr().out
    assert main(["cache", "info", str(tmp_path / "cache"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"] == 3
    subjects = [sq.Subject(t1=sq.ScalarImage(path)) for path in paths]
    transform = sq.Compose([sq.ToCanonical(), sq.Resample(1.5), sq.Noise()])
    cache = sq.VolumeCache(tmp_path / "cache")
    steps = cached_prefix(transform)
    assert all(cache.read(cache.key(subject, steps)) is not None for subject in subjects)
    assert main(["cache", "clear", str(tmp_path / "cache")]) == 0
    assert cache.usage().entries == 0


def test_the_command_names_a_bad_target(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from shmqueue.cli import main

    assert main(["cache", "fill", "no-colon"]) == 2
    assert "TARGET must be module:name" in capsys.readouterr().err
    assert main(["cache", "fill", "json:JSONDecoder", "--cache-dir", str(tmp_path)]) == 2
    assert "needs a Queue or a SubjectsDataset" in capsys.readouterr().err


# The estimator -------------------------------------------------------------------------------


def test_the_estimate_predicts_the_disk_the_cache_takes(
    nifti_subjects: list[sq.Subject], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transform = PIPELINES["labels to int64 one-hot"]()
    queue = _queue(nifti_subjects, transform, cache_dir=tmp_path / "cache")
    predicted = queue.estimate_memory().cache_disk
    assert "cache of preprocessed subjects, on disk" in str(queue.estimate_memory())
    _patches(queue)
    stored = sq.VolumeCache(tmp_path / "cache").usage().bytes
    assert predicted <= stored <= predicted * 1.02  # the pickled subjects and summaries
    assert _queue(nifti_subjects, transform).estimate_memory().cache_disk == 0
    with caplog.at_level(logging.WARNING, logger="shmqueue"):
        _queue(nifti_subjects, transform, cache_dir=sq.VolumeCache(tmp_path / "small", max_size=1))
    assert "the subjects that do not fit will be preprocessed every epoch" in caplog.text


# Contract 12, as a property ------------------------------------------------------------------


@given(
    subject=strategies.subjects(with_label=True),
    transform=strategies.transforms(),
    seed=st.integers(0, 2**31),
)
@hypothesis_settings(max_examples=10)
def test_any_cached_queue_yields_the_uncached_queues_patches(
    subject: sq.Subject, transform: sq.Compose | None, seed: int
) -> None:
    subjects = [subject, subject.copy()]
    preprocessing = [sq.RescaleIntensity((0.0, 1.0)), sq.Clamp(0.1, 0.9)]
    steps = preprocessing + ([] if transform is None else list(transform.transforms))
    patch = tuple(min(4, side) for side in subject.spatial_shape)

    def patches(cache: sq.VolumeCache | None) -> list[dict[str, torch.Tensor]]:
        queue = sq.Queue(
            subjects,
            sq.UniformSampler(None, patch),
            max_length=4,
            patches_per_volume=2,
            transform=sq.Compose(steps),
            seed=seed,
            cache_dir=cache,
        )
        return _patches(queue, epochs=2)

    reference = patches(None)
    with tempfile.TemporaryDirectory() as directory:
        cache = sq.VolumeCache(directory)
        _assert_same(reference, patches(cache))  # filled
        _assert_same(reference, patches(cache))  # read
        assert cache.usage().entries == 1  # the two subjects are one, by value
