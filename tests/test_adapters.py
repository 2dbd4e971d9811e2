"""Adapters and plain callables: other libraries' transforms in the queue, seeded per task.

* Conversion: a subject goes to TorchIO or MONAI and comes back with its data, dtypes, affines
  (each library's convention), image kinds, paths and metadata.
* Seeding (contract 13): TorchIO's, MONAI's and a plain callable's randomness follows the task's
  generator, in the training process and in workers, fork and spawn: label maps stay aligned
  with their images, every subject-epoch draws anew, seeds differ, and with
  ``deterministic=True`` the stream does not depend on ``num_workers``.
* Failures: a missing library names its extra; what an adapter cannot run is refused.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import torch
from plain_callables import WrappingCompose, global_noise, roll_and_scale

import shmqueue as sq
from shmqueue.errors import TransformOutputError
from shmqueue.seeding import seeded_global_generators
from shmqueue.testing import Contract, check_transform
from shmqueue.transforms import apply_transform

tio = pytest.importorskip("torchio")
monai_transforms = pytest.importorskip("monai.transforms")
monai_data = pytest.importorskip("monai.data")
monai_utils = pytest.importorskip("monai.utils")

SHAPE = (20, 18, 16)
NUM_SUBJECTS = 4
EPOCHS = 2  # 4 subjects x 2 epochs: 8 subject-epochs
CONFIGURATIONS = [(0, None), (1, "fork"), (2, "fork"), (1, "spawn"), (2, "spawn")]
KINDS = ["torchio", "monai", "callable", "callable-in-compose-subclass"]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def foreground() -> torch.Tensor:
    """An asymmetric box and a blob, so that any rotation, flip or shift changes the volume."""
    mask = torch.zeros(1, *SHAPE, dtype=torch.uint8)
    mask[:, 4:13, 5:11, 3:12] = 1
    mask[:, 14:17, 12:15, 10:14] = 1
    return mask


def phantom(name: str) -> sq.Subject:
    """A volume whose label map is its foreground: after any aligned transform, thresholding the
    image gives the label map back."""
    mask = foreground()
    affine = np.diag([1.5, 1.2, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 4.5, 30.0)
    return sq.Subject(
        t1=sq.ScalarImage(mask.to(torch.float32), affine=affine),
        seg=sq.LabelMap(mask, affine=affine),
        name=name,
    )


def dice(first: torch.Tensor, second: torch.Tensor) -> float:
    first, second = first.bool(), second.bool()
    total = int(first.sum() + second.sum())
    return 2 * int((first & second).sum()) / total


def torchio_affine(degrees: tuple[float, float], translation: float = 0.0) -> Any:
    """TorchIO's random affine with nearest-neighbour images: ``RandomAffine`` in 1.x, ``Affine``
    with ranges in 2.0."""
    if hasattr(tio, "RandomAffine"):
        return tio.RandomAffine(
            degrees=degrees, translation=translation, image_interpolation="nearest"
        )
    return tio.Affine(
        degrees=degrees, translation=(-translation, translation), image_interpolation="nearest"
    )


def augmentation(kind: str) -> sq.Transform | Callable[[sq.Subject], sq.Subject]:
    """A spatial augmentation of each kind; nearest-neighbour interpolation for the images too,
    so that an aligned label map equals the thresholded image exactly."""
    if kind == "torchio":
        return sq.TorchioAdapter(torchio_affine(degrees=(10, 30), translation=2))
    if kind == "monai":
        return sq.MonaiAdapter(
            monai_transforms.RandAffined(
                keys=["t1", "seg"],
                prob=1.0,
                rotate_range=[(0.2, 0.5)] * 3,
                translate_range=2,
                mode="nearest",
                padding_mode="zeros",
            )
        )
    if kind == "callable-in-compose-subclass":
        return WrappingCompose([roll_and_scale])
    return roll_and_scale


class Augmented(NamedTuple):
    """One yielded whole-volume patch, as comparable values."""

    subject: str
    t1: bytes
    seg: bytes


def run_queue(kind: str, seed: int, num_workers: int, context: str | None) -> list[Augmented]:
    """The stream of ``EPOCHS`` epochs, each patch the whole augmented volume; checks that every
    label map is aligned with its image (Dice 1) and was moved by the augmentation."""
    subjects = [phantom(f"s{index}") for index in range(NUM_SUBJECTS)]
    stream = []
    with sq.Queue(
        subjects,
        sq.UniformSampler(None, SHAPE),
        max_length=2,
        patches_per_volume=1,
        num_workers=num_workers,
        transform=augmentation(kind),
        seed=seed,
        deterministic=True,
        multiprocessing_context=context,
        timeout=60.0,
    ) as queue:
        for _ in range(EPOCHS):
            for patch in queue:
                t1, seg = patch.t1.data, patch.seg.data
                assert seg.dtype == torch.uint8 and t1.dtype == torch.float32
                assert dice(t1 > 0.5, seg) == 1.0
                assert not torch.equal(seg, foreground())
                stream.append(Augmented(patch.name, t1.numpy().tobytes(), seg.numpy().tobytes()))
    return stream


@cache
def in_process(kind: str, seed: int) -> list[Augmented]:
    """The in-process stream: the oracle for the workers'."""
    return run_queue(kind, seed, 0, None)


# Seeding in the queue (contracts 6 and 13) --------------------------------------------------------


@pytest.mark.parametrize(("num_workers", "context"), CONFIGURATIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_labels_stay_aligned_and_every_subject_epoch_draws_anew(
    kind: str, num_workers: int, context: str | None
) -> None:
    stream = run_queue(kind, 0, num_workers, context)
    assert len(stream) == NUM_SUBJECTS * EPOCHS
    assert len({(item.t1, item.seg) for item in stream}) == NUM_SUBJECTS * EPOCHS
    assert stream == in_process(kind, 0)  # deterministic=True: the same for any num_workers


@pytest.mark.parametrize(("num_workers", "context"), [(0, None), (2, "fork"), (2, "spawn")])
@pytest.mark.parametrize("kind", KINDS)
def test_seeds_zero_and_one_give_different_augmentations(
    kind: str, num_workers: int, context: str | None
) -> None:
    stream = run_queue(kind, 1, num_workers, context)
    assert stream == in_process(kind, 1)
    assert not {item.t1 for item in stream} & {item.t1 for item in in_process(kind, 0)}


# Seeding one step ---------------------------------------------------------------------------------


def test_global_generators_are_seeded_from_the_task_and_restored() -> None:
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)
    expected = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)

    def draws() -> tuple[float, float, float]:
        with seeded_global_generators(seeded(3)):
            return torch.rand(()).item(), float(np.random.rand()), random.random()

    first = draws()
    assert first == draws()
    assert len(set(first)) == 3  # each library its own seed: no two equal streams
    with seeded_global_generators(seeded(4)):
        assert torch.rand(()).item() != first[0]
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_follows_the_generator_whatever_the_global_state(kind: str) -> None:
    step = augmentation(kind)
    outputs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        np.random.seed(global_seed)
        random.seed(global_seed)
        outputs.append(apply_transform(step, phantom("s"), seeded(7)).t1.data)
        after = torch.rand(())
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.rand(())), "the global state was not restored"
    assert torch.equal(outputs[0], outputs[1])
    assert not torch.equal(outputs[0], apply_transform(step, phantom("s"), seeded(8)).t1.data)


def test_check_transform_passes_seeded_callables_and_adapters() -> None:
    for transform in (roll_and_scale, augmentation("torchio"), augmentation("monai")):
        report = check_transform(transform, phantom("s"))
        assert report.ok, str(report)


def test_check_transform_reports_a_transform_that_does_not_follow_its_generator() -> None:
    lambda_noise = sq.Lambda(global_noise, types_to_apply=(sq.ScalarImage,))
    report = check_transform(lambda_noise, phantom("s"))
    assert report.contracts() == {Contract.GLOBAL_RANDOMNESS}
    assert "the global seed of torch changed" in str(report)


def test_monai_random_state_out_of_the_adapters_reach_is_reported() -> None:
    class Hidden:
        """A callable holding a MONAI random transform without passing set_random_state on."""

        def __init__(self) -> None:
            self.noise = monai_transforms.RandGaussianNoised(keys=["t1"], prob=1.0)

        def __call__(self, data: Mapping[str, Any]) -> Mapping[str, Any]:
            return self.noise(data)

    report = check_transform(sq.MonaiAdapter(Hidden()), phantom("s"))
    assert Contract.DETERMINISM in report.contracts()


@pytest.mark.parametrize(
    "transform",
    [
        lambda: tio.RandomFlip(),
        lambda: sq.Compose([sq.Noise(), tio.RandomFlip()]),
        lambda: monai_transforms.RandFlipd(keys=["t1"]),
    ],
    ids=["torchio", "torchio-in-compose", "monai"],
)
def test_a_library_transform_given_as_it_is_names_its_adapter(transform: Any) -> None:
    library_transform = transform()
    adapter = (
        "TorchioAdapter"
        if "torchio" in repr(type(library_transform)) or isinstance(library_transform, sq.Compose)
        else "MonaiAdapter"
    )
    subjects = [phantom("s")]
    with pytest.raises(TypeError, match=rf"transform: .*shmqueue\.{adapter}\("):
        sq.Queue(
            subjects,
            sq.UniformSampler(None, SHAPE),
            max_length=1,
            patches_per_volume=1,
            transform=library_transform,
        )
    with pytest.raises(TypeError, match=rf"shmqueue\.{adapter}\("):
        sq.SubjectsDataset(subjects, transform=library_transform)


# Conversion --------------------------------------------------------------------------------------


@pytest.fixture
def file_subject(make_nifti: Callable[..., Path]) -> sq.Subject:
    """A file-backed subject: int16 intensities, an int16 label map, an LAS affine."""
    affine = np.diag([-2.0, 1.5, 1.2, 1.0])
    affine[:3, 3] = (40.0, -12.0, 7.5)
    mask = foreground()[0].numpy()
    intensities = (
        mask.astype(np.int16) * 900 + np.arange(mask.size, dtype=np.int16).reshape(mask.shape) % 7
    )
    subject = sq.Subject(
        t1=sq.ScalarImage(make_nifti("t1.nii.gz", intensities, affine)),
        seg=sq.LabelMap(make_nifti("seg.nii.gz", (mask * 3).astype(np.int16), affine)),
        name="sub-01",
        age=42,
    )
    subject.load()
    return subject


def identity_torchio() -> sq.TorchioAdapter:
    return sq.TorchioAdapter(tio.Compose([]))


def identity_monai() -> sq.MonaiAdapter:
    return sq.MonaiAdapter(monai_transforms.Compose([]))


@pytest.mark.parametrize("adapter", [identity_torchio, identity_monai])
def test_a_round_trip_keeps_data_dtypes_affines_kinds_paths_and_metadata(
    file_subject: sq.Subject, adapter: Callable[[], sq.Transform]
) -> None:
    result = adapter()(file_subject, seeded(0))
    assert list(result) == list(file_subject)
    assert result.metadata == {"name": "sub-01", "age": 42}
    for name, image in file_subject.images.items():
        back = result[name]
        assert type(back) is type(image)
        assert back.path == image.path
        assert back.data.dtype == image.data.dtype
        assert torch.equal(back.data, image.data)
        assert np.array_equal(back.affine, image.affine)


def world(affine: np.ndarray, index: tuple[int, int, int]) -> np.ndarray:
    return (affine @ np.array([*index, 1.0]))[:3]


@pytest.mark.filterwarnings("ignore:.*Orientationd.*labels:FutureWarning")  # MONAI's own notice
def test_both_libraries_reorient_alike_keeping_every_voxel_where_it_was(
    file_subject: sq.Subject,
) -> None:
    """TorchIO's ToCanonical and MONAI's Orientationd both take the LAS subject to RAS: the same
    voxels and affine from both, and each voxel's value at the same world position as before."""
    canonical = tio.ToCanonical() if hasattr(tio, "ToCanonical") else tio.Reorient()  # 1.x, 2.0
    by_torchio = sq.TorchioAdapter(canonical)(file_subject, seeded(0))
    by_monai = sq.MonaiAdapter(monai_transforms.Orientationd(keys=["t1", "seg"], axcodes="RAS"))(
        file_subject, seeded(0)
    )
    for name, image in file_subject.images.items():
        assert np.allclose(by_torchio[name].affine, by_monai[name].affine)
        assert torch.equal(by_torchio[name].data, by_monai[name].data)
        assert by_monai[name].data.dtype == image.data.dtype
        affine = by_torchio[name].affine
        assert np.all(np.diag(affine)[:3] > 0)
        for index in [(0, 0, 0), (3, 7, 11), (SHAPE[0] - 1, 2, 5)]:
            flipped = (SHAPE[0] - 1 - index[0], index[1], index[2])
            assert np.allclose(world(affine, flipped), world(image.affine, index))
            assert by_torchio[name].data[(0, *flipped)] == image.data[(0, *index)]


def test_a_torchio_label_map_resampled_to_float_gets_its_dtype_back(
    file_subject: sq.Subject,
) -> None:
    result = sq.TorchioAdapter(torchio_affine(degrees=(-20, 20)))(file_subject, seeded(0))
    assert result.seg.data.dtype == torch.int16
    assert set(torch.unique(result.seg.data).tolist()) == {0, 3}


def test_monai_gets_ras_metatensors_with_paths_and_lps_comes_back_as_ras(
    file_subject: sq.Subject,
) -> None:
    seen: dict[str, Any] = {}

    def to_lps(data: Mapping[str, Any]) -> dict[str, Any]:
        t1 = data["t1"]
        seen.update(
            path=t1.meta["filename_or_obj"],
            space=t1.meta[monai_utils.MetaKeys.SPACE],
            affine=t1.affine.numpy().copy(),
            name=data["name"],
        )
        lps = monai_data.MetaTensor(t1.as_tensor().clone(), meta=dict(t1.meta))
        lps.affine = monai_data.utils.orientation_ras_lps(t1.affine)
        lps.meta[monai_utils.MetaKeys.SPACE] = monai_utils.SpaceKeys.LPS
        return {**data, "t1": lps}

    result = sq.MonaiAdapter(to_lps)(file_subject, seeded(0))
    assert seen["path"] == str(file_subject.t1.path)
    assert seen["space"] == monai_utils.SpaceKeys.RAS
    assert np.array_equal(seen["affine"], file_subject.t1.affine)
    assert seen["name"] == "sub-01"
    assert np.array_equal(result.t1.affine, file_subject.t1.affine)


def test_monai_writing_into_its_input_does_not_reach_the_subject(
    file_subject: sq.Subject,
) -> None:
    before = file_subject.t1.data.clone()
    normalize = monai_transforms.NormalizeIntensityd(keys=["t1"], nonzero=True)
    result = sq.MonaiAdapter(normalize)(file_subject, seeded(0))
    assert torch.equal(file_subject.t1.data, before)
    assert abs(result.t1.data[result.t1.data != 0].mean().item()) < 1e-4


def test_a_label_map_interpolated_linearly_is_refused_with_the_fix(
    file_subject: sq.Subject,
) -> None:
    linear = monai_transforms.RandAffined(
        keys=["t1", "seg"], prob=1.0, rotate_range=[(0.3, 0.5)] * 3, mode="bilinear"
    )
    with pytest.raises(TransformOutputError, match=r"Label map 'seg'.*mode='nearest'"):
        sq.MonaiAdapter(linear)(file_subject, seeded(0))


def test_labels_out_of_the_label_maps_dtype_are_refused(file_subject: sq.Subject) -> None:
    def overflow(data: Mapping[str, Any]) -> dict[str, Any]:
        return {**data, "seg": data["seg"] * 0 + 40_000.0}  # int16 holds up to 32767

    with pytest.raises(TransformOutputError, match=r"labels from 40000 to 40000.*torch.int16"):
        sq.MonaiAdapter(overflow)(file_subject, seeded(0))


# What an adapter refuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("library", "build"),
    [
        ("torchio", lambda: sq.TorchioAdapter(tio.Compose([]))),
        ("monai", lambda: sq.MonaiAdapter(monai_transforms.RandFlipd(keys=["t1"]))),
    ],
)
def test_a_missing_library_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, library: str, build: Callable[[], sq.Transform]
) -> None:
    for module in [name for name in sys.modules if name.split(".")[0] == library]:
        monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(ImportError, match=rf"pip install 'shmqueue\[{library}\]'"):
        build()


def test_what_the_adapters_cannot_run_is_refused_at_once() -> None:
    with pytest.raises(TypeError, match="runs TorchIO transforms"):
        sq.TorchioAdapter(roll_and_scale)
    with pytest.raises(TypeError, match=r"array transform.*RandGaussianNoised\(keys"):
        sq.MonaiAdapter(monai_transforms.RandGaussianNoise())


def test_a_monai_transform_that_draws_several_samples_points_to_the_samplers() -> None:
    crop = monai_transforms.RandSpatialCropSamplesd(keys=["t1"], roi_size=(4, 4, 4), num_samples=2)
    with pytest.raises(TypeError, match="patch sampler's job"):
        sq.MonaiAdapter(crop)(phantom("s"), seeded(0))
