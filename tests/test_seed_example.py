"""The user's own examples (../shared/seed/patch-based-training.txt) run as written.

Only ``import torchio as tio`` changes, to ``import shmqueue as tio``; sizes are scaled down so
the examples run in seconds (48^3 volumes, 16^3 patches), and what the seed leaves undefined
(paths, model, criterion, targets, number of epochs) is defined minimally.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

import shmqueue as tio
from shmqueue.loader import SubjectsLoader

MakeNifti = Callable[..., Path]
NUM_SUBJECTS = 5


@pytest.fixture
def training_paths(make_nifti: MakeNifti) -> list[Path]:
    rng = np.random.default_rng(0)
    return [
        make_nifti(f"t1_{index}.nii.gz", rng.normal(100, 20, (48, 48, 48)).astype(np.float32))
        for index in range(NUM_SUBJECTS)
    ]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_basic_usage(training_paths: list[Path], num_workers: int) -> None:
    model = torch.nn.Conv3d(1, 1, kernel_size=3, padding=1)
    criterion = torch.nn.MSELoss()
    num_epochs = 2
    seen: list[Counter[str]] = []

    # The seed's example, with 64 -> 16, 300 -> 20 and 4 workers -> num_workers.
    subjects = [tio.Subject(t1=tio.ScalarImage(path)) for path in training_paths]
    transform = tio.Compose(
        [
            tio.Flip(axes=(0,), p=0.5),
            tio.Noise(std=0.1),
        ]
    )
    sampler = tio.UniformSampler(subjects[0], patch_size=16)
    queue = tio.Queue(
        subjects,
        patch_sampler=sampler,
        max_length=20,
        patches_per_volume=10,
        num_workers=num_workers,
        transform=transform,
    )
    loader = SubjectsLoader(queue, batch_size=16)
    for epoch in range(num_epochs):
        seen.append(Counter())
        for batch in loader:
            inputs = batch.t1.data
            outputs = model(inputs)
            targets = torch.zeros_like(outputs)  # the seed leaves targets undefined
            loss = criterion(outputs, targets)
            loss.backward()
            seen[epoch].update(batch.t1.path)
            assert inputs.shape[1:] == (1, 16, 16, 16)
            assert inputs.dtype == torch.float32

    assert len(loader) == 4  # 50 patches in batches of 16
    assert all(counts == {str(path): 10 for path in training_paths} for counts in seen)
    assert model.weight.grad is not None
    assert float(model.weight.grad.abs().sum()) > 0
    # Like the seed, no close(): the leak check after the test shows that garbage collection
    # stops the workers and frees the ring.


@pytest.mark.parametrize("num_workers", [0, 2])
def test_distributed_training(training_paths: list[Path], num_workers: int) -> None:
    subjects = [tio.Subject(t1=tio.ScalarImage(path)) for path in training_paths]
    sampler = tio.UniformSampler(subjects[0], patch_size=16)
    num_epochs = 2
    loaders = []
    for rank in (0, 1):
        # The seed's snippet; without a process group, the sampler is told its rank.
        subject_sampler = DistributedSampler(subjects, num_replicas=2, rank=rank, shuffle=True)
        queue = tio.Queue(
            subjects,
            patch_sampler=sampler,
            subject_sampler=subject_sampler,
            shuffle_subjects=False,  # sampler controls order
            num_workers=num_workers,
        )
        loader = SubjectsLoader(queue, batch_size=8)
        loaders.append(loader)

        assert len(subject_sampler) == 3  # 5 subjects over 2 ranks, padded
        assert len(queue) == len(subject_sampler) * queue.patches_per_volume == 30
        for epoch in range(num_epochs):
            subject_sampler.set_epoch(epoch)
            paths: Counter[str] = Counter()
            for batch in loader:
                paths.update(batch.t1.path)
            assigned = Counter(str(training_paths[index]) for index in subject_sampler)
            assert paths == {path: 10 * count for path, count in assigned.items()}
        queue.close()

    assert len(loaders[0]) == len(loaders[1])  # equal batch counts: DDP does not hang
    for epoch in range(num_epochs):
        covered: set[int] = set()
        for loader in loaders:
            assert isinstance(loader.dataset, tio.Queue)
            subject_sampler = loader.dataset.subject_sampler
            subject_sampler.set_epoch(epoch)
            covered.update(subject_sampler)
        assert covered == set(range(NUM_SUBJECTS))  # the ranks cover the dataset
