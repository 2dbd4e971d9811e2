"""Preprocessing and label transforms. Those that keep every image's grid: TorchIO's
intensity normalisations (:class:`ZNormalization`, :class:`RescaleIntensity`), :class:`Clamp`,
:class:`Mask`, the label-map edits :class:`RemapLabels`, :class:`RemoveLabels` and
:class:`SequentialLabels`, and :class:`OneHot`. Those that change it, moving voxels and
updating the affine so that every voxel keeps its world position: :class:`Crop`, :class:`Pad`,
:class:`CropOrPad`, :class:`EnsureShapeMultiple` and :class:`ToCanonical` (every image, label
maps included, keeping its dtype and channels).

They have TorchIO 1.2.1's names, arguments and results, and none is random: they form the
deterministic part of a pipeline. Each of the first kind keeps every image's shape, affine and
dtype, and all but :class:`OneHot` its channels (scalar images are float32 in shmqueue, as
TorchIO makes them; a label map keeps its integer dtype, and a label it cannot hold is refused
rather than wrapped).

Like TorchIO's, they take ``include`` or ``exclude`` (image names) and, where TorchIO does, a
``masking_method``: None (every voxel), the name of a label map of the subject (its non-zero
voxels), an anatomical half (``'Left'``, ``'Right'``, ``'Posterior'``, ``'Anterior'``,
``'Inferior'``, ``'Superior'``, of an image taken to be in RAS orientation), or a callable
``tensor -> bool tensor`` given the image's data.
"""

from .intensity import Clamp, Mask, RescaleIntensity, ZNormalization
from .labels import OneHot, RemapLabels, RemoveLabels, SequentialLabels
from .resample import Resample
from .spatial import Crop, CropOrPad, EnsureShapeMultiple, Pad, Reorient, ToCanonical, ToOrientation

__all__ = [
    "Clamp",
    "Crop",
    "CropOrPad",
    "EnsureShapeMultiple",
    "Mask",
    "OneHot",
    "Pad",
    "RemapLabels",
    "RemoveLabels",
    "Reorient",
    "Resample",
    "RescaleIntensity",
    "SequentialLabels",
    "ToCanonical",
    "ToOrientation",
    "ZNormalization",
]
