"""LibraryAdapter: the part every adapter of another library's transforms shares.

An adapter is a :class:`~shmqueue.Transform` that converts the subject into the library's form,
runs the library's transform with its randomness seeded from the task's generator, and converts
the result back. What is shared, and so stated once here:

* the library is an optional dependency, imported when an adapter is built (and when a worker
  unpickles one), never by ``import shmqueue``; a missing one names the extra that installs it;
* seeding: torch's, numpy's and Python's global generators are seeded from the task's generator
  for the length of the call and restored afterwards (:mod:`shmqueue.seeding`), and a library
  with random state of its own (MONAI) seeds it in :meth:`LibraryAdapter._seed`;
* converting an image back: the kind the library reports (scalar or label), the data and affine
  it returns, the path of the image it came from, and the dtypes shmqueue's images keep (float32
  for scalar images; a label map's own integer dtype, which spatial transforms of both libraries
  turn into float).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from types import ModuleType
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import TransformOutputError
from ..image import Image, LabelMap, ScalarImage
from ..seeding import seeded_global_generators
from ..subject import Subject
from ..transforms import Transform, transform_steps
from ..volumes import empty_volume


def import_library(module: str, extra: str, adapter: str) -> ModuleType:
    """``importlib.import_module(module)``, or an ImportError that says how to install it.

    Raises:
        ImportError: the module is not installed; the message names the extra.
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{adapter} needs {extra}, an optional dependency of shmqueue that is not installed:"
            f" install it with `pip install 'shmqueue[{extra}]'` (or `pip install {extra}`)."
        ) from error


class LibraryAdapter(Transform):
    """Base class: run another library's transform on a Subject, seeded from the generator.

    Subclasses set :attr:`library` (the module and the extra that installs it), check the
    wrapped transform in :meth:`_check`, and convert and run in :meth:`_run`; the base seeds the
    global generators around :meth:`_run` and restores them.

    Args:
        transform: the library's transform.
    """

    library: ClassVar[str]

    def __init__(self, transform: Any) -> None:
        super().__init__()
        self._check(transform)
        self.transform = transform

    def apply(self, subject: Subject, generator: torch.Generator) -> Subject:
        with seeded_global_generators(generator):
            self._seed(generator)
            return self._run(subject)

    def _library(self, module: str | None = None) -> ModuleType:
        """The library (or its submodule ``module``), imported, or the error naming the extra."""
        return import_library(module or self.library, self.library, type(self).__name__)

    def _check(self, transform: Any) -> None:
        """Import the library (so that a missing one fails when the adapter is built), and raise
        TypeError if ``transform`` is not something this adapter runs."""
        raise NotImplementedError

    def _seed(self, generator: torch.Generator) -> None:
        """Seed the library's own random state, if it has any beside the global generators."""

    def _run(self, subject: Subject) -> Subject:
        """Convert ``subject``, apply the wrapped transform, convert the result back."""
        raise NotImplementedError


LibraryImage = tuple[type[Image], torch.Tensor, np.ndarray]
"""An image as a library returned it: the shmqueue kind it maps to, its data and its affine."""


def converted_subject(
    source: Subject,
    entries: Mapping[str, Any],
    image: Callable[[str, Any], LibraryImage | None],
) -> Subject:
    """The Subject of what a library returned for ``source``: its ``entries``, by name.

    Entries for which ``image(name, value)`` gives a :data:`LibraryImage` become shmqueue images
    (see :func:`_converted_image`), the others metadata. Names keep ``source``'s order; new names
    follow.
    """
    order = [key for key in source if key in entries]
    order += [key for key in entries if key not in source]
    converted: dict[str, Any] = {}
    for key in order:
        found = image(key, entries[key])
        if found is None:
            converted[key] = entries[key]
            continue
        original = source.get(key)
        converted[key] = _converted_image(
            key, original if isinstance(original, Image) else None, *found
        )
    return Subject(converted)


def _converted_image(
    name: str,
    source: Image | None,
    kind: type[Image],
    data: torch.Tensor,
    affine: np.ndarray,
) -> Image:
    """The shmqueue image of ``kind`` that a library returned as ``data`` and ``affine``.

    It keeps the path of ``source``, the image it was made from, when it is of the same kind.
    Scalar images become float32; a label map gets back its own integer dtype when the library
    made its labels floating point (as spatial transforms do), provided they are whole numbers.

    Raises:
        TransformOutputError: a label map came back with values that are not whole numbers (it
            was interpolated linearly), or outside its dtype's range.
    """
    if kind is ScalarImage:
        data = data.to(torch.float32)
    elif isinstance(source, LabelMap) and data.dtype != source.dtype:
        data = _label_data(name, data, source.dtype)
    if source is not None and type(source) is kind:
        # A patch at the origin of a volume with this affine: same kind and path, new affine.
        return source.as_patch(data, (0, 0, 0), affine)
    return kind(data, affine=affine)


def _label_data(name: str, data: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``data`` as ``dtype``, the label map's own, if that keeps every value."""
    values = data.float() if data.dtype == torch.bfloat16 else data  # numpy has no bfloat16
    labels = empty_volume(tuple(data.shape), dtype)
    # numpy casts and compares twice as fast as torch. The comparison with the values they
    # came from catches fractions, values out of the dtype's range and NaN alike.
    with np.errstate(invalid="ignore"):
        np.copyto(labels.numpy(), values.numpy(), casting="unsafe")
    if np.array_equal(labels.numpy(), values.numpy()):
        return labels
    if data.is_floating_point() and not torch.equal(data, data.round()):
        raise TransformOutputError(
            f"Label map '{name}' came back from the transform with values that are not whole"
            " numbers: it was interpolated linearly. Interpolate label maps with nearest"
            " neighbours (TorchIO does for LabelMap; in MONAI pass mode='nearest' for its key)."
        )
    low, high = (value.item() for value in torch.aminmax(data))
    raise TransformOutputError(
        f"Label map '{name}' came back from the transform with labels from {low:g} to {high:g},"
        f" which its dtype {dtype} cannot hold. Keep the labels in range, or store the label map"
        " in a wider integer dtype."
    )


_ADAPTERS = {"torchio": "TorchioAdapter", "monai": "MonaiAdapter"}


def refuse_foreign_transforms(transform: Any) -> None:
    """Raise if ``transform`` (or a step of a Compose) is a TorchIO or MONAI transform given
    as it is: it would take shmqueue's Subject for one of its own (TorchIO for a MONAI
    dictionary) and fail inside the library, or draw from unseeded state. Say which adapter."""
    for step in transform_steps(transform):
        library = type(step).__module__.partition(".")[0]
        if library in _ADAPTERS:
            adapter = _ADAPTERS[library]
            raise TypeError(
                f"{type(step).__name__} is a {library} transform: shmqueue's subjects are not"
                f" {library}'s. Wrap it as shmqueue.{adapter}({type(step).__name__}(...)), which"
                " converts the subject both ways and seeds it per task."
            )
