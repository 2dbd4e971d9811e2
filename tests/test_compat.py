"""TorchIO 1.x call forms: Queue's positional form and keyword names, SubjectsDataset, samplers
from the patch size alone, the key constants, GridAggregator, RandomFlip and RandomNoise."""

from __future__ import annotations

from typing import Any

import nibabel as nib
import pytest
import torch

import shmqueue as sq
from shmqueue.errors import SubjectProcessingError


def spheres(count: int = 3, size: int = 16) -> list[sq.Subject]:
    grid = torch.stack(torch.meshgrid(*[torch.arange(size) - size / 2] * 3, indexing="ij"))
    label = (grid.pow(2).sum(dim=0).sqrt() < size / 4).to(torch.uint8)[None]
    return [
        sq.Subject(
            t1=sq.ScalarImage(label.float() * (index + 1) + torch.rand(label.shape)),
            seg=sq.LabelMap(label),
            map=sq.ScalarImage(label.float()),
            name=f"sub-{index}",
        )
        for index in range(count)
    ]


def patch_stream(queue: sq.Queue) -> list[tuple[Any, ...]]:
    with queue:
        return [(patch["name"], patch["patch_location"]) for patch in queue]


# Queue --------------------------------------------------------------------------------------------


def test_torchio1_positional_queue_is_the_keyword_queue() -> None:
    subjects = spheres()
    sampler = sq.UniformSampler(8)
    torchio1 = sq.Queue(subjects, 6, 3, sampler, shuffle_subjects=False, seed=0)
    native = sq.Queue(subjects, sampler, max_length=6, patches_per_volume=3, seed=0,
                      shuffle_subjects=False)  # fmt: skip
    keywords = sq.Queue(subjects, max_length=6, samples_per_volume=3, sampler=sampler, seed=0,
                        shuffle_subjects=False)  # fmt: skip
    assert (torchio1.max_length, torchio1.patches_per_volume) == (6, 3)
    assert patch_stream(torchio1) == patch_stream(native) == patch_stream(keywords)


def test_queue_defaults_are_torchios() -> None:
    with sq.Queue(spheres(), sq.UniformSampler(8)) as queue:
        assert (queue.max_length, queue.patches_per_volume) == (300, 10)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((6, 3, sq.UniformSampler(8), None), {}, "at most four positional"),
        ((sq.UniformSampler(8), 6), {}, "by keyword"),
        ((6, 3, sq.UniformSampler(8)), {"max_length": 6}, "max_length twice"),
        ((sq.UniformSampler(8),), {"patches_per_volume": 2, "samples_per_volume": 2}, "twice"),
        ((sq.UniformSampler(8),), {"sampler": sq.UniformSampler(8)}, "sampler twice"),
        ((6, 3), {}, "needs a patch sampler"),
    ],
)
def test_ambiguous_queue_calls_are_refused(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        sq.Queue(spheres(), *args, **kwargs)


def test_queue_applies_a_subjects_datasets_transform() -> None:
    dataset = sq.SubjectsDataset(spheres(), transform=sq.Lambda(torch.neg))
    with sq.Queue(dataset, 3, 3, sq.UniformSampler(8), seed=0) as queue:
        assert queue.transform is dataset.transform
        assert all(float(patch.t1.data.max()) <= 0 for patch in queue)
    with pytest.raises(ValueError, match="Both the SubjectsDataset and the Queue"):
        sq.Queue(dataset, 3, 3, sq.UniformSampler(8), transform=sq.Noise())


# SubjectsDataset ----------------------------------------------------------------------------------


def test_subjects_dataset_reads_loaded_transformed_copies() -> None:
    subjects = spheres()
    dataset = sq.SubjectsDataset(subjects, transform=sq.Lambda(torch.neg))
    assert isinstance(dataset, torch.utils.data.Dataset) and len(dataset) == 3
    subject = dataset[1]
    assert torch.equal(subject.t1.data, -subjects[1].t1.data)
    assert subject["name"] == "sub-1" and subjects[1].t1.data.min() >= 0  # source untouched


def test_subjects_dataset_errors_name_the_subject() -> None:
    def broken(subject: sq.Subject) -> sq.Subject:
        raise RuntimeError("boom")

    with pytest.raises(SubjectProcessingError, match=r"subject 2 'sub-2'.*boom"):
        sq.SubjectsDataset(spheres(), transform=broken)[2]


# Samplers -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda: sq.UniformSampler(8), {"patch_size": (8, 8, 8)}),
        (lambda: sq.UniformSampler((8, 6, 4)), {"patch_size": (8, 6, 4)}),
        (lambda: sq.UniformSampler(patch_size=8), {"patch_size": (8, 8, 8)}),
        (lambda: sq.WeightedSampler(8, "map"), {"probability_map": "map"}),
        (lambda: sq.WeightedSampler(8, probability_map="map"), {"probability_map": "map"}),
        (
            lambda: sq.LabelSampler(8, "seg", {0: 0.2, 1: 0.8}),
            {"label_name": "seg", "label_probabilities": {0: 0.2, 1: 0.8}},
        ),
        (
            lambda: sq.LabelSampler(8, "seg", label_probabilities={1: 1.0}),
            {"label_name": "seg", "label_probabilities": {1: 1.0}},
        ),
        (
            lambda: sq.LabelSampler(patch_size=8, label_name="seg"),
            {"label_name": "seg", "label_probabilities": None},
        ),
        (lambda: sq.LabelSampler(8), {"label_name": None}),
        (lambda: sq.LabelSampler(spheres()[0], 8, "seg"), {"label_name": "seg"}),
    ],
)
def test_samplers_from_the_patch_size_alone(make: Any, expected: dict[str, Any]) -> None:
    sampler = make()
    for name, value in expected.items():
        assert getattr(sampler, name) == value


def test_label_sampler_without_a_name_uses_the_first_label_map() -> None:
    subject = spheres(1)[0]
    patches = list(sq.LabelSampler(8)(subject, 20, torch.Generator().manual_seed(0)))
    assert all(int(patch.seg.data[0, 4, 4, 4]) == 1 for patch in patches)  # centred on label 1
    with pytest.raises(sq.SamplingError, match="has no LabelMap;"):
        list(sq.LabelSampler(8)(sq.Subject(t1=subject.t1), 1))


@pytest.mark.parametrize(
    ("make", "error"),
    [
        (lambda: sq.UniformSampler(8, 2, 3), "Too many positional"),
        (lambda: sq.WeightedSampler(8), "needs probability_map"),
        (lambda: sq.UniformSampler(None), "needs a patch_size"),
    ],
)
def test_bad_sampler_calls_are_refused(make: Any, error: str) -> None:
    with pytest.raises(TypeError, match=error):
        make()


# Constants and GridAggregator ---------------------------------------------------------------------


def test_constants_are_torchios_keys() -> None:
    keys = (sq.DATA, sq.AFFINE, sq.PATH, sq.TYPE, sq.INTENSITY, sq.LABEL, sq.LOCATION)
    assert keys == ("data", "affine", "path", "type", "intensity", "label", "location")
    assert sq.GridAggregator is sq.PatchAggregator


def test_images_take_torchios_keywords_and_dict_access(tmp_path: Any) -> None:
    data = torch.arange(24.0).reshape(1, 2, 3, 4)
    image = sq.ScalarImage(tensor=data, affine=torch.eye(4).numpy() * 2)
    assert torch.equal(image[sq.DATA], data)
    assert (image[sq.AFFINE] == image.affine).all()
    assert image[sq.PATH] is None
    assert image[sq.TYPE] == sq.INTENSITY and sq.LabelMap(tensor=data.long())[sq.TYPE] == sq.LABEL
    nifti = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(data[0].numpy(), image.affine), nifti)
    from_path = sq.ScalarImage(path=nifti)
    assert from_path[sq.PATH] == nifti and torch.equal(from_path[sq.DATA], data)
    with pytest.raises(KeyError, match="'stem'"):
        image["stem"]


@pytest.mark.parametrize(
    "call",
    [
        lambda: sq.ScalarImage(),
        lambda: sq.ScalarImage(torch.zeros(1, 2, 2, 2), tensor=torch.zeros(1, 2, 2, 2)),
    ],
    ids=["none", "two"],
)
def test_an_image_needs_exactly_one_source(call: Any) -> None:
    with pytest.raises(TypeError, match="needs one source: a path or a tensor"):
        call()


def test_batch_keys_are_torchios() -> None:
    patches = list(sq.UniformSampler(spheres(1)[0], 8, num_patches=2))
    batch = sq.collate_subjects(patches)
    assert batch["t1"][sq.DATA] is batch.t1.data and batch["seg"][sq.AFFINE].shape == (2, 4, 4)
    assert batch["t1"][sq.TYPE] == [sq.INTENSITY] * 2 and batch["seg"][sq.TYPE] == [sq.LABEL] * 2
    assert batch["t1"][sq.PATH] == [None, None] and batch[sq.LOCATION].shape == (2, 6)


# RandomFlip and RandomNoise -----------------------------------------------------------------------


def draw(transform: sq.Transform, subject: sq.Subject, seed: int) -> sq.Subject:
    return transform(subject, torch.Generator().manual_seed(seed))


def test_random_flip_draws_each_axis_and_keeps_labels_aligned() -> None:
    subject = spheres(1, size=8)[0]
    subject["t1"] = sq.ScalarImage(torch.rand(1, 8, 8, 8))
    subject["seg"] = sq.LabelMap((subject.t1.data > 0.5).to(torch.uint8))
    flip = sq.RandomFlip(axes=(0, 1, 2), flip_probability=0.5)
    outcomes = set()
    for seed in range(40):
        flipped = draw(flip, subject, seed)
        assert torch.equal(flipped.seg.data, (flipped.t1.data > 0.5).to(torch.uint8))
        axes = tuple(
            dims
            for dims in [(), (1,), (2,), (3,), (1, 2), (1, 3), (2, 3), (1, 2, 3)]
            if torch.equal(flipped.t1.data, subject.t1.data.flip(dims) if dims else subject.t1.data)
        )
        outcomes.add(axes)
        assert torch.equal(draw(flip, subject, seed).t1.data, flipped.t1.data)  # reproducible
    assert len(outcomes) == 8  # every combination of axes occurs: one draw per axis
    always = draw(sq.RandomFlip(axes=1, flip_probability=1.0), subject, 0)
    assert torch.equal(always.t1.data, subject.t1.data.flip(2))
    never = draw(sq.RandomFlip(axes=(0, 1, 2), flip_probability=0.0), subject, 0)
    assert torch.equal(never.t1.data, subject.t1.data)
    assert sq.RandomFlip().axes == (0,) and sq.RandomFlip().flip_probability == 0.5


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"axes": ("XY",)}, "anatomical"),
        ({"axes": 3}, "spatial axes"),
        ({"flip_probability": 2}, "flip_probability"),
    ],
)
def test_random_flip_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        sq.RandomFlip(**kwargs)


def test_random_noise_draws_mean_and_std_from_its_ranges() -> None:
    subject = sq.Subject(
        t1=sq.ScalarImage(torch.zeros(1, 32, 32, 32)),
        t2=sq.ScalarImage(torch.zeros(1, 32, 32, 32)),
        seg=sq.LabelMap(torch.zeros(1, 32, 32, 32, dtype=torch.uint8)),
    )
    noise = sq.RandomNoise(mean=(1.0, 2.0), std=(0.1, 0.5))
    stds = set()
    for seed in range(5):
        noisy = draw(noise, subject, seed)
        assert torch.equal(noisy.seg.data, subject.seg.data)  # label maps left alone
        for name in ("t1", "t2"):
            data = noisy[name].data
            assert 0.95 < float(data.mean()) < 2.05 and 0.09 < float(data.std()) < 0.52
        # Drawn once per subject (as TorchIO does), the same for all its images.
        assert abs(float(noisy.t1.data.std()) - float(noisy.t2.data.std())) < 0.01
        stds.add(round(float(noisy.t1.data.std()), 2))
        assert torch.equal(draw(noise, subject, seed).t1.data, noisy.t1.data)
    assert len(stds) > 3  # and anew at each application


@pytest.mark.parametrize(
    ("mean", "std", "expected"),
    [
        (0, (0, 0.25), ((0.0, 0.0), (0.0, 0.25))),
        (0.5, 0.2, ((-0.5, 0.5), (0.0, 0.2))),
        ((1, 2), (0.1, 0.1), ((1.0, 2.0), (0.1, 0.1))),
    ],
)
def test_random_noise_ranges_are_torchios(mean: Any, std: Any, expected: Any) -> None:
    noise = sq.RandomNoise(mean, std)
    assert (noise.mean.bounds, noise.std.bounds) == expected


@pytest.mark.parametrize(("mean", "std"), [(-1, 0.1), (0, -0.1), ((2, 1), 0.1), (0, (-0.1, 0.2))])
def test_random_noise_rejects_bad_ranges(mean: Any, std: Any) -> None:
    with pytest.raises(ValueError):
        sq.RandomNoise(mean, std)
