"""TorchIO 1.x's pipeline: SubjectsDataset, Queue (its DataLoader's worker processes load and
augment whole subjects; the training process samples patches into the buffer), SubjectsLoader.

For scenario (f) the same Queue runs TorchIO's own augmentation on whole subjects, which is the
only place TorchIO 1.x applies it, and a LabelSampler centres the patches. For scenario (h) its
workers run :mod:`.preprocessing`'s pipeline (``ToCanonical``, ``Resample``, ``CropOrPad``,
``ZNormalization``, then ``RandomFlip`` and ``RandomNoise``) on each subject, every epoch:
TorchIO has no cache of preprocessed subjects.
"""

from __future__ import annotations

import torchio as tio

from . import augmentation as aug
from .intensity import brightness, contrast
from .preprocessing import FLIP_AXES
from .runner import Pipeline, Request, main


def _flip_and_noise(request: Request) -> tio.Transform:
    return tio.Compose(
        [
            tio.RandomFlip(axes=(0,), flip_probability=request.flip_probability),
            tio.RandomNoise(std=(request.noise_std, request.noise_std)),  # a fixed std
        ]
    )


def _realistic(variant: aug.Augmentation) -> tio.Transform:
    """Scenario (f)'s Compose in TorchIO 1.x's terms; brightness and contrast through Lambda."""
    return tio.Compose(
        [
            tio.ZNormalization(),
            tio.Lambda(brightness, types_to_apply=[tio.INTENSITY], p=variant.brightness),
            tio.Lambda(contrast, types_to_apply=[tio.INTENSITY], p=variant.contrast),
            tio.RandomAffine(
                scales=aug.SCALES, degrees=aug.DEGREES, isotropic=True, p=variant.affine
            ),
            tio.RandomElasticDeformation(
                num_control_points=aug.ELASTIC_CONTROL_POINTS,
                max_displacement=aug.ELASTIC_MAX_DISPLACEMENT[1],  # a bound: U(-7.5, 7.5) mm
                locked_borders=aug.ELASTIC_LOCKED_BORDERS,
                p=variant.elastic,
            ),
            tio.RandomBiasField(
                coefficients=aug.BIAS_COEFFICIENTS, order=aug.BIAS_ORDER, p=variant.bias_field
            ),
            tio.RandomGamma(log_gamma=aug.LOG_GAMMA, p=variant.gamma),
            tio.RandomBlur(std=aug.BLUR_STD, p=variant.blur),
            tio.RandomNoise(mean=0.0, std=aug.NOISE_STD, p=variant.noise),
            tio.RandomFlip(axes=(0, 1, 2), flip_probability=aug.FLIP_PROBABILITY),
        ]
    )


def _preprocessed(request: Request) -> tio.Transform:
    """Scenario (h)'s Compose in TorchIO 1.x's terms: the preprocessing, then flips and noise."""
    preprocessing = request.require_preprocessing()
    return tio.Compose(
        [
            tio.ToCanonical(),
            tio.Resample(preprocessing.spacing),
            tio.CropOrPad(preprocessing.shape),
            tio.ZNormalization(),
            tio.RandomFlip(axes=FLIP_AXES, flip_probability=request.flip_probability),
            tio.RandomNoise(std=(request.noise_std, request.noise_std)),  # a fixed std
        ]
    )


def _labelled_subjects(request: Request) -> list[tio.Subject]:
    """Each subject's volume and its brain mask, for the scenarios that read both."""
    return [
        tio.Subject(t1=tio.ScalarImage(path), seg=tio.LabelMap(label))
        for path, label in zip(request.paths, request.label_paths, strict=True)
    ]


def build(request: Request) -> Pipeline:
    """TorchIO 1.x's documented patch pipeline over the request's subjects."""
    request.require_cache((), "TorchIO 1.x")
    if request.preprocessing is not None:
        subjects = _labelled_subjects(request)
        transform = _preprocessed(request)
        sampler: tio.data.PatchSampler = tio.UniformSampler(request.patch_size)
    elif request.augmentation is None:
        subjects = [tio.Subject(t1=tio.ScalarImage(path)) for path in request.paths]
        transform = _flip_and_noise(request)
        sampler = tio.UniformSampler(request.patch_size)
    else:
        subjects = _labelled_subjects(request)
        transform = _realistic(request.require_augmentation())
        sampler = tio.LabelSampler(
            request.patch_size, label_name="seg", label_probabilities=aug.LABEL_PROBABILITIES
        )
    queue = tio.Queue(
        tio.SubjectsDataset(subjects, transform=transform),
        max_length=request.max_length,
        samples_per_volume=request.patches_per_volume,
        sampler=sampler,
        num_workers=request.num_workers,
    )
    loader = tio.SubjectsLoader(queue, batch_size=request.batch_size)
    return Pipeline(
        batches=lambda epoch: loader,
        patches_in=lambda batch: int(batch["t1"][tio.DATA].shape[0]),
        estimate=queue.get_max_memory,  # loads subjects[0]: called after training
        estimate_label="queue.get_max_memory(): 4 B x channels x patch voxels x max_length",
    )


if __name__ == "__main__":
    main("TorchIO", tio.__version__, build)
