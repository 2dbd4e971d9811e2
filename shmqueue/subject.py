"""Subject: the images of one scan session plus its metadata."""

from __future__ import annotations

from typing import Any

from .errors import SubjectError
from .image import Image

_NAME_KEYS = ("name", "subject_id", "id")


class Subject(dict[str, Any]):
    """Images and metadata of one subject, with key and attribute access.

    Values that are :class:`~shmqueue.Image` instances are the subject's images; everything else
    is metadata and travels with every patch drawn from the subject.

    Example:
        >>> import torch, shmqueue as sq
        >>> subject = sq.Subject(t1=sq.ScalarImage(torch.zeros(1, 8, 8, 8)), age=42)
        >>> subject.t1.spatial_shape, subject["age"]
        ((8, 8, 8), 42)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.images:
            raise SubjectError(
                f"A Subject needs at least one image (ScalarImage or LabelMap); got keys"
                f" {sorted(self)}."
            )

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"Subject has no attribute or key '{key}'") from None

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self),))

    @property
    def images(self) -> dict[str, Image]:
        """The images, by name, in insertion order."""
        return {key: value for key, value in self.items() if isinstance(value, Image)}

    @property
    def metadata(self) -> dict[str, Any]:
        """Everything that is not an image."""
        return {key: value for key, value in self.items() if not isinstance(value, Image)}

    @property
    def name(self) -> str | None:
        """The subject's name from its ``name``, ``subject_id`` or ``id`` metadata, if any."""
        for key in _NAME_KEYS:
            if key in self:
                return str(self[key])
        return None

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """The common ``(X, Y, Z)`` of the images (from headers; no voxels are read).

        Raises:
            SubjectError: the images disagree; the message lists each image's shape.
        """
        shapes = {name: image.spatial_shape for name, image in self.images.items()}
        if len(set(shapes.values())) > 1:
            listing = ", ".join(f"{name}: {shape}" for name, shape in shapes.items())
            raise SubjectError(
                f"The images of {self.describe()} have different spatial shapes ({listing})."
                f" Resample them onto one grid (shmqueue.Resample('{next(iter(shapes))}'))"
                " before reading them together."
            )
        return next(iter(shapes.values()))

    def load(self) -> None:
        """Read the voxels of every image, in place."""
        for image in self.images.values():
            image.load()

    def copy(self) -> Subject:
        """A shallow copy: new Subject and Image objects sharing (immutable) tensors."""
        return type(self)(
            {
                key: value.copy() if isinstance(value, Image) else value
                for key, value in self.items()
            }
        )

    def describe(self, index: int | None = None) -> str:
        """``"subject 3 'sub-03' (t1: '/data/t1.nii.gz', seg: in memory)"``, for messages."""
        label = "subject" if index is None else f"subject {index}"
        if self.name is not None:
            label += f" '{self.name}'"
        files = ", ".join(
            f"{key}: '{image.path}'" if image.path is not None else f"{key}: in memory"
            for key, image in self.images.items()
        )
        return f"{label} ({files})"
