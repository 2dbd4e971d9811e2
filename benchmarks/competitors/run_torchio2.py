"""TorchIO 2.0's pipeline, the seed's code: Queue with background threads, SubjectsLoader.

For scenario (f) the Queue's threads run TorchIO 2.0's own augmentation on whole subjects (its
Queue applies ``transform`` per subject, before sampling) and a LabelSampler centres the patches.
"""

from __future__ import annotations

import torchio as tio
from torchio.loader import SubjectsLoader

from . import augmentation as aug
from .intensity import brightness, contrast
from .runner import Pipeline, Request, main


def _spatial(variant: aug.Augmentation) -> list[tio.Transform]:
    """The affine and the elastic deformation; one fused ``tio.Spatial`` (one resampling of the
    volume, TorchIO 2.0's documented way to combine them) when both always apply, else one
    ``Affine`` and one ``ElasticDeformation``, each with its own probability."""
    # A single number would be a fixed angle in TorchIO 2.0 (in 1.x, a range about 0).
    affine = {"scales": aug.SCALES, "degrees": (-aug.DEGREES, aug.DEGREES), "isotropic": True}
    elastic = {
        "num_control_points": aug.ELASTIC_CONTROL_POINTS,
        "max_displacement": aug.ELASTIC_MAX_DISPLACEMENT,
        "locked_borders": aug.ELASTIC_LOCKED_BORDERS,
    }
    if variant.affine == variant.elastic == 1:
        return [tio.Spatial(**affine, **elastic)]
    return [
        tio.Affine(**affine, p=variant.affine),
        tio.ElasticDeformation(**elastic, p=variant.elastic),
    ]


def _realistic(variant: aug.Augmentation) -> tio.Transform:
    """Scenario (f)'s Compose in TorchIO 2.0's terms; brightness and contrast through Lambda.

    TorchIO 2.0's ``BiasField`` is its own (SynthSeg's: a coarse normal field, upsampled and
    exponentiated); it runs with its default ``std=0.5``.
    """
    return tio.Compose(
        [
            tio.ZNormalization(),
            tio.Lambda(brightness, types_to_apply="scalar", p=variant.brightness),
            tio.Lambda(contrast, types_to_apply="scalar", p=variant.contrast),
            *_spatial(variant),
            tio.BiasField(std=0.5, p=variant.bias_field),
            tio.Gamma(log_gamma=aug.LOG_GAMMA, p=variant.gamma),
            tio.Blur(std=aug.BLUR_STD, p=variant.blur),
            tio.Noise(mean=0.0, std=aug.NOISE_STD, p=variant.noise),
            tio.Flip(axes=(0, 1, 2), flip_probability=aug.FLIP_PROBABILITY),
        ]
    )


def build(request: Request) -> Pipeline:
    """The seed's example over the request's subjects.

    Raises:
        ValueError: the request asks for a cache, or for scenario (h)'s preprocessing, which
            this runner does not build (TorchIO 2.0.0a2 is not in that scenario).
    """
    request.require_cache((), "TorchIO 2.0")
    if request.preprocessing is not None:
        raise ValueError("TorchIO 2.0's runner has no pipeline for scenario (h)'s preprocessing")
    if request.augmentation is None:
        subjects = [tio.Subject(t1=tio.ScalarImage(path)) for path in request.paths]
        transform = tio.Compose(
            [tio.Flip(axes=(0,), p=request.flip_probability), tio.Noise(std=request.noise_std)]
        )
        sampler: tio.PatchSampler = tio.UniformSampler(subjects[0], patch_size=request.patch_size)
    else:
        subjects = [
            tio.Subject(t1=tio.ScalarImage(path), seg=tio.LabelMap(label))
            for path, label in zip(request.paths, request.label_paths, strict=True)
        ]
        transform = _realistic(request.require_augmentation())
        sampler = tio.LabelSampler(
            subjects[0],
            patch_size=request.patch_size,
            label_name="seg",
            label_probabilities=aug.LABEL_PROBABILITIES,
        )
    queue = tio.Queue(
        subjects,
        patch_sampler=sampler,
        max_length=request.max_length,
        patches_per_volume=request.patches_per_volume,
        num_workers=request.num_workers,
        transform=transform,
    )
    loader = SubjectsLoader(queue, batch_size=request.batch_size)
    return Pipeline(
        batches=lambda epoch: loader,
        patches_in=lambda batch: int(batch.t1.data.shape[0]),
        estimate=lambda: int(queue.max_memory),
        estimate_label="queue.max_memory: 4 B x channels x patch voxels x max_length",
    )


if __name__ == "__main__":
    main("TorchIO", tio.__version__, build)
