"""Train with PyTorch Lightning: a shmqueue patch loader for training, whole volumes to validate.

A ``LightningDataModule`` gives Lightning a :class:`shmqueue.SubjectsLoader` over a
:class:`shmqueue.Queue` (patches, made by the queue's own worker processes) for training and a
``SubjectsLoader`` over a :class:`shmqueue.SubjectsDataset` (whole volumes, one per batch) for
validation. Lightning moves shmqueue's batches to the device like any dict of tensors.

    pip install 'shmqueue[lightning]'
    python examples/lightning_train.py --workers 2 --max-steps 20
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn

import shmqueue as sq


def sphere_subjects(count: int, size: int = 32) -> list[sq.Subject]:
    """Noisy spheres of growing radius with their label maps, in memory."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(size) - size / 2] * 3, indexing="ij"))
    distance = grid.pow(2).sum(dim=0).sqrt()
    subjects = []
    for index in range(count):
        label = (distance < size / 4 + index).to(torch.uint8)[None]
        t1 = 100 * label + torch.normal(50.0, 10.0, label.shape, generator=generator)
        subjects.append(
            sq.Subject(t1=sq.ScalarImage(t1), label=sq.LabelMap(label), name=f"sub-{index}")
        )
    return subjects


class SpheresDataModule(L.LightningDataModule):
    """Patches of the training subjects from a shmqueue Queue; whole validation subjects."""

    def __init__(
        self,
        training: list[sq.Subject],
        validation: list[sq.Subject],
        num_workers: int,
        batch_size: int = 4,
        patch_size: int = 16,
    ) -> None:
        super().__init__()
        self.training = training
        self.validation = validation
        self.num_workers = num_workers
        self.batch_size = batch_size
        self.patch_size = patch_size
        self.queue: sq.Queue | None = None

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.queue is None:
            self.queue = sq.Queue(
                sq.SubjectsDataset(
                    self.training, transform=sq.Compose([sq.ZNormalization(), sq.RandomFlip()])
                ),
                sq.LabelSampler(self.patch_size, "label", {0: 0.5, 1: 0.5}),
                max_length=16,
                patches_per_volume=4,
                num_workers=self.num_workers,
                seed=0,
            )

    def train_dataloader(self) -> sq.SubjectsLoader:
        assert self.queue is not None
        return sq.SubjectsLoader(self.queue, batch_size=self.batch_size)

    def val_dataloader(self) -> sq.SubjectsLoader:
        dataset = sq.SubjectsDataset(self.validation, transform=sq.ZNormalization())
        return sq.SubjectsLoader(dataset, batch_size=1)

    def teardown(self, stage: str) -> None:
        if self.queue is not None:
            self.queue.close()  # stop the workers and free the shared memory
            self.queue = None


class Segmenter(L.LightningModule):
    """A two-layer 3D convolution that segments the spheres."""

    def __init__(self) -> None:
        super().__init__()
        self.network = nn.Sequential(nn.Conv3d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 2, 1))
        self.criterion = nn.CrossEntropyLoss()
        self.validation_batches = 0

    def loss(self, batch: sq.Batch) -> torch.Tensor:
        inputs = batch["t1"][sq.DATA]
        targets = batch["label"][sq.DATA][:, 0].long()
        return self.criterion(self.network(inputs), targets)

    def training_step(self, batch: sq.Batch, batch_index: int) -> torch.Tensor:
        loss = self.loss(batch)
        self.log("training_loss", loss, batch_size=len(batch["t1"][sq.DATA]))
        return loss

    def on_validation_epoch_start(self) -> None:
        self.validation_batches = 0

    def validation_step(self, batch: sq.Batch, batch_index: int) -> None:
        self.validation_batches += 1
        self.log("validation_loss", self.loss(batch), batch_size=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def main(argv: list[str] | None = None) -> tuple[L.Trainer, Segmenter]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-steps", type=int, default=20)
    arguments = parser.parse_args(argv)
    subjects = sphere_subjects(7)
    data = SpheresDataModule(subjects[:4], subjects[4:], num_workers=arguments.workers)
    model = Segmenter()
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=arguments.max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=data)
    print(f"{trainer.global_step} steps, {trainer.callback_metrics}")
    return trainer, model


if __name__ == "__main__":
    main()
