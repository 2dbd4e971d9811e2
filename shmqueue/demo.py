"""The demo: train a tiny 3D segmentation network through the Queue on generated head phantoms.

``shmqueue demo`` (and ``make demo``) generates, once, a small dataset of head-like T1 volumes with
label maps into a cache directory, trains a small 3D network on the CPU for two epochs with two
worker processes and realistic augmentation (affine, elastic deformation, bias field, gamma, blur,
noise, flips; evaluated at the patches only), shows progress (patches/s, buffer fill, consumer
wait), and writes two pictures: a montage of augmented patches with their labels on top, and a
timeline of buffer fill and consumer waits.
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from torch import nn

from .augmentation import Affine, BiasField, Blur, ElasticDeformation, Flip, Gamma, Noise
from .batch import Batch
from .image import LabelMap, ScalarImage
from .loader import SubjectsLoader
from .phantoms import head_phantom
from .preprocessing import RescaleIntensity
from .queue import Queue
from .sampling.weighted import LabelSampler
from .subject import Subject
from .transforms import Compose
from .tree_memory import TreeMemorySampler
from .units import pretty_bytes

LABELS = ("background", "brain", "ventricles", "lesion")


def default_cache_dir() -> Path:
    """``$SHMQUEUE_DEMO_DATA`` or ``~/.cache/shmqueue/demo``."""
    configured = os.environ.get("SHMQUEUE_DEMO_DATA")
    return Path(configured) if configured else Path.home() / ".cache" / "shmqueue" / "demo"


def generate_dataset(
    directory: str | os.PathLike[str], num_subjects: int = 16, seed: int = 0
) -> list[Subject]:
    """Write ``num_subjects`` phantoms as .nii.gz into ``directory`` (once) and return Subjects.

    Each subject has ``t1`` (ScalarImage, int16 on disk), ``seg`` (LabelMap: 0 background,
    1 brain, 2 ventricles, 3 lesion; see :func:`~shmqueue.phantoms.head_phantom`) and ``name``
    (``"sub-00"``...).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    subjects = []
    for index in range(num_subjects):
        t1_path = directory / f"sub-{index:02d}_t1.nii.gz"
        seg_path = directory / f"sub-{index:02d}_seg.nii.gz"
        if not (t1_path.exists() and seg_path.exists()):
            t1, seg = head_phantom(np.random.default_rng([seed, index]))
            nib.save(nib.Nifti1Image(t1, affine), t1_path)
            nib.save(nib.Nifti1Image(seg, affine), seg_path)
        subjects.append(
            Subject(t1=ScalarImage(t1_path), seg=LabelMap(seg_path), name=f"sub-{index:02d}")
        )
    return subjects


class TinyUNet(nn.Module):
    """A two-level 3D U-Net small enough to train on a CPU in seconds."""

    def __init__(self, classes: int = len(LABELS), width: int = 8) -> None:
        super().__init__()
        self.encode = nn.Sequential(nn.Conv3d(1, width, 3, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv3d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU())
        self.up = nn.ConvTranspose3d(2 * width, width, 2, stride=2)
        self.decode = nn.Sequential(nn.Conv3d(2 * width, width, 3, padding=1), nn.ReLU())
        self.head = nn.Conv3d(width, classes, 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skip = self.encode(image)
        deep = self.up(self.down(skip))
        logits: torch.Tensor = self.head(self.decode(torch.cat([skip, deep], dim=1)))
        return logits


@dataclass
class Timeline:
    """What the training loop saw, batch by batch."""

    seconds: list[float] = field(default_factory=list)
    fill: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DemoSettings:
    """The demo's knobs; the defaults finish in well under two minutes on two cores."""

    num_subjects: int = 16
    epochs: int = 2
    patch_size: int = 32
    patches_per_volume: int = 8
    max_length: int = 64
    batch_size: int = 8
    num_workers: int = 2
    seed: int = 0


def _progress(epoch: int, epochs: int, done: int, total: int, line: str) -> None:
    width = 24
    filled = int(width * done / max(total, 1))
    bar = "#" * filled + "." * (width - filled)
    sys.stderr.write(f"\repoch {epoch + 1}/{epochs} [{bar}] {done}/{total} {line}")
    sys.stderr.flush()


def train(queue: Queue, settings: DemoSettings) -> tuple[Timeline, list[Batch], float]:
    """Train :class:`TinyUNet` on the queue; return the timeline, a few batches, final loss."""
    torch.manual_seed(settings.seed)
    model = TinyUNet()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    criterion = nn.CrossEntropyLoss()
    loader = SubjectsLoader(queue, batch_size=settings.batch_size)
    timeline = Timeline()
    kept: list[Batch] = []
    started = time.perf_counter()
    loss_value = math.nan
    patches = 0
    for epoch in range(settings.epochs):
        batches = iter(loader)
        for number in range(len(loader)):
            before = time.perf_counter()
            batch = next(batches)
            waited = time.perf_counter() - before
            optimiser.zero_grad()
            logits = model(batch.t1.data)
            loss = criterion(logits, batch.seg.data[:, 0].long())
            loss.backward()
            optimiser.step()
            loss_value = loss.item()
            patches += batch.t1.data.shape[0]
            now = time.perf_counter() - started
            stats = queue.stats()
            timeline.seconds.append(now)
            timeline.fill.append(stats.fill)
            timeline.waits.append(waited)
            timeline.epochs.append(epoch)
            if len(kept) < 2:
                kept.append(batch)
            _progress(
                epoch,
                settings.epochs,
                number + 1,
                len(loader),
                f"| {patches / now:6.1f} patches/s | buffer {stats.fill:4.0%}"
                f" | waited {sum(timeline.waits):5.1f} s | loss {loss_value:.3f}  ",
            )
        sys.stderr.write("\n")
    return timeline, kept, loss_value


def save_montage(batches: list[Batch], path: Path) -> None:
    """Three orthogonal mid-slices of sampled patches with the label map overlaid."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = torch.cat([batch.t1.data for batch in batches])[:8]
    labels = torch.cat([batch.seg.data for batch in batches])[:8]
    figure, axes = plt.subplots(3, len(images), figsize=(2 * len(images), 6.4))
    for column, (image, label) in enumerate(zip(images, labels, strict=True)):
        centre = [size // 2 for size in image.shape[1:]]
        views = (
            (image[0, centre[0]], label[0, centre[0]]),
            (image[0, :, centre[1]], label[0, :, centre[1]]),
            (image[0, :, :, centre[2]], label[0, :, :, centre[2]]),
        )
        for row, (picture, overlay) in enumerate(views):
            axis = axes[row, column]
            axis.imshow(picture.T.numpy(), cmap="gray", origin="lower")
            labels_2d = overlay.T.numpy()
            axis.contour(labels_2d > 0, levels=[0.5], colors="cyan", linewidths=0.8)
            inner = np.ma.masked_less(labels_2d, 2)  # ventricles and lesion, filled
            axis.imshow(inner, cmap="autumn", alpha=0.5, origin="lower", vmin=2, vmax=3)
            axis.set_axis_off()
    figure.suptitle(
        "Augmented patches (affine, elastic, bias field, gamma, blur, noise, flip), three"
        " orthogonal slices each, with their labels: brain outline (cyan), ventricles and lesion"
        " (filled)"
    )
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def save_timeline(timeline: Timeline, path: Path) -> None:
    """Buffer fill and consumer waits against time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (fill_axis, wait_axis) = plt.subplots(2, 1, figsize=(9, 5), sharex=True)
    fill_axis.plot(timeline.seconds, [100 * fill for fill in timeline.fill], drawstyle="steps-post")
    fill_axis.set_ylabel("buffer fill (%)")
    fill_axis.set_ylim(0, 105)
    wait_axis.bar(timeline.seconds, [1000 * wait for wait in timeline.waits], width=0.05)
    wait_axis.set_ylabel("consumer wait (ms)")
    wait_axis.set_xlabel("time since training started (s)")
    for epoch_start in [
        t
        for t, e, p in zip(
            timeline.seconds, timeline.epochs, [-1, *timeline.epochs[:-1]], strict=True
        )
        if e != p
    ]:
        fill_axis.axvline(epoch_start, color="grey", linestyle=":")
        wait_axis.axvline(epoch_start, color="grey", linestyle=":")
    figure.suptitle("Buffer fill and consumer waits, batch by batch")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def augmentation() -> Compose:
    """The demo's transform: intensities rescaled to [0, 1] once per subject, then the random
    augmentation 3D segmentation is trained with, which the workers evaluate at the patches."""
    return Compose(
        [
            RescaleIntensity((0.0, 1.0)),
            Affine(scales=(0.85, 1.15), degrees=15, translation=4, isotropic=True, p=0.8),
            ElasticDeformation(num_control_points=6, max_displacement=4, p=0.3),
            BiasField(coefficients=0.3, p=0.3),
            Gamma(log_gamma=(-0.3, 0.3), p=0.3),
            Blur(std=(0.25, 0.75), p=0.2),
            Noise(std=(0.0, 0.03)),
            Flip(axes=("LR",), flip_probability=0.5),
        ]
    )


def run_demo(
    output: Path, data: Path | None = None, settings: DemoSettings = DemoSettings()
) -> int:
    """Generate (once), train, report and draw; returns a process exit status."""
    data = default_cache_dir() if data is None else data
    output.mkdir(parents=True, exist_ok=True)
    print(f"Dataset: {settings.num_subjects} head phantoms in {data} (generated once)")
    subjects = generate_dataset(data, settings.num_subjects, settings.seed)
    sampler = LabelSampler(
        None,
        settings.patch_size,
        label_name="seg",
        label_probabilities={0: 0.2, 1: 0.4, 2: 0.2, 3: 0.2},
    )
    transform = augmentation()
    with Queue(
        subjects,
        sampler,
        max_length=settings.max_length,
        patches_per_volume=settings.patches_per_volume,
        num_workers=settings.num_workers,
        transform=transform,
        seed=settings.seed,
    ) as queue:
        print(f"{queue}")
        estimate = queue.estimate_memory(batch_size=settings.batch_size)
        with TreeMemorySampler() as memory:
            timeline, batches, loss = train(queue, settings)
        stats = queue.stats()
    elapsed = timeline.seconds[-1]
    print(
        f"Trained {settings.epochs} epochs: {stats.patches_consumed} patches in {elapsed:.1f} s"
        f" ({stats.patches_consumed / elapsed:.1f} patches/s), final loss {loss:.3f}; the"
        f" training loop waited {stats.consumer_wait_seconds:.1f} s in all"
        f" ({stats.first_patch_seconds:.1f} s for the first batch of the last epoch)."
    )
    print(
        f"Memory: estimated {pretty_bytes(estimate.total_per_rank)} for the data pipeline"
        f" before training (ring {pretty_bytes(estimate.ring)}, {settings.num_workers} workers"
        f" {pretty_bytes(estimate.workers)}, training process"
        f" {pretty_bytes(estimate.total_per_rank - estimate.ring - estimate.workers)});"
        f" measured peak of the process tree (PSS) {pretty_bytes(memory.peaks.pss)}, which also"
        " holds the model, its gradients and the optimiser, which the estimate does not know."
    )
    montage, timeline_path = output / "patches.png", output / "timeline.png"
    save_montage(batches, montage)
    save_timeline(timeline, timeline_path)
    print(f"Pictures: {montage} and {timeline_path}")
    return 0
