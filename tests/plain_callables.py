"""Plain callables (``Subject -> Subject``) drawing from global random state, for the seeding tests.

In a module of their own, light to import: spawn workers import the module of a callable they
unpickle, and tests/test_adapters.py imports TorchIO and MONAI.
"""

from __future__ import annotations

import torch

import shmqueue as sq


def roll_and_scale(subject: sq.Subject) -> sq.Subject:
    """Draw from torch's global generator: one shift for every image (so label maps stay
    aligned; never zero, so the volume always moves) and a gain for the intensities."""
    shifts = torch.randint(1, 4, (3,)).tolist()
    gain = 1.0 + torch.rand(()).item()
    result = subject.copy()
    for name, image in subject.images.items():
        rolled = torch.roll(image.data, shifts, dims=(1, 2, 3))
        scalar = isinstance(image, sq.ScalarImage)
        result[name] = image.with_data(rolled * gain if scalar else rolled)
    return result


def global_noise(data: torch.Tensor) -> torch.Tensor:
    """A tensor function for :class:`~shmqueue.Lambda` that draws from torch's global generator,
    which the queue does not seed for it (only a callable that is the whole step is seeded)."""
    return data + torch.rand(data.shape)


class WrappingCompose(sq.Compose):
    """A Compose subclass: the queue applies it as one step, and the plain callables inside it
    must be seeded all the same."""
