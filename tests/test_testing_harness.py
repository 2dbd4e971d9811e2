"""shmqueue.testing: generated queues keep contracts 1-4 and 6, and broken ones are caught.

The property tests leave ``max_examples`` to the hypothesis profile (``HYPOTHESIS_PROFILE``, see
conftest.py): ``ci`` runs a handful of queue configurations, ``thorough`` hundreds. Most draw no
workers; some draw one or two forked workers, the slow part of an example.

The broken fixtures check that each checker fails when it should, naming the right contract and
pointing at the cause.
"""

from __future__ import annotations

import random
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

import shmqueue as sq
import shmqueue.engine.consumer
import shmqueue.in_process
from shmqueue.plan import Take
from shmqueue.sampling.base import PATCH_LOCATION_KEY, PatchLocation
from shmqueue.sampling.grid import PADDING_MODES
from shmqueue.testing import (
    Contract,
    QueueReport,
    check_queue,
    check_sampler,
    check_transform,
    strategies,
)

WORKERS = st.sampled_from((0, 0, 0, 0, 0, 1, 2))


def _configs(num_workers: int) -> st.SearchStrategy[strategies.QueueConfig]:
    padding = (None, *PADDING_MODES)
    return strategies.queue_configs(num_workers=st.just(num_workers), padding_modes=padding)


@given(config=WORKERS.flatmap(_configs), batch_size=st.none() | st.integers(1, 5))
def test_generated_queues_keep_their_contracts(
    config: strategies.QueueConfig, batch_size: int | None
) -> None:
    event(f"num_workers={config.num_workers}")
    event(f"sampler={type(config.sampler).__name__}")
    report = check_queue(config.build, epochs=2, batch_size=batch_size)
    report.raise_for_failures()
    assert report.epochs == [0, 1]
    assert report.patches >= 2 * len(config.subject_sampler or config.subjects)


@given(
    subject=strategies.subjects(with_label=True),
    transform=strategies.transforms().filter(lambda transform: transform is not None),
)
def test_library_transforms_pass_check_transform(
    subject: sq.Subject, transform: sq.Transform
) -> None:
    report = check_transform(transform, subject, seeds=(0, 1))
    report.raise_for_failures()
    assert report.seeds == [0, 1]


@given(data=st.data())
def test_library_samplers_pass_check_sampler(data: st.DataObject) -> None:
    kind = data.draw(st.sampled_from(strategies.SAMPLER_KINDS))
    subject = data.draw(strategies.subjects(with_label=True, with_probability=True))
    patch_size = data.draw(strategies.patch_sizes(fits=subject.spatial_shape))
    sampler = data.draw(strategies.samplers(patch_size, kind=kind))
    report = check_sampler(sampler, subject, num_patches=3, seeds=(0, 1))
    report.raise_for_failures()
    assert report.num_patches == 3


def test_strategies_draw_thin_anisotropic_shapes_within_the_voxel_budget() -> None:
    shapes = set()

    @given(shape=strategies.spatial_shapes(min_shape=(2, 1, 3)))
    def collect(shape: tuple[int, int, int]) -> None:
        shapes.add(shape)
        assert np.prod(shape) <= strategies.MAX_VOXELS
        assert all(side >= low for side, low in zip(shape, (2, 1, 3)))
        assert max(shape) <= strategies.MAX_SIDE

    collect()
    assert shapes


# Fixtures for the broken cases -------------------------------------------------------------------


def _subjects(count: int = 3) -> list[sq.Subject]:
    generator = torch.Generator().manual_seed(0)
    return [
        sq.Subject(
            t1=sq.ScalarImage(torch.rand(1, 12, 10, 8, generator=generator)),
            seg=sq.LabelMap(
                torch.randint(0, 3, (1, 12, 10, 8), generator=generator, dtype=torch.uint8)
            ),
            name=f"sub-{index}",
        )
        for index in range(count)
    ]


def _queue(queue_type: type[sq.Queue] = sq.Queue, **options: Any) -> sq.Queue:
    settings: dict[str, Any] = {
        "max_length": 6,
        "patches_per_volume": 3,
        "seed": 7,
        "multiprocessing_context": "fork",
    }
    settings.update(options)
    return queue_type(_subjects(), sq.UniformSampler(None, 4), **settings)


def _failures(report: QueueReport, contract: Contract) -> list[str]:
    return [str(failure) for failure in report.failures if failure.contract is contract]


class _GlobalTorchNoise(sq.Transform):
    """Broken: noise from torch's global generator."""

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        subject["t1"] = subject.t1.with_data(subject.t1.data + torch.rand(subject.t1.shape))
        return subject


class _GlobalNumpyNoise(sq.Transform):
    """Broken: noise from numpy's global generator."""

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        noise = torch.from_numpy(np.random.rand(*subject.t1.shape).astype(np.float32))
        subject["t1"] = subject.t1.with_data(subject.t1.data + noise)
        return subject


class _GlobalRandomShift(sq.Transform):
    """Broken: an intensity shift from Python's global generator."""

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        subject["t1"] = subject.t1.with_data(subject.t1.data + random.random())
        return subject


# check_transform ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("transform", "source"),
    [
        (_GlobalTorchNoise(), "torch"),
        (_GlobalNumpyNoise(), "numpy"),
        (_GlobalRandomShift(), "random"),
    ],
)
def test_check_transform_names_the_global_generator_used(
    transform: sq.Transform, source: str
) -> None:
    report = check_transform(transform, _subjects(1)[0])
    assert not report.ok
    assert report.contracts() == {Contract.GLOBAL_RANDOMNESS}
    assert f"the global seed of {source} changed" in str(report)
    with pytest.raises(AssertionError, match="no global random state"):
        report.raise_for_failures()


def test_check_transform_restores_the_global_generators() -> None:
    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    check_transform(_GlobalTorchNoise(), _subjects(1)[0])
    assert torch.equal(torch.rand(4), expected)


class _Unseeded(sq.Transform):
    """Broken: a fresh generator of its own, ignoring the one passed in."""

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        return sq.Noise()(subject, sq.transforms.fresh_generator())


class _InPlace(sq.Transform):
    """Broken: writes into the input's tensor."""

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        subject.t1.data.mul_(2)
        return subject


class _Crop(sq.Transform):
    """Broken: changes the spatial shape."""

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        for name, image in subject.images.items():
            subject[name] = image.with_data(image.data[:, 1:])
        return subject


class _Widen(sq.Transform):
    """Broken: the label map becomes int64 with a new label."""

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        subject["seg"] = subject.seg.with_data(subject.seg.data.to(torch.int64) + 7)
        return subject


@pytest.mark.parametrize(
    ("transform", "contract", "cause"),
    [
        (_Unseeded(), Contract.DETERMINISM, "the same generator seed"),
        (_InPlace(), Contract.INPUT_UNCHANGED, "wrote into the input's tensors of image(s) ['t1']"),
        (_Crop(), Contract.SHAPE, "changed shape from (1, 12, 10, 8) to (1, 11, 10, 8)"),
        (
            sq.Lambda(lambda data: data.to(torch.float64), types_to_apply=(sq.ScalarImage,)),
            Contract.DTYPE,
            "changed dtype from torch.float32 to torch.float64",
        ),
        (sq.Lambda(lambda data: data * 2), Contract.PICKLABLE, "cannot be pickled"),
    ],
    ids=["unseeded", "in-place", "crop", "dtype", "lambda"],
)
def test_check_transform_catches_broken_transforms(
    transform: sq.Transform, contract: Contract, cause: str
) -> None:
    report = check_transform(transform, _subjects(1)[0])
    assert contract in report.contracts()
    assert cause in str(report)


def test_check_transform_checks_label_values_unless_told_otherwise() -> None:
    strict = check_transform(_Widen(), _subjects(1)[0])
    assert strict.contracts() == {Contract.DTYPE, Contract.LABEL_VALUES}
    assert "has values [7, 8, 9]" in str(strict)
    relaxed = check_transform(_Widen(), _subjects(1)[0], keeps_label_values=False)
    assert relaxed.contracts() == {Contract.DTYPE}


def test_check_transform_accepts_plain_callables() -> None:
    report = check_transform(lambda subject: subject, _subjects(1)[0])
    assert report.contracts() == {Contract.PICKLABLE}  # a lambda cannot go to spawn workers


# check_sampler -----------------------------------------------------------------------------------


class _ViewSampler(sq.UniformSampler):
    """Broken: patches are views into the volume."""

    def __call__(
        self,
        subject: sq.Subject,
        num_patches: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Iterator[sq.Subject]:
        assert num_patches is not None and generator is not None
        for location in self.locations(subject, num_patches, generator):
            region = (slice(None), *location.to_slices())
            images = {
                name: image.with_data(image.data[region]) for name, image in subject.images.items()
            }
            yield sq.Subject({**subject.metadata, **images, PATCH_LOCATION_KEY: location})


class _OutsideSampler(sq.UniformSampler):
    """Broken: the last location runs past the volume, and one location too many."""

    def locations(
        self, subject: sq.Subject, num_patches: int, generator: torch.Generator
    ) -> list[PatchLocation]:
        found = super().locations(subject, num_patches, generator)
        return [*found, PatchLocation(subject.spatial_shape, self.patch_size)]


class _GlobalSampler(sq.UniformSampler):
    """Broken: positions from torch's global generator."""

    def locations(
        self, subject: sq.Subject, num_patches: int, generator: torch.Generator
    ) -> list[PatchLocation]:
        return super().locations(subject, num_patches, torch.default_generator)


def test_check_sampler_catches_views() -> None:
    report = check_sampler(_ViewSampler(None, 4), _subjects(1)[0])
    assert report.contracts() == {Contract.PATCH_COPIES}
    assert "shares storage with the subject's volume" in str(report)
    assert "it is a view" in str(report)


def test_check_sampler_catches_locations_outside_and_wrong_counts() -> None:
    report = check_sampler(_OutsideSampler(None, 4), _subjects(1)[0], num_patches=2)
    assert {Contract.LOCATIONS_INSIDE, Contract.PATCH_COUNT} <= report.contracts()
    assert "location (12, 10, 8) of size (4, 4, 4) is not a patch" in str(report)
    assert "locations() gave 3 locations for 2 asked" in str(report)


def test_check_sampler_catches_global_randomness() -> None:
    report = check_sampler(_GlobalSampler(None, 4), _subjects(1)[0])
    assert report.contracts() == {Contract.GLOBAL_RANDOMNESS}
    assert "the global seed of torch changed" in str(report)


def test_check_sampler_counts_finite_samplers_by_what_they_have() -> None:
    grid = sq.GridSampler(None, (12, 10, 4), patch_overlap=(0, 0, 2), padding_mode="reflect")
    report = check_sampler(grid, _subjects(1)[0], num_patches=50)
    report.raise_for_failures()
    assert grid.max_patches((12, 10, 8)) < 50


# check_queue -------------------------------------------------------------------------------------


def test_check_queue_passes_on_a_queue_instance_and_leaves_it_open() -> None:
    with _queue(num_workers=1, deterministic=True) as queue:
        report = check_queue(queue, epochs=2, batch_size=4)
        report.raise_for_failures()
        assert queue.epoch == 2
        assert sum(1 for _ in queue) == len(queue)
    assert report.patches == 2 * len(queue)
    assert "OK" in str(report)


def test_check_queue_catches_a_transform_using_global_randomness() -> None:
    report = check_queue(lambda: _queue(transform=_GlobalTorchNoise()), epochs=1)
    assert Contract.FIDELITY in report.contracts()
    assert "image 't1':" in str(report)
    assert "voxels differ" in str(report)


def test_check_queue_catches_a_dropped_patch_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    schedule = shmqueue.in_process.mixing_schedule

    def drop_third_take(*args: Any) -> Iterator[Any]:
        takes = 0
        for step in schedule(*args):
            if isinstance(step, Take):
                takes += 1
                if takes == 3:
                    continue
            yield step

    monkeypatch.setattr(shmqueue.in_process, "mixing_schedule", drop_third_take)
    report = check_queue(lambda: _queue(shuffle_patches=False, shuffle_subjects=False))
    assert Contract.COMPLETENESS in report.contracts()
    message = _failures(report, Contract.COMPLETENESS)[0]
    assert "epoch 0, subject 0 'sub-0'" in message
    assert "yielded 2 of its 3 planned patches; missing patch(es) [2]" in message


class _DroppingQueue(sq.Queue):
    """Broken: loses the fifth patch of every epoch."""

    def __iter__(self) -> Iterator[sq.Subject]:
        for number, patch in enumerate(super().__iter__()):
            if number != 4:
                yield patch


def test_check_queue_catches_a_dropped_patch_with_workers() -> None:
    report = check_queue(lambda: _queue(_DroppingQueue, num_workers=1), epochs=1)
    assert Contract.COMPLETENESS in report.contracts()
    assert "yielded 2 of its 3 planned patches" in str(report)
    with pytest.raises(AssertionError, match=r"\[epoch completeness \(contract 1\)\] epoch 0"):
        report.raise_for_failures()


class _RepeatingQueue(sq.Queue):
    """Broken: yields its second patch twice (a slot read twice)."""

    def __iter__(self) -> Iterator[sq.Subject]:
        for number, patch in enumerate(super().__iter__()):
            yield patch
            if number == 1:
                yield sq.Subject(
                    {
                        key: value.with_data(value.data.clone())
                        if isinstance(value, sq.Image)
                        else value
                        for key, value in patch.items()
                    }
                )


def test_check_queue_catches_a_patch_yielded_twice() -> None:
    report = check_queue(lambda: _queue(_RepeatingQueue), epochs=1)
    assert report.contracts() == {Contract.SLOT_DISCIPLINE}
    assert "was yielded more often than planned" in str(report)


class _CorruptingQueue(sq.Queue):
    """Broken: one voxel of the first patch is off by one."""

    def __iter__(self) -> Iterator[sq.Subject]:
        for number, patch in enumerate(super().__iter__()):
            if number == 0:
                data = patch.t1.data.clone()
                data[0, 1, 2, 3] += 1
                patch["t1"] = patch.t1.with_data(data)
            yield patch


def test_check_queue_catches_a_corrupted_patch() -> None:
    report = check_queue(
        lambda: _queue(_CorruptingQueue, shuffle_subjects=False, shuffle_patches=False), epochs=1
    )
    assert report.contracts() == {Contract.FIDELITY}
    assert "1 of 64 voxels differ; the first at (c, x, y, z) = (0, 1, 2, 3)" in str(report)
    assert "subject 0 'sub-0'" in str(report)


def _ring_view(patch: torch.Tensor) -> torch.Tensor:
    """Broken: hands out the slot's view into the ring instead of a copy."""
    return patch


def test_check_queue_catches_patches_pointing_into_the_ring(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(shmqueue.engine.consumer, "_copy_out", _ring_view)
    report = check_queue(lambda: _queue(num_workers=1), epochs=1)
    assert Contract.SLOT_DISCIPLINE in report.contracts()
    assert "points into the shared-memory ring instead of owning a copy" in str(report)


class _OverfullQueue(sq.Queue):
    """Broken: its statistics report more patches than max_length."""

    def stats(self) -> sq.QueueStats:
        return sq.QueueStats(max_length=self.max_length, ready=self.max_length, in_workers=1)


def test_check_queue_catches_an_overfull_buffer() -> None:
    report = check_queue(lambda: _queue(_OverfullQueue), epochs=1)
    assert report.contracts() == {Contract.BOUNDED_BUFFER}
    assert "reports 6 patches ready and 1 in workers" in str(report)


class _ReorderingQueue(sq.Queue):
    """Broken: with deterministic=True, yields the epoch in reverse order."""

    def __iter__(self) -> Iterator[sq.Subject]:
        yield from reversed(list(super().__iter__()))


def test_check_queue_catches_a_deterministic_order_that_differs() -> None:
    report = check_queue(lambda: _queue(_ReorderingQueue, deterministic=True), epochs=1)
    assert report.contracts() == {Contract.REPRODUCIBILITY}
    assert "but the reference order (num_workers=0" in str(report)


def test_check_queue_notes_factories_without_a_seed() -> None:
    report = check_queue(lambda: _queue(seed=None), epochs=1)
    report.raise_for_failures()
    assert any("different seeds" in note for note in report.notes)


def test_check_queue_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        check_queue(_queue, epochs=0)
    with pytest.raises(ValueError, match="batch_size must be None or >= 1"):
        check_queue(_queue, batch_size=0)


def test_plan_is_pure_and_matches_the_epoch() -> None:
    with _queue() as queue:
        plan = queue.plan(3)
        assert queue.plan(3) == plan
        assert queue.epoch == 0
        assert plan.total_patches == len(queue)
        seeds = {task.seed for task in plan.tasks}
        assert seeds.isdisjoint(task.seed for task in queue.plan(4).tasks)


# The optional dependency ------------------------------------------------------------------------


def test_importing_without_hypothesis_says_how_to_install_it() -> None:
    code = "import sys; sys.modules['hypothesis'] = None; import shmqueue.testing"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "pip install shmqueue[testing]" in result.stderr


def test_shmqueue_does_not_import_the_testing_module() -> None:
    code = "import sys, shmqueue; assert 'shmqueue.testing' not in sys.modules"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
