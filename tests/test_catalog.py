"""The catalog: one pass over the headers (each file opened once), the one patch-count rule that
the queue, its planner and the estimator read, and the checks that name ``subjects[i]``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import shmqueue as sq
from shmqueue.catalog import Catalog, patch_count
from shmqueue.memory.estimate import estimate_catalog
from shmqueue.specs import ImageSpec, SubjectSpec

MakeNifti = Callable[..., Path]

# Builds a queue in a fresh interpreter and prints how often each file under the folder was
# opened: an audit hook cannot be removed, so it runs where it ends with the process.
COUNT_OPENS = """
import collections, json, sys
from pathlib import Path
import shmqueue as sq

folder = sys.argv[1]
subjects = [
    sq.Subject(
        t1=sq.ScalarImage(Path(folder, f"t1_{index}.nii.gz")),
        seg=sq.LabelMap(Path(folder, f"seg_{index}.nii.gz")),
    )
    for index in range(8)
]
opened = collections.Counter()

def count(event, args):
    if event == "open" and isinstance(args[0], str) and args[0].startswith(folder):
        opened[args[0]] += 1

sys.addaudithook(count)
queue = sq.Queue(
    subjects,
    sq.LabelSampler(None, 8, "seg"),
    max_length=20,
    patches_per_volume=4,
    num_workers=2,
    transform=sq.Compose([sq.Flip(), sq.Noise()]),
)
queue.estimate_memory(batch_size=4)  # reads the queue's catalog, not the files
queue.close()
print(json.dumps(opened))
"""


def test_building_a_queue_opens_each_image_file_once(make_nifti: MakeNifti) -> None:
    rng = np.random.default_rng(0)
    paths = []
    for index in range(8):
        t1 = rng.integers(0, 1000, size=(20, 18, 16), dtype=np.int16)
        paths.append(make_nifti(f"t1_{index}.nii.gz", t1))
        paths.append(make_nifti(f"seg_{index}.nii.gz", (t1 > 500).astype(np.uint8)))
    child = subprocess.run(
        [sys.executable, "-c", COUNT_OPENS, str(paths[0].parent)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(child.stdout) == {str(path): 1 for path in paths}


def test_the_catalog_holds_what_each_header_says(tmp_path: Path) -> None:
    affine = np.diag([1.0, 1.25, 1.5, 1.0])  # stored as float32 without rounding
    scaled = nib.Nifti1Image(np.zeros((6, 5, 4, 2), np.int16), affine)
    scaled.header.set_slope_inter(2.0, -1024.0)
    nib.save(scaled, tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 5, 4), np.uint8), affine), tmp_path / "seg.nii")
    subject = sq.Subject(
        ct=sq.ScalarImage(tmp_path / "ct.nii.gz"),
        seg=sq.LabelMap(tmp_path / "seg.nii"),
        mask=sq.LabelMap(torch.zeros(1, 6, 5, 4, dtype=torch.int16)),
        name="sub-01",
    )
    catalog = Catalog.build([subject], sq.UniformSampler(None, 4), 10, 3)
    (entry,) = catalog.subjects
    ct, seg, mask = entry.images
    assert (ct.shape, ct.channels, ct.spatial_shape) == ((2, 6, 5, 4), 2, (6, 5, 4))
    assert (ct.stored_dtype, ct.dtype, ct.scaling, ct.compressed) == (
        np.dtype(np.int16),
        torch.float32,
        (2.0, -1024.0),
        True,
    )
    assert (seg.stored_dtype, seg.dtype, seg.scaling, seg.compressed) == (
        np.dtype(np.uint8),
        torch.uint8,
        (1.0, 0.0),
        False,
    )
    assert mask.in_memory and not seg.in_memory and mask.dtype == torch.int16
    assert np.array_equal(ct.affine, affine) and ct.spec.spacing == (1.0, 1.25, 1.5)
    assert (ct.raw_bytes, ct.loaded_bytes) == (2 * 120 * 2, 2 * 120 * 4)
    assert ct.spec == ImageSpec(sq.ScalarImage, 2, (6, 5, 4), torch.float32, affine)
    assert hash(ct.spec) == hash(ImageSpec(sq.ScalarImage, 2, (6, 5, 4), torch.float32, affine))
    assert entry.description == "subject 0 'sub-01' (ct: '{}', seg: '{}', mask: in memory)".format(
        tmp_path / "ct.nii.gz", tmp_path / "seg.nii"
    )
    assert catalog.layout.images == {
        "ct": (2, torch.float32),
        "seg": (1, torch.uint8),
        "mask": (1, torch.int16),
    }


def test_the_patch_count_rule_is_the_one_the_queue_plans_with(
    tensor_subjects: list[sq.Subject],
) -> None:
    """A grid has 4 positions in a 16-voxel-deep volume and 6 in a 24-deep one: a subject gives
    ``patches_per_volume`` or the grid's count if smaller, in the plan, the epoch's length and
    the in-process buffer the estimator counts."""
    subjects = [
        sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 8, 16, depth))) for depth in (16, 24, 16)
    ]
    grid = sq.GridSampler(None, 8)
    assert [patch_count(grid, subject.spatial_shape, 5) for subject in subjects] == [4, 5, 4]
    queue = sq.Queue(subjects, grid, max_length=100, patches_per_volume=5, shuffle_subjects=False)
    assert queue.catalog.patch_counts == (4, 5, 4)
    assert [task.num_patches for task in queue.plan(0).tasks] == [4, 5, 4]
    assert len(queue) == len(list(queue)) == 13
    estimate = queue.estimate_memory(batch_size=2)
    per_patch = 8**3 * 4 + 4096  # voxels, and the patch image's objects
    assert estimate.consumer.buffered_patches == (13 + 2) * per_patch
    random = sq.Queue(subjects, sq.UniformSampler(None, 8), max_length=100, patches_per_volume=5)
    assert random.catalog.patch_counts == (5, 5, 5)


def test_one_catalog_serves_the_queue_and_its_estimates(
    tensor_subjects: list[sq.Subject], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[Catalog] = []
    original = Catalog.build.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Catalog], *args: object) -> Catalog:
        built.append(original(cls, *args))
        return built[-1]

    monkeypatch.setattr(Catalog, "build", classmethod(counting))
    queue = sq.Queue(tensor_subjects, sq.UniformSampler(None, 8), max_length=10, num_workers=1)
    queue.estimate_memory(batch_size=4, pin_memory=True)
    queue.close()
    assert built == [queue.catalog] and queue.layout is queue.catalog.layout


def test_subjects_that_differ_are_named_alike_by_the_queue_and_the_estimator(
    tensor_subjects: list[sq.Subject],
) -> None:
    labelled = sq.Subject(
        t1=sq.ScalarImage(torch.zeros(1, 24, 20, 16)),
        seg=sq.LabelMap(torch.zeros(1, 24, 20, 16, dtype=torch.uint8)),
        name="sub-x",
    )
    subjects = [tensor_subjects[0], labelled]
    expected = (
        r"subjects\[1\]: subject 'sub-x' \(t1: in memory, seg: in memory\) has images \{t1: 1"
        r" channel\(s\), seg: 1 channel\(s\)\} but subjects\[0\] has \{t1: 1 channel\(s\)\}\."
        r" Every subject needs the same images with the same channels to be batched\."
    )
    with pytest.raises(sq.SubjectError, match=expected):
        sq.Queue(subjects, sq.UniformSampler(None, 8), max_length=10)
    with pytest.raises(sq.SubjectError, match=expected):
        sq.estimate_memory(subjects, 8, max_length=10)
    with pytest.raises(TypeError, match=r"subjects\[1\] is a dict, not a Subject"):
        sq.estimate_memory([tensor_subjects[0], {"t1": None}], 8)  # type: ignore[list-item]


def test_the_ring_holds_every_subjects_dtype() -> None:
    subjects = [
        sq.Subject(seg=sq.LabelMap(torch.zeros(1, 8, 8, 8, dtype=dtype)))
        for dtype in (torch.uint8, torch.int16, torch.uint8)
    ]
    catalog = Catalog.build(subjects, sq.UniformSampler(None, 4), 10, 2)
    assert catalog.layout.images == {"seg": (1, torch.int16)}


class CropTo(sq.Transform):
    """Keep the first voxels of the ``include``d images, up to ``shape``: a deterministic step
    that changes the grid and says so, as a crop or a resampling does."""

    def __init__(self, shape: tuple[int, int, int], include: tuple[str, ...]) -> None:
        super().__init__()
        self.shape = shape
        self.include = include

    def apply(self, subject: sq.Subject, generator: torch.Generator) -> sq.Subject:
        for name in self.include:
            region = tuple(slice(0, size) for size in self.shape)
            subject[name] = subject[name].with_data(subject[name].data[(slice(None), *region)])
        return subject

    def output_spec(self, images: SubjectSpec) -> dict[str, ImageSpec]:
        cropped = {
            name: dataclasses.replace(images[name], spatial_shape=self.shape)
            for name in self.include
        }
        return {**images, **cropped}

    @property
    def is_random(self) -> bool:
        return False


def two_grids(name: str) -> sq.Subject:
    """A T1 of 12x12x12 voxels and a label map of 8x8x8: on different grids in their headers."""
    return sq.Subject(
        t1=sq.ScalarImage(torch.rand(1, 12, 12, 12, generator=torch.Generator().manual_seed(0))),
        seg=sq.LabelMap(torch.ones(1, 8, 8, 8, dtype=torch.uint8)),
        name=name,
    )


def test_subjects_are_checked_as_the_deterministic_transform_makes_them() -> None:
    """Images on two grids that the transform's deterministic prefix brings to one are accepted,
    with their patches counted on the transformed grid; what it would leave disagreeing or
    smaller than the patch is refused at construction, naming the subject, "after the
    transform". A random step ends the prediction: what follows it is taken to keep the grid."""
    crop = CropTo((8, 8, 8), ("t1",))
    subjects = [two_grids("s0"), two_grids("s1")]
    grid = sq.GridSampler(None, 4)
    queue = sq.Queue(subjects, grid, max_length=20, patches_per_volume=10, transform=crop)
    assert queue.catalog.patch_counts == (8, 8)  # 2x2x2 positions in 8x8x8, not 27 in 12x12x12
    assert queue.catalog.subjects[0].spatial_shape == (8, 8, 8)
    assert queue.catalog.subjects[0].images[0].spatial_shape == (12, 12, 12)
    assert len(list(queue)) == 16
    with pytest.raises(sq.SubjectError, match=r"subjects\[0\]: The images of .* different"):
        sq.Queue(subjects, grid, max_length=20, transform=sq.Compose([sq.Noise(p=0.5), crop]))

    disagreeing = [subjects[0], sq.Subject(two_grids("s1"), extra=subjects[0].t1)]
    expected = (
        r"subjects\[1\]: The images of subject 's1' .* have different spatial shapes after the"
        r" transform \(t1: \(8, 8, 8\), seg: \(8, 8, 8\), extra: \(12, 12, 12\)\)"
    )
    transform = sq.Compose([crop, sq.Flip(), sq.Noise()])
    with pytest.raises(sq.SubjectError, match=expected):
        sq.Queue(disagreeing, grid, max_length=20, transform=transform)
    with pytest.raises(sq.SubjectError, match=expected):
        sq.estimate_memory(disagreeing, grid, max_length=20, transform=transform)

    small = CropTo((8, 8, 3), ("t1", "seg"))
    expected = (
        r"subjects\[0\]: The patch size \(4, 4, 4\) is larger than the volume \(8, 8, 3\) of"
        r" subject 's0' .* after the transform along axis \[2\]"
    )
    with pytest.raises(sq.PatchSizeError, match=expected):
        sq.Queue(subjects, grid, max_length=20, transform=sq.Compose([crop, small]))


def test_pipelines_that_keep_the_grid_keep_their_layout_and_estimate(
    tensor_subjects: list[sq.Subject],
) -> None:
    """With steps that keep every image as it is (Flip, Noise, a Lambda, a random step), the
    layout, the patch counts and the estimate are those the headers alone give."""
    sampler = sq.GridSampler(None, 8)
    for transform in (
        sq.Compose([sq.Flip(), sq.Noise()]),
        sq.Compose([sq.Lambda(torch.abs), sq.Noise()]),  # probed: abs keeps the images
        sq.Compose([sq.Flip(p=0.5), sq.OneHot(num_classes=3)]),  # random, then stopped
    ):
        queue = sq.Queue(
            tensor_subjects, sampler, max_length=10, patches_per_volume=5, transform=transform,
            num_workers=2, multiprocessing_context="fork",
        )  # fmt: skip
        headers = Catalog.build(tensor_subjects, sampler, 10, 5)
        assert queue.layout == headers.layout
        assert queue.catalog.patch_counts == headers.patch_counts
        before = estimate_catalog(
            headers, tensor_subjects, sampler, transform, num_workers=2, batch_size=4,
            ranks_per_node=1, pin_memory=False, measure=False, multiprocessing_context="fork",
        )  # fmt: skip
        after = queue.estimate_memory(batch_size=4)
        assert after.total_per_rank == before.total_per_rank
        assert after.ring == before.ring == headers.layout.ring_bytes
        queue.close()


def test_the_ring_is_laid_out_for_the_one_hot_label_maps() -> None:
    """``OneHot(num_classes=3)`` makes 3 channels of the label map's dtype: the layout, the ring
    and the estimate say so; with ``num_classes=-1`` the count cannot be told from a header:
    the first subject is probed (its labels 0 and 1 make 2 channels)."""
    subjects = [two_grids(f"s{index}") for index in range(2)]
    for subject in subjects:
        subject["t1"] = sq.ScalarImage(torch.zeros(1, 8, 8, 8))
    one_hot = Catalog.build(subjects, sq.UniformSampler(None, 4), 10, 2, sq.OneHot(num_classes=3))
    assert one_hot.layout.images == {"t1": (1, torch.float32), "seg": (3, torch.uint8)}
    assert one_hot.subjects[0].transformed["seg"].channels == 3
    headers = Catalog.build(subjects, sq.UniformSampler(None, 4), 10, 2)
    assert one_hot.layout.slot_bytes == headers.layout.slot_bytes + 2 * 4**3
    probed = Catalog.build(subjects, sq.UniformSampler(None, 4), 10, 2, sq.OneHot())
    assert probed.layout.images == {"t1": (1, torch.float32), "seg": (2, torch.uint8)}
    estimate = sq.estimate_memory(
        subjects, 4, max_length=10, num_workers=1, transform=sq.OneHot(num_classes=3)
    )
    assert estimate.layout == one_hot.layout and estimate.ring == one_hot.layout.ring_bytes
