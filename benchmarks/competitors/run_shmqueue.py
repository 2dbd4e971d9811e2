"""shmqueue's pipeline, as its README shows it: Queue with worker processes, SubjectsLoader.

For scenario (f) the same Queue runs shmqueue's realistic augmentation (``shmqueue.Affine`` and
the others of issue 15), which its workers evaluate only where the patches are, and a
LabelSampler centres the patches. For scenario (h) it runs :mod:`.preprocessing`'s pipeline
(``ToCanonical``, ``Resample``, ``CropOrPad``, ``ZNormalization``, then ``Flip`` and ``Noise``) on
each volume and its brain mask. A request with a disk cache gives the Queue its ``cache_dir``
(scenarios g and h), which keeps every subject as loaded and after the transform's deterministic
steps, and reads it memory-mapped in later epochs.
"""

from __future__ import annotations

from typing import Any

import shmqueue as sq

from . import augmentation as aug
from .preprocessing import FLIP_AXES
from .runner import Pipeline, Request, main


def _realistic(variant: aug.Augmentation) -> Any:
    """Scenario (f)'s Compose in shmqueue's terms (TorchIO 2.0's names and ranges)."""
    return sq.Compose(
        [
            sq.ZNormalization(),
            sq.Brightness(factor=aug.BRIGHTNESS, p=variant.brightness),
            sq.Contrast(factor=aug.CONTRAST, p=variant.contrast),
            sq.Affine(
                scales=aug.SCALES,
                degrees=(-aug.DEGREES, aug.DEGREES),
                isotropic=True,
                p=variant.affine,
            ),
            sq.ElasticDeformation(
                num_control_points=aug.ELASTIC_CONTROL_POINTS,
                max_displacement=aug.ELASTIC_MAX_DISPLACEMENT,
                locked_borders=aug.ELASTIC_LOCKED_BORDERS,
                p=variant.elastic,
            ),
            sq.BiasField(
                coefficients=aug.BIAS_COEFFICIENTS, order=aug.BIAS_ORDER, p=variant.bias_field
            ),
            sq.Gamma(log_gamma=aug.LOG_GAMMA, p=variant.gamma),
            sq.Blur(std=aug.BLUR_STD, p=variant.blur),
            sq.Noise(mean=0.0, std=aug.NOISE_STD, p=variant.noise),
            sq.Flip(axes=(0, 1, 2), flip_probability=aug.FLIP_PROBABILITY),
        ]
    )


def _preprocessed(request: Request) -> Any:
    """Scenario (h)'s Compose in shmqueue's terms: the preprocessing, then the flips and noise."""
    preprocessing = request.require_preprocessing()
    return sq.Compose(
        [
            sq.ToCanonical(),
            sq.Resample(preprocessing.spacing),
            sq.CropOrPad(preprocessing.shape),
            sq.ZNormalization(),
            sq.Flip(axes=FLIP_AXES, flip_probability=request.flip_probability),
            sq.Noise(std=request.noise_std),
        ]
    )


def _labelled_subjects(request: Request) -> list[sq.Subject]:
    """Each subject's volume and its brain mask, for the scenarios that read both."""
    return [
        sq.Subject(t1=sq.ScalarImage(path), seg=sq.LabelMap(label))
        for path, label in zip(request.paths, request.label_paths, strict=True)
    ]


def build(request: Request) -> Pipeline:
    """A :class:`shmqueue.Queue` over the request's subjects, batched by a SubjectsLoader."""
    cache = request.require_cache({"disk"}, "shmqueue")
    if request.preprocessing is not None:
        subjects = _labelled_subjects(request)
        transform = _preprocessed(request)
        sampler: sq.PatchSampler = sq.UniformSampler(patch_size=request.patch_size)
    elif request.augmentation is None:
        subjects = [sq.Subject(t1=sq.ScalarImage(path)) for path in request.paths]
        transform = sq.Compose(
            [sq.Flip(axes=(0,), p=request.flip_probability), sq.Noise(std=request.noise_std)]
        )
        sampler = sq.UniformSampler(subjects[0], patch_size=request.patch_size)
    else:
        subjects = _labelled_subjects(request)
        transform = _realistic(request.require_augmentation())
        sampler = sq.LabelSampler(
            None,
            request.patch_size,
            label_name="seg",
            label_probabilities=aug.LABEL_PROBABILITIES,
        )
    queue = sq.Queue(
        subjects,
        patch_sampler=sampler,
        max_length=request.max_length,
        patches_per_volume=request.patches_per_volume,
        num_workers=request.num_workers,
        transform=transform,
        seed=request.seed,
        cache_dir=request.cache_dir if cache == "disk" else None,
    )
    loader = sq.SubjectsLoader(queue, batch_size=request.batch_size)
    # The full estimate where the queue has it; else TorchIO's buffer-only figure.
    if hasattr(queue, "estimate_memory"):
        estimate = queue.estimate_memory(batch_size=request.batch_size).total_per_rank
        label = "queue.estimate_memory().total_per_rank"
    else:
        estimate, label = queue.max_memory, "queue.max_memory"
    return Pipeline(
        batches=lambda epoch: loader,
        patches_in=lambda batch: int(batch.t1.data.shape[0]),
        estimate=lambda: estimate,
        estimate_label=label,
        reserved_bytes=queue.layout.ring_bytes if request.num_workers else 0,
        close=queue.close,
    )


if __name__ == "__main__":
    main("shmqueue", sq.__version__, build)
