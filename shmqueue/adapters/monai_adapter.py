"""MonaiAdapter: MONAI dictionary transforms as shmqueue transforms.

MONAI's conventions are close to shmqueue's: channel-first tensors whose spatial axes are the
file's voxel axes (as nibabel reads them), and a ``MetaTensor`` carrying a 4x4 float64 affine in
the space named by its ``meta["space"]``, RAS unless a reader chose LPS. The adapter hands each
image over as a ``MetaTensor`` with its RAS affine and its path as ``filename_or_obj``, and takes
back data and affine, turning an LPS affine into RAS. MONAI's spatial transforms update the
affine to follow the resampling (the anatomy keeps its world coordinates); that affine is kept.

MONAI writes into its input in places (``NormalizeIntensityd(nonzero=True)`` does), so the
adapter hands over copies of the voxels: the subject's tensors are shared with later epochs.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..image import Image, LabelMap, ScalarImage
from ..seeding import draw_seeds
from ..subject import Subject
from ..volumes import empty_volume
from .base import LibraryAdapter, LibraryImage, converted_subject

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class MonaiAdapter(LibraryAdapter):
    """Run a MONAI dictionary transform (or a MONAI ``Compose`` of them) in shmqueue's pipeline.

    The transform gets a dictionary with one ``MetaTensor`` per image, keyed by the image's name
    in the subject (so ``keys`` are the subject's image names), plus the subject's metadata. The
    result comes back with the same names, kinds, paths and dtypes (a label map MONAI resampled
    into float32 returns to its integer dtype), and the affines MONAI set. Randomness is seeded
    from the generator the queue derives from ``(seed, epoch, subject)``: MONAI's own random
    state (``set_random_state``, which a ``Compose`` passes on to the transforms it holds) and
    torch's, numpy's and Python's global generators, restored afterwards. So an augmentation is
    reproducible, different for each subject-epoch and seed, the same in whichever worker runs
    it, and one draw serves every key, keeping label maps aligned with their images.

    Needs MONAI: ``pip install 'shmqueue[monai]'``.

    Args:
        transform: a MONAI dictionary transform (e.g. ``RandAffined(keys=["t1", "seg"],
            mode=("bilinear", "nearest"))``), a MONAI ``Compose`` of them, or a callable taking
            and returning such a dictionary, run with torch's, numpy's and Python's global
            generators seeded per task. MONAI random transforms held inside such a callable keep
            random states of their own, out of the adapter's reach: put them in a
            ``monai.transforms.Compose`` instead (``shmqueue.testing.check_transform`` reports
            a callable that does not follow its generator).

    Raises:
        ImportError: MONAI is not installed.
        TypeError: ``transform`` is a MONAI array transform (use its dictionary version) or not
            callable.

    Example:
        >>> import torch, shmqueue as sq
        >>> from monai.transforms import RandAffined
        >>> subject = sq.Subject(
        ...     t1=sq.ScalarImage(torch.rand(1, 8, 8, 8)),
        ...     seg=sq.LabelMap(torch.randint(0, 2, (1, 8, 8, 8), dtype=torch.uint8)),
        ... )
        >>> adapter = sq.MonaiAdapter(RandAffined(
        ...     ["t1", "seg"], prob=1.0, rotate_range=0.2, mode=("bilinear", "nearest")))
        >>> augmented = adapter(subject, torch.Generator().manual_seed(0))
        >>> augmented.seg.data.dtype, augmented.t1.data.shape
        (torch.uint8, torch.Size([1, 8, 8, 8]))
    """

    library = "monai"

    def _check(self, transform: Any) -> None:
        transforms = self._library("monai.transforms")
        dictionary_kinds = (transforms.MapTransform, transforms.Compose)
        if isinstance(transform, transforms.Transform) and not isinstance(
            transform, dictionary_kinds
        ):
            raise TypeError(
                f"MonaiAdapter runs MONAI dictionary transforms, whose keys are the subject's"
                f" image names; {type(transform).__name__} is an array transform, which would"
                f" draw anew for each image. Use its dictionary version (e.g."
                f" {type(transform).__name__}d(keys=[...]))."
            )
        if not callable(transform):
            raise TypeError(
                f"MonaiAdapter needs a MONAI dictionary transform, got {type(transform).__name__}"
            )

    def _seed(self, generator: torch.Generator) -> None:
        if isinstance(self.transform, self._library("monai.transforms").Randomizable):
            self.transform.set_random_state(seed=draw_seeds(generator, 1)[0])

    def _run(self, subject: Subject) -> Subject:
        meta_tensor = self._library("monai.data").MetaTensor
        utils = self._library("monai.utils")
        result = self.transform(
            {
                key: _meta_tensor(meta_tensor, value) if isinstance(value, Image) else value
                for key, value in subject.items()
            }
        )
        if not isinstance(result, Mapping):
            raise TypeError(
                f"{self.transform!r} returned {type(result).__name__}, not a dictionary."
                + (_SEVERAL_SAMPLES if isinstance(result, (list, tuple)) else "")
            )

        def image(name: str, value: Any) -> LibraryImage | None:
            if not isinstance(value, (torch.Tensor, np.ndarray)) or value.ndim != 4:
                return None
            source = subject.get(name)
            source = source if isinstance(source, Image) else None
            if isinstance(value, meta_tensor):
                return _from_meta_tensor(value, source, utils)
            data = torch.as_tensor(value)  # the affine was not tracked: unchanged
            return _kind(source, data), data, np.eye(4) if source is None else source.affine

        return converted_subject(subject, result, image)


_SEVERAL_SAMPLES = (
    " It draws several samples from a subject (e.g. RandCropByPosNegLabeld): that is the patch"
    " sampler's job in shmqueue; use a sampler (e.g. LabelSampler) instead."
)


def _meta_tensor(meta_tensor: Any, image: Image) -> Any:
    """``image`` as a MONAI ``MetaTensor`` holding a copy of its voxels."""
    data = empty_volume(tuple(image.data.shape), image.dtype).copy_(image.data)
    meta = {} if image.path is None else {"filename_or_obj": str(image.path)}
    return meta_tensor(data, affine=torch.tensor(image.affine), meta=meta)  # MONAI may edit it


def _from_meta_tensor(value: Any, source: Image | None, utils: ModuleType) -> LibraryImage:
    """The data and RAS affine of a ``MetaTensor`` MONAI returned for ``source``."""
    data = value.as_tensor()
    affine = value.affine.detach().cpu().numpy().astype(np.float64)
    if value.meta.get(utils.MetaKeys.SPACE) == utils.SpaceKeys.LPS:
        affine = _LPS_TO_RAS @ affine
    return _kind(source, data), data, affine


def _kind(source: Image | None, data: torch.Tensor) -> type[Image]:
    """The kind of the image it came from; for a new image, from its dtype."""
    if source is not None:
        return type(source)
    return ScalarImage if data.is_floating_point() else LabelMap
