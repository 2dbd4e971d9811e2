"""MONAI's patch pipelines: a Dataset whose transforms load, augment and crop, and a DataLoader
whose worker processes run them.

Steady-state scenarios: the Dataset loads and augments volumes, a PatchDataset cuts
``patches_per_volume`` random crops from each (RandSpatialCropSamplesd). MONAI has no
``max_length`` buffer here: its ``ShuffleBuffer`` over a ``PatchDataset`` delivers only
``1 / num_workers`` of the patches with worker processes (MONAI issue #7986: each worker shards
the patches it already sharded by subject), so the runner leaves it out; batches then mix the
patches of two or three consecutive subjects of one worker. The subject order is shuffled every
epoch (a PatchDataset does not shuffle).

Scenario (f): MONAI's tutorials' pattern for label-weighted patches, with lazy resampling on as
its docs allow. One Compose z-normalises the volume, scales its brightness and contrast (on the
whole volume, before the spatial transforms, as every library here does: see
:mod:`.augmentation`), cuts ``patches_per_volume`` crops centred by label
(RandCropByLabelClassesd, ``ratios=[1, 1]``) and augments each crop; with ``Compose(lazy=True)``
the crop and the affine that follows it are one resampling of the original volume (so a rotated
patch is filled from the volume, not padded), in float32 (``overrides``; lazy resampling
defaults to float64), and every later transform works on the patch alone. The DataLoader
collates the crops of each subject into one batch (``list_data_collate``).

Scenario (h): MONAI's tutorials' pattern for a cached dataset. One Compose loads the volume and
its brain mask, reorients both to RAS (Orientationd), resamples them (Spacingd, bilinear and
nearest), crops or pads them (ResizeWithPadOrCropd), z-normalises the volume, flips each axis,
adds noise and cuts ``patches_per_volume`` uniform crops (RandSpatialCropSamplesd); the
DataLoader collates each subject's crops (``list_data_collate``), subjects shuffled every epoch.
The dataset is MONAI's cache of what comes before the first random transform: a
``PersistentDataset`` (files in the run's ``cache_dir``, written by the workers as they first
meet a subject) or a ``CacheDataset`` (in the training process's memory, filled by
``num_workers`` threads when it is built, then inherited by the forked workers). Both are built
when the first epoch starts, so that their filling counts in it.
"""

from __future__ import annotations

import functools
import math
import random
from typing import Any

import monai
import torch
from monai.data import (
    CacheDataset,
    DataLoader,
    Dataset,
    PatchDataset,
    PersistentDataset,
    list_data_collate,
)
from monai.transforms import (
    Compose,
    LoadImaged,
    NormalizeIntensityd,
    Orientationd,
    Rand3DElasticd,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSpatialCropSamplesd,
    ResizeWithPadOrCropd,
    Spacingd,
)
from monai.utils import set_determinism

from . import augmentation as aug
from .preprocessing import FLIP_AXES
from .runner import Pipeline, Request, main

KEY = "t1"
LABEL = "seg"
ELASTIC_SIGMA = (5.0, 8.0)
ELASTIC_MAGNITUDE = (100.0, 200.0)
"""MONAI's Rand3DElasticd draws a dense offset field, smooths it with a Gaussian of sigma in
ELASTIC_SIGMA voxels and scales it by a magnitude in ELASTIC_MAGNITUDE: the values of MONAI's
tutorials, a few voxels of displacement. Its cost does not depend on them."""


def _flip_and_noise(request: Request) -> Pipeline:
    """Steady-state scenarios: volumes augmented whole, then cut into random crops."""
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


def _realistic_transform(request: Request, variant: aug.Augmentation) -> Compose:
    """Scenario (f)'s Compose in MONAI's terms, lazy, the crops cut before the spatial
    augmentation.

    MONAI's RandAffine scales each axis independently (it has no isotropic scaling), by
    ``1 + U(-0.3, 0.4)``; MONAI's gamma (RandAdjustContrastd) and bias field work on each
    patch's own intensity range and coordinates. RandCropByLabelClassesd centres a crop on any
    voxel of the chosen label and shifts it inside the volume where it would reach past the
    border.
    """
    keys = (KEY, LABEL)
    interpolation = ("bilinear", "nearest")
    radians = math.radians(aug.DEGREES)
    low_scale, high_scale = aug.SCALES
    return Compose(
        [
            LoadImaged(keys, ensure_channel_first=True, image_only=True),
            NormalizeIntensityd(KEY),
            RandScaleIntensityd(
                KEY,
                factors=(aug.BRIGHTNESS[0] - 1, aug.BRIGHTNESS[1] - 1),
                prob=variant.brightness,
            ),
            RandScaleIntensityFixedMeand(
                KEY,
                factors=(aug.CONTRAST[0] - 1, aug.CONTRAST[1] - 1),
                fixed_mean=True,
                preserve_range=True,
                prob=variant.contrast,
            ),
            RandCropByLabelClassesd(
                keys,
                label_key=LABEL,
                spatial_size=request.patch_size,
                ratios=[
                    aug.LABEL_PROBABILITIES[label] for label in sorted(aug.LABEL_PROBABILITIES)
                ],
                num_classes=len(aug.LABEL_PROBABILITIES),
                num_samples=request.patches_per_volume,
            ),
            RandAffined(
                keys,
                prob=variant.affine,
                rotate_range=(radians, radians, radians),
                scale_range=((low_scale - 1, high_scale - 1),) * 3,
                mode=interpolation,
                padding_mode="zeros",
            ),
            Rand3DElasticd(
                keys,
                sigma_range=ELASTIC_SIGMA,
                magnitude_range=ELASTIC_MAGNITUDE,
                prob=variant.elastic,
                mode=interpolation,
                padding_mode="zeros",
            ),
            RandBiasFieldd(
                KEY,
                degree=aug.BIAS_ORDER,
                coeff_range=(-aug.BIAS_COEFFICIENTS, aug.BIAS_COEFFICIENTS),
                prob=variant.bias_field,
            ),
            RandAdjustContrastd(KEY, prob=variant.gamma, gamma=aug.GAMMA),
            RandGaussianSmoothd(
                KEY,
                sigma_x=aug.BLUR_STD,
                sigma_y=aug.BLUR_STD,
                sigma_z=aug.BLUR_STD,
                prob=variant.blur,
            ),
            RandGaussianNoised(KEY, prob=variant.noise, mean=0.0, std=aug.NOISE_STD[1]),
            *(RandFlipd(keys, prob=aug.FLIP_PROBABILITY, spatial_axis=axis) for axis in range(3)),
        ],
        lazy=True,
        # Lazy resampling takes its interpolation from here, not from the transforms' ``mode``,
        # and computes in float64 unless told otherwise.
        overrides={
            KEY: {"mode": "bilinear", "padding_mode": "zeros", "dtype": torch.float32},
            LABEL: {"mode": "nearest", "padding_mode": "zeros", "dtype": torch.float32},
        },
    )


def _realistic(request: Request) -> Pipeline:
    """Scenario (f): each subject's crops, augmented, collated into batches of whole subjects."""
    transform = _realistic_transform(request, request.require_augmentation())
    files = [
        {KEY: path, LABEL: label}
        for path, label in zip(request.paths, request.label_paths, strict=True)
    ]
    loader = _subjects_loader(request, Dataset(files, transform=transform))
    return Pipeline(
        batches=lambda epoch: loader,
        patches_in=lambda batch: int(batch[KEY].shape[0]),
        estimate=lambda: None,
        estimate_label="none: MONAI has no memory estimate",
    )


def _subjects_loader(request: Request, dataset: Dataset) -> DataLoader:
    """A DataLoader whose batches are whole subjects' crops (as many subjects as fit in
    ``batch_size`` patches, at least one), shuffled every epoch."""
    return DataLoader(
        dataset,
        batch_size=max(1, request.batch_size // request.patches_per_volume),  # in subjects
        shuffle=True,
        num_workers=request.num_workers,
        collate_fn=list_data_collate,
    )


def _preprocessing_transform(request: Request) -> Compose:
    """Scenario (h)'s Compose in MONAI's terms: the preprocessing, the flips and noise, the
    crops. Its first random transform is the first flip: MONAI's caches keep what comes before."""
    preprocessing = request.require_preprocessing()
    keys = (KEY, LABEL)
    return Compose(
        [
            LoadImaged(keys, ensure_channel_first=True, image_only=True),
            Orientationd(keys, axcodes="RAS"),
            Spacingd(keys, pixdim=preprocessing.spacing, mode=("bilinear", "nearest")),
            ResizeWithPadOrCropd(keys, spatial_size=preprocessing.shape),
            NormalizeIntensityd(KEY),
            *(
                RandFlipd(keys, prob=request.flip_probability, spatial_axis=axis)
                for axis in FLIP_AXES
            ),
            RandGaussianNoised(KEY, prob=1.0, std=request.noise_std, sample_std=False),
            RandSpatialCropSamplesd(
                keys,
                roi_size=request.patch_size,
                num_samples=request.patches_per_volume,
                random_size=False,
            ),
        ]
    )


def _preprocessed(request: Request) -> Pipeline:
    """Scenario (h): each subject's crops, from MONAI's cache of its preprocessing.

    Raises:
        ValueError: the request asks for no cache (scenario h runs MONAI with one).
    """
    cache = request.require_cache({"disk", "memory"}, "MONAI (scenario h)")
    if cache is None:
        raise ValueError("scenario (h) runs MONAI with a cache: PersistentDataset or CacheDataset")
    transform = _preprocessing_transform(request)
    files = [
        {KEY: path, LABEL: label}
        for path, label in zip(request.paths, request.label_paths, strict=True)
    ]

    @functools.cache
    def loader() -> DataLoader:
        """Built when the first epoch asks for it: a CacheDataset fills itself right away."""
        if cache == "disk":
            dataset: Dataset = PersistentDataset(files, transform, cache_dir=request.cache_dir)
        else:
            dataset = CacheDataset(
                files, transform, num_workers=request.num_workers, progress=False
            )
        return _subjects_loader(request, dataset)

    return Pipeline(
        batches=lambda epoch: loader(),
        patches_in=lambda batch: int(batch[KEY].shape[0]),
        estimate=lambda: None,
        estimate_label="none: MONAI has no memory estimate",
    )


def build(request: Request) -> Pipeline:
    """MONAI's idiomatic patch pipeline for the request's scenario.

    Raises:
        ValueError: a cache asked for outside scenario (h), or none in it.
    """
    set_determinism(seed=request.seed)
    if request.preprocessing is not None:
        return _preprocessed(request)
    request.require_cache((), "MONAI (scenarios a-f)")
    if request.augmentation is None:
        return _flip_and_noise(request)
    return _realistic(request)


if __name__ == "__main__":
    main("MONAI", monai.__version__, build)
