"""Scenario (f)'s realistic augmentation: the transforms' ranges, and each variant's probabilities.

Every runner builds the same pipeline from these numbers in its own library's terms, in the
same order: z-normalisation (deterministic preprocessing), multiplicative brightness and contrast
(as nnU-Net v2 defines both), then a random affine (rotation about each axis and isotropic
scaling), an elastic deformation, a bias field, gamma, Gaussian blur, Gaussian noise, and a flip
of each axis with probability 0.5; patches are centred on background and brain with equal
probability.

Brightness and contrast come right after z-normalisation, before the spatial transforms, in every
library (nnU-Net v2 applies them after its spatial transform). Contrast is
``(x - mean) * factor + mean`` clipped to the old range, so it needs statistics of its whole
input: shmqueue evaluates the augmentations only at the patches, and after a resampling it would
have to compute the whole resampled volume once per subject just for the mean and the range;
right after the z-normalisation the statistics are those of a volume the worker holds anyway.
Every library applies the two in that place, on the whole z-normalised volume, with parameters
drawn once per subject, so they all run one pipeline and pay for it in their own way. The
ranges are nnU-Net v2's defaults where nnU-Net has the transform, TorchIO's otherwise; where a
library cannot express a range exactly, its runner's docstring says what it uses instead.

Like :mod:`benchmarks.competitors.runner`, this module is imported inside every library's venv:
the standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

DEGREES = 30.0
"""Rotation about each axis, uniform in (-DEGREES, DEGREES) degrees (nnU-Net v2's 3D default)."""
SCALES = (0.7, 1.4)
"""Isotropic scale factor, uniform in this range (nnU-Net v2's default)."""
ELASTIC_CONTROL_POINTS = 7
ELASTIC_MAX_DISPLACEMENT = (0.0, 7.5)
"""mm (= voxels here): TorchIO's default elastic deformation, which nnU-Net v2 leaves out."""
ELASTIC_LOCKED_BORDERS = 2
BIAS_COEFFICIENTS = 0.5
"""The polynomial's coefficients, uniform in (-0.5, 0.5) (TorchIO's default; nnU-Net has none)."""
BIAS_ORDER = 3
GAMMA = (0.7, 1.5)
"""Gamma (nnU-Net v2's range); TorchIO's ``log_gamma`` is its logarithm, LOG_GAMMA."""
LOG_GAMMA = (-0.35, 0.4)
BLUR_STD = (0.5, 1.0)
"""Gaussian blur sigma in voxels (mm here), nnU-Net v2's range."""
NOISE_STD = (0.0, 0.1)
"""Standard deviation of additive Gaussian noise on z-normalised intensities (nnU-Net v2's)."""
BRIGHTNESS = (0.75, 1.25)
"""Multiplicative brightness factor: ``x * factor`` (nnU-Net v2's MultiplicativeBrightness)."""
CONTRAST = (0.75, 1.25)
"""Contrast factor: ``(x - mean) * factor + mean``, clipped to the old range (nnU-Net v2's)."""
FLIP_PROBABILITY = 0.5
"""Each spatial axis is flipped independently with this probability (nnU-Net's mirroring)."""
LABEL_PROBABILITIES = {0: 1.0, 1: 1.0}
"""Patch centres: a background voxel or a brain voxel, with equal probability.

shmqueue and TorchIO draw only centres around which the patch fits in the volume (at 128^3 in
these heads, brain voxels only); MONAI shifts a crop that would leave the volume back inside it;
batchgeneratorsv2, as nnU-Net, pads the part that leaves it."""


@dataclass(frozen=True)
class Augmentation:
    """One variant of scenario (f): the probability of applying each random transform.

    Flipping is not among them: every variant flips each axis with :data:`FLIP_PROBABILITY`.
    """

    name: str
    affine: float
    elastic: float
    bias_field: float
    gamma: float
    blur: float
    noise: float
    brightness: float
    contrast: float

    def describe(self) -> str:
        """The probabilities, for the scenario's description."""
        return (
            f"affine p {self.affine:g}, elastic p {self.elastic:g}, bias field p"
            f" {self.bias_field:g}, gamma p {self.gamma:g}, blur p {self.blur:g}, noise p"
            f" {self.noise:g}, brightness p {self.brightness:g}, contrast p {self.contrast:g},"
            f" flip p {FLIP_PROBABILITY:g} per axis"
        )


NNUNET = Augmentation(
    name="nnU-Net p",
    affine=0.2,  # nnU-Net draws rotation (p 0.2) and scaling (p 0.2) apart; see the runners
    elastic=0.2,  # not in nnU-Net v2's default: our choice
    bias_field=0.1,  # not in nnU-Net v2's default: our choice
    gamma=0.3,
    blur=0.2,
    noise=0.1,
    brightness=0.15,
    contrast=0.15,
)
"""nnU-Net v2's default probabilities, plus elastic (0.2) and bias field (0.1), which it omits."""

EVERY = Augmentation(
    name="all p = 1",
    affine=1.0,
    elastic=1.0,
    bias_field=1.0,
    gamma=1.0,
    blur=1.0,
    noise=1.0,
    brightness=1.0,
    contrast=1.0,
)
"""Every random transform applied to every subject: the most work per patch."""

VARIANTS = (NNUNET, EVERY)
