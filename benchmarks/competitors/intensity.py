"""The intensity transforms some libraries lack, written once in torch for their runners.

TorchIO (1.2.1 and 2.0.0a2) has no multiplicative brightness or contrast: its runners wrap
:func:`brightness` and :func:`contrast` in ``tio.Lambda``, as TorchIO's docs suggest for custom
intensity transforms. batchgeneratorsv2 has no bias field: its runner uses
:func:`bias_field`, TorchIO 1.x's polynomial field. Each draws its parameters from torch's global
generator, which every library's worker processes seed.

Imported inside every library's venv: the standard library and torch only.
"""

from __future__ import annotations

import torch

from .augmentation import BIAS_COEFFICIENTS, BIAS_ORDER, BRIGHTNESS, CONTRAST


def _uniform(bounds: tuple[float, float]) -> float:
    low, high = bounds
    return low + (high - low) * float(torch.rand(()))


def brightness(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor * factor``, the factor uniform in :data:`BRIGHTNESS` (nnU-Net v2's definition)."""
    return tensor * _uniform(BRIGHTNESS)


def contrast(tensor: torch.Tensor) -> torch.Tensor:
    """``(tensor - mean) * factor + mean`` clipped to the old range, the factor uniform in
    :data:`CONTRAST` (nnU-Net v2's ContrastTransform with ``preserve_range=True``)."""
    mean = tensor.mean()
    low, high = torch.aminmax(tensor)
    return ((tensor - mean) * _uniform(CONTRAST) + mean).clamp_(low, high)


def bias_field(shape: tuple[int, ...]) -> torch.Tensor:
    """A random multiplicative bias field over a grid of ``shape``, as TorchIO 1.x draws it.

    ``exp`` of a polynomial of degree :data:`BIAS_ORDER` in the coordinates, each normalised to
    [-1, 1] over the grid, with coefficients uniform in (-BIAS_COEFFICIENTS, BIAS_COEFFICIENTS).
    """
    axes = [torch.linspace(-1.0, 1.0, size) for size in shape]
    x, y, z = (
        axes[0][:, None, None],
        axes[1][None, :, None],
        axes[2][None, None, :],
    )
    log_field = torch.zeros(shape)
    for i in range(BIAS_ORDER + 1):
        for j in range(BIAS_ORDER + 1 - i):
            for k in range(BIAS_ORDER + 1 - i - j):
                coefficient = _uniform((-BIAS_COEFFICIENTS, BIAS_COEFFICIENTS))
                log_field += coefficient * x**i * y**j * z**k
    return log_field.exp_()
