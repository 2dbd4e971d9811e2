"""OneOf and SomeOf: TorchIO's arguments, the choice's distribution, and the chosen augmentations
evaluated at the patches like any others (the same values as on the whole volume)."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
import torch
from test_augmentation_spatial import subject_on

import shmqueue as sq
from shmqueue.pipeline import SubjectPipeline
from shmqueue.plan import SubjectTask
from shmqueue.specs import UNKNOWN
from shmqueue.transforms import TransformGroup


def applied(choice: TransformGroup, seed: int) -> list[int]:
    """Which of ``choice``'s candidates one application (seeded ``seed``) applies, by index."""
    generator = torch.Generator().manual_seed(seed)
    if not choice.happens(generator):
        return []
    return [choice.transforms.index(member) for member in choice.members(generator)]


def test_one_of_normalises_its_weights_and_draws_by_them() -> None:
    choice = sq.OneOf({sq.Gamma(): 3, sq.Blur(): 1, sq.Noise(): 0})
    assert choice.weights == [0.75, 0.25, 0.0]
    counts = Counter(index for seed in range(2000) for index in applied(choice, seed))
    assert counts[2] == 0
    assert abs(counts[0] / 2000 - 0.75) < 0.04  # 4 standard deviations
    assert sq.OneOf([sq.Gamma(), sq.Blur()]).weights == [0.5, 0.5]


def test_p_gates_the_whole_choice() -> None:
    choice = sq.OneOf([sq.Gamma(), sq.Blur()], p=0.3)
    applications = [applied(choice, seed) for seed in range(2000)]
    assert abs(sum(bool(chosen) for chosen in applications) / 2000 - 0.3) < 0.04
    assert all(applied(sq.SomeOf([sq.Gamma()], p=0.0), seed) == [] for seed in range(20))


def test_some_of_draws_counts_in_its_range_with_or_without_replacement() -> None:
    candidates = [sq.Gamma(), sq.Blur(), sq.Noise()]
    without = sq.SomeOf(candidates, num_transforms=(1, 3))
    counts = Counter(len(applied(without, seed)) for seed in range(600))
    assert set(counts) == {1, 2, 3}
    draws = [applied(without, seed) for seed in range(50)]
    assert all(len(set(chosen)) == len(chosen) for chosen in draws)
    with_replacement = sq.SomeOf(candidates, num_transforms=3, replace=True)
    draws = [applied(with_replacement, seed) for seed in range(100)]
    assert all(len(chosen) == 3 for chosen in draws)
    assert any(len(set(chosen)) < 3 for chosen in draws)  # a candidate drawn twice
    orders = {tuple(applied(sq.SomeOf(candidates, num_transforms=3), seed)) for seed in range(60)}
    assert len(orders) == 6  # every order of the three


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda: sq.OneOf([]), ValueError, "at least one transform"),
        (lambda: sq.OneOf({sq.Gamma(): -1, sq.Blur(): 2}), ValueError, "non-negative"),
        (lambda: sq.OneOf({sq.Gamma(): 0}), ValueError, "at least one of them positive"),
        (lambda: sq.OneOf([sq.Gamma(), 3]), TypeError, "callables Subject -> Subject"),
        (lambda: sq.SomeOf([sq.Gamma()], num_transforms=(2, 1)), ValueError, "low <= high"),
        (lambda: sq.SomeOf([sq.Gamma()], num_transforms=-1), ValueError, "num_transforms"),
        (lambda: sq.OneOf([sq.Gamma()], p=2), ValueError, "probability"),
    ],
)
def test_bad_arguments_are_refused_by_name(build: Any, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        build()


def test_choices_of_augmentations_are_deferred_and_others_are_not() -> None:
    spatial = sq.Compose([sq.Affine(degrees=10), sq.Flip(axes=(0,))])
    assert sq.OneOf([spatial, sq.ElasticDeformation()]).deferrable
    assert sq.SomeOf([sq.Gamma(), sq.OneOf([sq.Blur(), sq.Noise()])]).deferrable
    assert not sq.OneOf([sq.Gamma(), sq.Lambda(lambda data: data)]).deferrable
    assert not sq.OneOf([sq.Gamma(), lambda subject: subject]).deferrable

    class Custom(sq.Compose):
        def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
            return subject

    assert not Custom([sq.Gamma()]).deferrable  # its own apply: run as a step of its own


def test_the_output_is_known_only_when_every_draw_gives_the_same() -> None:
    images = {name: spec for name, spec in _specs().items()}
    assert sq.OneOf([sq.Gamma(), sq.Affine()]).output_spec(images) == images
    one_hot = sq.OneHot(include=["seg"])
    assert sq.OneOf([one_hot, sq.Gamma()]).output_spec(images) is UNKNOWN
    assert sq.OneOf([one_hot]).output_spec(images) == one_hot.output_spec(images)
    assert sq.OneOf([one_hot], p=0.5).output_spec(images) is UNKNOWN
    assert sq.SomeOf([one_hot]).output_spec(images) is UNKNOWN


def _specs() -> Any:
    from shmqueue.augmentation.operations import subject_specs

    return subject_specs(subject_on())


def test_applying_and_deferring_draw_the_same_choice_and_parameters() -> None:
    choice = sq.SomeOf(
        [
            sq.Affine(degrees=20, scales=(0.8, 1.2)),
            sq.OneOf([sq.ElasticDeformation(max_displacement=3), sq.Flip(axes=(0, 1, 2))]),
            sq.Gamma(),
            sq.Noise(std=(0, 2)),
        ],
        num_transforms=(1, 4),
        p=0.9,
    )
    subject = subject_on()
    for seed in range(12):
        whole = choice(subject, torch.Generator().manual_seed(seed))
        operations = choice.draw(subject, torch.Generator().manual_seed(seed))
        deferred = choice.evaluate(subject, operations) if operations else subject
        np.testing.assert_allclose(deferred.t1.data, whole.t1.data, atol=1e-4 * 100)
        assert torch.equal(deferred.seg.data, whole.seg.data)


def test_the_pipeline_evaluates_chosen_augmentations_at_the_patches() -> None:
    transform = sq.Compose(
        [
            sq.OneOf({sq.Affine(degrees=25): 2, sq.ElasticDeformation(max_displacement=4): 1}),
            # no Noise: its voxels are drawn per region (the same distribution, not values)
            sq.SomeOf([sq.Gamma(), sq.Blur(std=(0.5, 1)), sq.Brightness()], (0, 2)),
            sq.Flip(axes=(0, 1, 2), flip_probability=0.5),
        ]
    )
    subjects = [subject_on(seed=seed) for seed in range(3)]
    sampler = sq.LabelSampler(None, 8, label_name="seg", label_probabilities={1: 1, 2: 1})
    layout = {"t1": (1, torch.float32), "seg": (1, torch.uint8)}
    for index in range(3):
        task = SubjectTask(0, index, index, 0, 5, seed=7 + index)
        (lazy, locations), (eager, eager_locations) = (
            SubjectPipeline(subjects, transform, sampler, layout, deferred).run(task)
            for deferred in (True, False)
        )
        assert not lazy.t1.is_loaded and eager.t1.is_loaded  # lazy: computed at the patches
        assert locations == eager_locations
        for location in locations:
            np.testing.assert_allclose(
                lazy.t1.voxels_at(*location), eager.t1.voxels_at(*location), atol=1e-4 * 100
            )
            assert torch.equal(lazy.seg.voxels_at(*location), eager.seg.voxels_at(*location))


def test_evaluating_drawn_operations_leaves_the_subject_alone() -> None:
    subject = subject_on()
    before = {name: image.data for name, image in subject.images.items()}
    operations = sq.Affine(degrees=20).draw(subject, torch.Generator().manual_seed(0))
    result = sq.Affine().evaluate(subject, operations)
    assert all(subject[name].data is data for name, data in before.items())
    assert not torch.equal(result.t1.data, subject.t1.data)
