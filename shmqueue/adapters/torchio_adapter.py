"""TorchioAdapter: TorchIO transforms (1.x and 2.0, a Compose included) as shmqueue transforms.

TorchIO's conventions are shmqueue's: ``(C, X, Y, Z)`` tensors and 4x4 RAS affines as nibabel
reads them, so images convert without reordering or flipping. What differs between its
versions is only the containers: in 1.x a ``Subject`` and an ``Image`` are dicts, built with
``ScalarImage(tensor=..., affine=..., path=...)``; in 2.0 a ``Subject`` keeps its images and its
metadata apart and an image is built with ``ScalarImage(tensor, affine=...)``. TorchIO draws its
random parameters from torch's global generator, which the adapter seeds from the task's.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from ..image import Image, LabelMap, ScalarImage
from ..subject import Subject
from .base import LibraryAdapter, LibraryImage, converted_subject


class TorchioAdapter(LibraryAdapter):
    """Run a TorchIO transform (1.x or 2.0; a ``Compose`` too) in shmqueue's pipeline.

    The subject goes to TorchIO as a ``torchio.Subject`` (scalar images as ``ScalarImage``,
    label maps as ``LabelMap``, with their affines, paths under 1.x, and the metadata) and comes
    back with the same names, kinds, paths and dtypes, and the affines TorchIO set. TorchIO
    draws its random parameters from torch's global generator: the adapter seeds it (and numpy's
    and Python's) from the generator the queue derives from ``(seed, epoch, subject)``, so an
    augmentation is reproducible, different for each subject-epoch and seed, and the same in
    whichever worker runs it. Every image of a subject gets the same draw, so label maps stay
    aligned with their images (``Lambda(torchio.RandomAffine())`` would draw once per image).

    Needs TorchIO: ``pip install 'shmqueue[torchio]'``.

    Args:
        transform: a TorchIO transform, e.g. ``torchio.RandomAffine()`` or a
            ``torchio.Compose``.

    Raises:
        ImportError: TorchIO is not installed.
        TypeError: ``transform`` is not a TorchIO transform.

    Example:
        >>> import torch, torchio, shmqueue as sq
        >>> subject = sq.Subject(
        ...     t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)),
        ...     seg=sq.LabelMap(torch.randint(0, 2, (1, 8, 8, 8), dtype=torch.uint8)),
        ... )
        >>> adapter = sq.TorchioAdapter(torchio.RandomAffine(degrees=10))
        >>> augmented = adapter(subject, torch.Generator().manual_seed(0))
        >>> augmented.seg.data.dtype, augmented.t1.data.shape
        (torch.uint8, torch.Size([1, 8, 8, 8]))
    """

    library = "torchio"

    def _check(self, transform: Any) -> None:
        if not isinstance(transform, self._library().Transform):
            raise TypeError(
                f"TorchioAdapter runs TorchIO transforms (e.g. torchio.RandomAffine() or a"
                f" torchio.Compose), got {type(transform).__name__}. Pass any other callable"
                " Subject -> Subject as the transform directly."
            )

    def _run(self, subject: Subject) -> Subject:
        torchio = self._library()
        return _from_torchio(torchio, self.transform(_to_torchio(torchio, subject)), subject)


def _to_torchio(torchio: ModuleType, subject: Subject) -> Any:
    """``subject`` as a ``torchio.Subject`` sharing its tensors (TorchIO copies before it
    transforms, unless the transform was built with ``copy=False``)."""
    legacy = issubclass(torchio.Subject, dict)  # 1.x: Subject and Image are dicts
    entries: dict[str, Any] = {}
    for key, value in subject.items():
        if not isinstance(value, Image):
            entries[key] = value
            continue
        kind = torchio.LabelMap if isinstance(value, LabelMap) else torchio.ScalarImage
        if legacy:
            entries[key] = kind(
                tensor=value.data, affine=value.affine.copy(), path=value.path, verify_path=False
            )
        else:
            entries[key] = kind(value.data, affine=value.affine.copy())
    return torchio.Subject(**entries)


def _from_torchio(torchio: ModuleType, result: Any, source: Subject) -> Subject:
    """The shmqueue Subject of TorchIO's ``result`` (a ``torchio.Subject`` of either version)."""
    entries = dict(result) if isinstance(result, dict) else {**result.metadata, **result.images}

    def image(name: str, value: Any) -> LibraryImage | None:
        if not isinstance(value, torchio.Image):
            return None
        kind = LabelMap if isinstance(value, torchio.LabelMap) else ScalarImage
        return kind, value.data, np.asarray(value.affine, dtype=np.float64)

    return converted_subject(source, entries, image)
