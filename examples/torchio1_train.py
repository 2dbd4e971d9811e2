"""A TorchIO 1.x training script that runs on shmqueue with only its import changed.

Everything below is written for TorchIO 1.2.1: ``SubjectsDataset``, ``Queue(subjects_dataset,
max_length, samples_per_volume, sampler, num_workers=...)``, a ``LabelSampler`` built from the
patch size alone, ``RandomFlip`` and ``RandomNoise`` with their 1.x arguments,
``batch["t1"][tio.DATA]``, a whole-volume validation loader, and ``GridSampler`` with
``GridAggregator`` for inference. Replace the import by ``import torchio as tio`` and it runs on
TorchIO as well (the tests run both).

    python examples/torchio1_train.py --workers 2
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

import shmqueue as tio  # the one line changed from TorchIO: was `import torchio as tio`


def write_subjects(directory: Path, count: int, size: int) -> list[tio.Subject]:
    """Write ``count`` noisy spheres and their label maps as NIfTI files; return the subjects."""
    rng = np.random.default_rng(0)
    grid = np.indices((size, size, size)) - size / 2
    subjects = []
    for index in range(count):
        radius = size / 4 + index
        label = (np.sqrt((grid**2).sum(axis=0)) < radius).astype(np.uint8)
        t1 = (100 * label + rng.normal(50, 10, label.shape)).astype(np.float32)
        t1_path, label_path = directory / f"t1_{index}.nii.gz", directory / f"label_{index}.nii.gz"
        nib.save(nib.Nifti1Image(t1, np.eye(4)), t1_path)
        nib.save(nib.Nifti1Image(label, np.eye(4)), label_path)
        subjects.append(
            tio.Subject(
                t1=tio.ScalarImage(t1_path), label=tio.LabelMap(label_path), name=f"sub-{index}"
            )
        )
    return subjects


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data", type=Path, default=None, help="directory for the NIfTI files")
    arguments = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as temporary:
        directory = arguments.data or Path(temporary)
        subjects = write_subjects(directory, count=5, size=32)
        return train(subjects[:4], subjects[4:], arguments.workers, arguments.epochs)


def train(
    training_subjects: list[tio.Subject],
    validation_subjects: list[tio.Subject],
    num_workers: int,
    num_epochs: int,
) -> dict[str, float]:
    patch_size = 16
    training_transform = tio.Compose(
        [
            tio.ZNormalization(),
            tio.RandomNoise(std=(0, 0.1)),
            tio.RandomFlip(axes=(0, 1, 2), flip_probability=0.5),
        ]
    )
    training_set = tio.SubjectsDataset(training_subjects, transform=training_transform)
    validation_set = tio.SubjectsDataset(validation_subjects, transform=tio.ZNormalization())

    sampler = tio.LabelSampler(patch_size, "label", {0: 0.5, 1: 0.5})
    patches_queue = tio.Queue(
        training_set,
        16,  # max_length
        4,  # samples_per_volume
        sampler,
        num_workers=num_workers,
        shuffle_subjects=True,
        shuffle_patches=True,
    )
    training_loader = tio.SubjectsLoader(patches_queue, batch_size=4)
    validation_loader = tio.SubjectsLoader(validation_set, batch_size=1)

    model = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    criterion = nn.CrossEntropyLoss()
    results: dict[str, float] = {}
    for _ in range(num_epochs):
        model.train()
        for batch in training_loader:
            inputs = batch["t1"][tio.DATA]
            targets = batch["label"][tio.DATA][:, 0].long()
            optimizer.zero_grad()
            loss = criterion(model(inputs), targets)
            loss.backward()
            optimizer.step()
            results["training_loss"] = loss.item()
        model.eval()
        with torch.no_grad():
            losses = [
                criterion(model(batch["t1"][tio.DATA]), batch["label"][tio.DATA][:, 0].long())
                for batch in validation_loader
            ]
        results["validation_loss"] = float(torch.stack(losses).mean())

    # Inference on a whole volume, patch by patch.
    subject = validation_set[0]
    grid_sampler = tio.GridSampler(subject, patch_size, patch_overlap=4)
    aggregator = tio.GridAggregator(grid_sampler)
    with torch.no_grad():
        for batch in tio.SubjectsLoader(grid_sampler, batch_size=4):
            aggregator.add_batch(model(batch["t1"][tio.DATA]), batch[tio.LOCATION])
    prediction = aggregator.get_output_tensor().argmax(dim=0)
    label = subject["label"].data[0]
    results["dice"] = float(2 * (prediction * label).sum() / (prediction.sum() + label.sum()))
    print(", ".join(f"{key} {value:.3f}" for key, value in results.items()))
    return results


if __name__ == "__main__":
    main()
