"""MONAI's patch pipeline: a Dataset that loads and augments volumes, a PatchDataset that cuts
``patches_per_volume`` random crops from each (RandSpatialCropSamplesd), and a DataLoader whose
worker processes run both.

MONAI has no ``max_length`` buffer here: its ``ShuffleBuffer`` over a ``PatchDataset`` delivers
only ``1 / num_workers`` of the patches with worker processes (MONAI issue #7986: each worker
shards the patches it already sharded by subject), so the runner leaves it out; batches then mix
the patches of two or three consecutive subjects of one worker. The subject order is shuffled
every epoch (a PatchDataset does not shuffle).
"""

from __future__ import annotations

import random
from typing import Any

import monai
from monai.data import DataLoader, Dataset, PatchDataset
from monai.transforms import (
    Compose,
    LoadImaged,
    RandFlipd,
    RandGaussianNoised,
    RandSpatialCropSamplesd,
)
from monai.utils import set_determinism

from .runner import Pipeline, Request, main

KEY = "t1"


def build(request: Request) -> Pipeline:
    """MONAI's idiomatic random-patch pipeline over the request's subjects."""
    set_determinism(seed=request.seed)
    load_and_augment = Compose(
        [
            LoadImaged(KEY, ensure_channel_first=True, image_only=True),
            RandFlipd(KEY, prob=request.flip_probability, spatial_axis=0),
            RandGaussianNoised(KEY, prob=1.0, std=request.noise_std, sample_std=False),
        ]
    )
    crop = RandSpatialCropSamplesd(
        KEY,
        roi_size=request.patch_size,
        num_samples=request.patches_per_volume,
        random_size=False,
    )
    order = random.Random(request.seed)

    def batches(epoch: int) -> DataLoader:
        files: list[dict[str, Any]] = [{KEY: path} for path in request.paths]
        order.shuffle(files)
        volumes = Dataset(files, transform=load_and_augment)
        patches = PatchDataset(volumes, crop, samples_per_image=request.patches_per_volume)
        return DataLoader(patches, batch_size=request.batch_size, num_workers=request.num_workers)

    return Pipeline(
        batches=batches,
        patches_in=lambda batch: int(batch[KEY].shape[0]),
        estimate=lambda: None,
        estimate_label="none: MONAI has no memory estimate",
    )


if __name__ == "__main__":
    main("MONAI", monai.__version__, build)
