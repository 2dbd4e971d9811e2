"""Augmentations evaluated where the patches are.

Spatial (:class:`Flip`, :class:`Affine`, :class:`ElasticDeformation`) and intensity
(:class:`Noise`, ...) augmentations with TorchIO 2.0's names and arguments, and TorchIO 1.x's
``Random*`` names as aliases (:mod:`.torchio1`). Each draws its parameters once per subject
(:meth:`Augmentation.operations`) and describes the result as operations that can be evaluated
on any region: applied as a transform they are evaluated on the whole volume; in a queue, at the
voxels of the patches only (:mod:`.deferred`), with the same result.
"""

from .base import Augmentation
from .intensity import Anisotropy, BiasField, Blur, Brightness, Contrast, Gamma, Noise
from .operations import IntensityOperation, Operation, SpatialOperation
from .spatial import Affine, ElasticDeformation, Flip
from .torchio1 import (
    RandomAffine,
    RandomAnisotropy,
    RandomBiasField,
    RandomBlur,
    RandomElasticDeformation,
    RandomFlip,
    RandomGamma,
    RandomNoise,
)

__all__ = [
    "Affine",
    "Anisotropy",
    "Augmentation",
    "BiasField",
    "Blur",
    "Brightness",
    "Contrast",
    "ElasticDeformation",
    "Flip",
    "Gamma",
    "IntensityOperation",
    "Noise",
    "Operation",
    "RandomAffine",
    "RandomAnisotropy",
    "RandomBiasField",
    "RandomBlur",
    "RandomElasticDeformation",
    "RandomFlip",
    "RandomGamma",
    "RandomNoise",
    "SpatialOperation",
]
