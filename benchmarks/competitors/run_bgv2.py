"""nnU-Net v2's augmentation, run as nnU-Net v2 runs it: batchgeneratorsv2's transforms applied
to each patch inside a batchgenerators data loader, in worker processes started by
batchgenerators' ``NonDetMultiThreadedAugmenter`` (scenario f only).

What nnU-Net v2 does (``nnUNetTrainer.get_dataloaders`` and ``nnUNetDataLoader``), and this runner
copies: the loader cuts, around each patch centre, a region larger than the patch (nnU-Net's
"initial patch size", so that a rotated or shrunk patch is still filled with data), pads it with
0 (image) and -1 (labels), and hands it to one ``ComposeTransforms`` whose ``SpatialTransform``
(``random_crop=False``) resamples the centre of that region into the final patch, followed by
the intensity transforms and ``MirrorTransform``; ``RemoveLabelTansform(-1, 0)`` restores the
padding label. ``NonDetMultiThreadedAugmenter(num_cached=max(6, workers // 2), wait_time=0.002)``
runs copies of the loader in worker processes, with torch and BLAS limited to one thread each.

Where this differs from nnU-Net, for the comparison's sake:

- nnU-Net reads cases it preprocessed into memory-mappable arrays and draws one case per patch;
  here every library reads the same ``.nii.gz`` files, so a loader reads a subject,
  z-normalises it (nnU-Net's ZScoreNormalization, done here instead of in preprocessing) and cuts
  all ``patches_per_volume`` patches from it. A batch is the patches of ``batch_size //
  patches_per_volume`` subjects; each worker walks its share of the subjects in a shuffled order.
- Patch centres: background or brain with equal probability instead of nnU-Net's 33 % forced
  foreground; as in nnU-Net, a random voxel of that label anywhere in the volume, the region
  padded where it reaches past the border.
- Brightness and contrast run once per subject, on the whole z-normalised volume, before the
  regions are cut, where nnU-Net runs them on each patch after ``SpatialTransform``: the order
  every library follows here (:mod:`.augmentation` says why). They are bgv2's own
  ``MultiplicativeBrightnessTransform`` and ``ContrastTransform``, in a ``ComposeTransforms`` of
  their own.
- Probabilities and ranges are the comparison's (:mod:`.augmentation`); rotation and scaling
  keep nnU-Net's separate probabilities (each the variant's affine p), so more patches are
  resampled than with one affine p. Blur applies to every channel (nnU-Net: p 0.5 per channel).
  Elastic deformation uses ``SpatialTransform``'s own (bgv2's default scale (0, 0.2) of the patch,
  magnitude up to 7.5 voxels); bgv2 has no bias field, so TorchIO 1.x's polynomial field
  (:func:`.intensity.bias_field`) runs on each patch. Gamma, brightness and contrast draw their
  factors with nnU-Net's ``BGContrast`` (half the draws below 1, half above).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from importlib.metadata import version
from typing import Any

import nibabel as nib
import numpy as np
import torch
from batchgenerators.dataloading.data_loader import DataLoader
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import (
    NonDetMultiThreadedAugmenter,
)
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform, ImageOnlyTransform
from batchgeneratorsv2.transforms.intensity.brightness import MultiplicativeBrightnessTransform
from batchgeneratorsv2.transforms.intensity.contrast import BGContrast, ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTansform

from . import augmentation as aug
from .intensity import bias_field
from .runner import Pipeline, Request, main

PAD_LABEL = -1  # nnU-Net's label for padding, removed at the end of the pipeline
ENLARGEMENT_SCALE = 0.85  # the smallest scale nnU-Net v2 sizes its enlarged region for
CENTRE_TRIES = 100_000  # random voxels tried for a centre of the chosen label before giving up


class _BiasField(ImageOnlyTransform):
    """TorchIO 1.x's polynomial bias field over the patch (bgv2 has none of its own)."""

    def _apply_to_image(self, img: torch.Tensor, **params: Any) -> torch.Tensor:
        return img * bias_field(tuple(img.shape[1:]))


def _volume_transforms(variant: aug.Augmentation) -> BasicTransform:
    """Brightness and contrast, for the whole z-normalised volume (:mod:`.augmentation` says
    why they come before the spatial transforms)."""
    return ComposeTransforms(
        [
            RandomTransform(
                MultiplicativeBrightnessTransform(
                    multiplier_range=BGContrast(aug.BRIGHTNESS),
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=variant.brightness,
            ),
            RandomTransform(
                ContrastTransform(
                    contrast_range=BGContrast(aug.CONTRAST),
                    preserve_range=True,
                    synchronize_channels=False,
                    p_per_channel=1,
                ),
                apply_probability=variant.contrast,
            ),
        ]
    )


def _patch_transforms(patch_size: Sequence[int], variant: aug.Augmentation) -> BasicTransform:
    """nnU-Net v2's ``get_training_transforms`` from ``SpatialTransform`` on, with the
    comparison's transforms and probabilities, in the comparison's order."""
    radians = math.radians(aug.DEGREES)
    return ComposeTransforms(
        [
            SpatialTransform(
                tuple(patch_size),
                patch_center_dist_from_border=0,
                random_crop=False,
                p_elastic_deform=variant.elastic,
                elastic_deform_magnitude=aug.ELASTIC_MAX_DISPLACEMENT,
                p_rotation=variant.affine,
                rotation=(-radians, radians),
                p_scaling=variant.affine,
                scaling=aug.SCALES,
                p_synchronize_scaling_across_axes=1,
                bg_style_seg_sampling=False,
                border_mode_seg="constant",
                padding_value_seg=PAD_LABEL,
            ),
            RandomTransform(_BiasField(), apply_probability=variant.bias_field),
            RandomTransform(
                GammaTransform(
                    gamma=BGContrast(aug.GAMMA),
                    p_invert_image=0,
                    synchronize_channels=False,
                    p_per_channel=1,
                    p_retain_stats=1,
                ),
                apply_probability=variant.gamma,
            ),
            RandomTransform(
                GaussianBlurTransform(
                    blur_sigma=aug.BLUR_STD,
                    synchronize_channels=False,
                    synchronize_axes=False,
                    p_per_channel=1,
                    benchmark=True,
                ),
                apply_probability=variant.blur,
            ),
            RandomTransform(
                GaussianNoiseTransform(
                    noise_variance=aug.NOISE_STD,  # bgv2 uses it as the std
                    p_per_channel=1,
                    synchronize_channels=True,
                ),
                apply_probability=variant.noise,
            ),
            MirrorTransform(allowed_axes=(0, 1, 2)),
            RemoveLabelTansform(PAD_LABEL, 0),
        ]
    )


def enlarged_size(patch_size: Sequence[int]) -> tuple[int, ...]:
    """The region nnU-Net v2 cuts before ``SpatialTransform`` (its ``get_patch_size``).

    The patch's extent vector rotated by the largest angle about each axis in turn, the largest
    absolute component per axis kept, divided by the smallest scale 0.85 (64 -> 102, 128 -> 205).
    """
    angle = math.radians(aug.DEGREES)
    cos, sin = math.cos(angle), math.sin(angle)
    extent = np.asarray(patch_size, dtype=np.float64)
    largest = extent.copy()
    for axis in range(3):
        first, second = [other for other in range(3) if other != axis]
        rotated = extent.copy()
        rotated[first] = extent[first] * cos - extent[second] * sin
        rotated[second] = extent[first] * sin + extent[second] * cos
        largest = np.maximum(largest, np.abs(rotated))
    return tuple(int(size) for size in largest / ENLARGEMENT_SCALE)


def _crop(volume: np.ndarray, lower: Sequence[int], size: Sequence[int], fill: float) -> np.ndarray:
    """``volume[lower : lower + size]``, padded with ``fill`` where it leaves the volume."""
    region = np.full(tuple(size), fill, dtype=volume.dtype)
    source = tuple(
        slice(max(start, 0), min(start + length, extent))
        for start, length, extent in zip(lower, size, volume.shape, strict=True)
    )
    target = tuple(
        slice(part.start - start, part.stop - start)
        for part, start in zip(source, lower, strict=True)
    )
    region[target] = volume[source]
    return region


def _centre(labels: np.ndarray, label: int) -> tuple[int, ...]:
    """A random voxel of ``label``, anywhere in the volume: as nnU-Net v2 does, the patch may
    reach past the volume's border, where it is padded (:func:`_crop`).

    Raises:
        RuntimeError: no such voxel turned up in CENTRE_TRIES tries.
    """
    for _ in range(CENTRE_TRIES):
        voxel = tuple(int(np.random.randint(0, extent)) for extent in labels.shape)
        if labels[voxel] == label:
            return voxel
    raise RuntimeError(f"no voxel of label {label} turned up in {CENTRE_TRIES} tries")


class _SubjectPatches(DataLoader):  # type: ignore[misc]
    """One batch per call: the augmented patches of the next subjects of this worker's share.

    Infinite, as ``NonDetMultiThreadedAugmenter`` requires: the training loop decides how many
    batches an epoch has.
    """

    def __init__(
        self, request: Request, variant: aug.Augmentation, subjects_per_batch: int
    ) -> None:
        subjects = list(zip(request.paths, request.label_paths, strict=True))
        super().__init__(
            subjects,
            request.batch_size,
            num_threads_in_multithreaded=max(1, request.num_workers),
            seed_for_shuffle=request.seed,
            infinite=True,
        )
        self.indices = list(range(len(subjects)))
        self.rs.shuffle(self.indices)
        self.patch_size = request.patch_size
        self.patches_per_volume = request.patches_per_volume
        self.subjects_per_batch = subjects_per_batch
        self.region_size = enlarged_size(request.patch_size)
        self.volume_transform = _volume_transforms(variant)
        self.patch_transform = _patch_transforms(request.patch_size, variant)
        weights = np.asarray(list(aug.LABEL_PROBABILITIES.values()), dtype=np.float64)
        self.label_choices = list(aug.LABEL_PROBABILITIES)
        self.label_weights = weights / weights.sum()
        self.walked = 0  # subjects this copy of the loader has processed

    def _next_subject(self) -> tuple[str, str]:
        share = self.indices[self.thread_id :: self.number_of_threads_in_multithreaded]
        subject = self._data[share[self.walked % len(share)]]
        self.walked += 1
        return subject

    def generate_train_batch(self) -> dict[str, Any]:
        count = self.subjects_per_batch * self.patches_per_volume
        data = torch.empty((count, 1, *self.patch_size), dtype=torch.float32)
        target = torch.empty((count, 1, *self.patch_size), dtype=torch.int16)
        index = 0
        with torch.no_grad():
            for _ in range(self.subjects_per_batch):
                t1_path, label_path = self._next_subject()
                image = nib.load(t1_path).get_fdata(dtype=np.float32)
                labels = np.asarray(nib.load(label_path).dataobj, dtype=np.int16)
                image -= image.mean()
                image /= max(float(image.std()), 1e-8)
                volume = self.volume_transform(image=torch.from_numpy(image)[None])["image"]
                image = volume[0].numpy()
                for _ in range(self.patches_per_volume):
                    label = self.label_choices[
                        np.random.choice(len(self.label_choices), p=self.label_weights)
                    ]
                    centre = _centre(labels, label)
                    lower = [c - size // 2 for c, size in zip(centre, self.region_size)]
                    augmented = self.patch_transform(
                        image=torch.from_numpy(_crop(image, lower, self.region_size, 0.0))[None],
                        segmentation=torch.from_numpy(
                            _crop(labels, lower, self.region_size, PAD_LABEL)
                        )[None],
                    )
                    data[index] = augmented["image"]
                    target[index] = augmented["segmentation"]
                    index += 1
        return {"data": data, "target": target}


def build(request: Request) -> Pipeline:
    """nnU-Net v2's augmenter over the request's subjects (scenario f's pipeline only).

    Raises:
        ValueError: the request is not scenario (f)'s, or its batches are not whole subjects,
            or it asks for a cache (bgv2 has none).
    """
    request.require_cache((), "batchgeneratorsv2")
    variant = request.require_augmentation()
    subjects_per_batch, rest = divmod(request.batch_size, request.patches_per_volume)
    if rest or not subjects_per_batch or len(request.paths) % subjects_per_batch:
        raise ValueError(
            f"batch_size {request.batch_size} must be a whole number of subjects'"
            f" {request.patches_per_volume} patches, and divide the {len(request.paths)} subjects"
        )
    loader = _SubjectPatches(request, variant, subjects_per_batch)
    if request.num_workers:
        augmenter: Any = NonDetMultiThreadedAugmenter(
            data_loader=loader,
            transform=None,
            num_processes=request.num_workers,
            num_cached=max(6, request.num_workers // 2),
            seeds=[request.seed * 1000 + worker for worker in range(request.num_workers)],
            pin_memory=False,
            wait_time=0.002,
        )
    else:
        augmenter = SingleThreadedAugmenter(loader, None)
    batches_per_epoch = len(request.paths) // subjects_per_batch

    def batches(epoch: int) -> Iterator[dict[str, Any]]:
        for _ in range(batches_per_epoch):
            yield next(augmenter)

    def close() -> None:
        if request.num_workers:
            augmenter._finish()  # what nnU-Net calls at the end of training

    return Pipeline(
        batches=batches,
        patches_in=lambda batch: int(batch["data"].shape[0]),
        estimate=lambda: None,
        estimate_label="none: batchgenerators has no memory estimate",
        close=close,
    )


if __name__ == "__main__":
    main("batchgeneratorsv2", version("batchgeneratorsv2"), build)
