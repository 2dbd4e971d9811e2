"""Probing: a deterministic step that cannot describe its output is run once on the first
subject, and the ring holds what it makes, with workers as in-process; one that changes the
grid is refused at once, by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as functional

import shmqueue as sq
from shmqueue.testing import check_queue


def one_hot(data: torch.Tensor) -> torch.Tensor:
    """Four channels from a label map of labels 0-3, as users write it with a Lambda."""
    return functional.one_hot(data[0].long(), 4).permute(3, 0, 1, 2).to(torch.uint8)


def remapped_to_int64(data: torch.Tensor) -> torch.Tensor:
    """Label 2 remapped to 300 (which uint8 cannot hold), as int64."""
    labels = data.long()
    return torch.where(labels == 2, 300, labels)


def cropped(data: torch.Tensor) -> torch.Tensor:
    """Two voxels off the start of each axis: the grid changes where no header says."""
    return data[:, 2:, 2:, 2:].clone()


def subjects_on_disk(make_nifti: Any) -> list[sq.Subject]:
    rng = np.random.default_rng(0)
    subjects = []
    for index in range(3):
        t1 = rng.random((16, 16, 12)).astype(np.float32)
        seg = rng.integers(0, 4, (16, 16, 12)).astype(np.uint8)
        subjects.append(
            sq.Subject(
                t1=sq.ScalarImage(make_nifti(f"t1_{index}.nii.gz", t1)),
                seg=sq.LabelMap(make_nifti(f"seg_{index}.nii.gz", seg)),
            )
        )
    return subjects


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("step", "seg"),
    [
        (sq.Lambda(one_hot, (sq.LabelMap,)), (4, torch.uint8)),
        (sq.Lambda(remapped_to_int64, (sq.LabelMap,)), (1, torch.int64)),
    ],
    ids=["lambda-one-hot", "labels-to-int64"],
)
def test_the_ring_holds_what_a_step_that_cannot_say_makes(
    make_nifti: Any, step: Any, seg: tuple[int, torch.dtype]
) -> None:
    subjects = subjects_on_disk(make_nifti)

    def queue(num_workers: int = 2) -> sq.Queue:
        return sq.Queue(
            subjects,
            sq.UniformSampler(None, 8),
            max_length=6,
            patches_per_volume=3,
            num_workers=num_workers,
            transform=sq.Compose([sq.ZNormalization(), step, sq.Noise(std=0.1)]),
            multiprocessing_context="fork",
            seed=0,
        )

    built = queue()
    assert built.layout.images["seg"] == seg
    assert not subjects[1].t1.is_loaded  # probed on the first subject only, in a copy
    report = check_queue(queue, epochs=1, batch_size=3)
    assert report.ok, str(report)
    for num_workers in (0, 2):
        with queue(num_workers) as running:
            labels = torch.cat([batch.seg.data for batch in sq.SubjectsLoader(running, 3)])
        assert labels.dtype == seg[1] and labels.shape[1] == seg[0]
        if seg[1] == torch.int64:
            assert 300 in labels.unique().tolist()  # never wrapped to fit a uint8 ring


def test_a_step_that_changes_the_grid_unsaid_is_refused_at_once(make_nifti: Any) -> None:
    with pytest.raises(sq.TransformOutputError) as raised:
        sq.Queue(
            subjects_on_disk(make_nifti),
            sq.UniformSampler(None, 8),
            max_length=6,
            patches_per_volume=3,
            transform=sq.Compose([sq.ZNormalization(), sq.Lambda(cropped)]),
        )
    message = str(raised.value)
    for fragment in ("subjects[0]", "transform step 2 (Lambda)", "(16, 16, 12) to (14, 14, 10)",
                     "CropOrPad", "output_spec"):  # fmt: skip
        assert fragment in message, message


def test_steps_that_say_their_output_are_not_run(make_nifti: Any, tmp_path: Path) -> None:
    subjects = subjects_on_disk(make_nifti)
    queue = sq.Queue(
        subjects,
        sq.UniformSampler(None, 8),
        max_length=6,
        patches_per_volume=3,
        transform=sq.Compose([sq.ZNormalization(), sq.OneHot(num_classes=4), sq.Noise()]),
    )
    assert queue.layout.images["seg"] == (4, torch.uint8)
    assert not any(image.is_loaded for subject in subjects for image in subject.images.values())
