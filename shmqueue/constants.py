"""TorchIO's key names, for code written against TorchIO 1.x (``batch["t1"][tio.DATA]``).

A batch (:class:`~shmqueue.Batch`) holds each image under its name as a dict with the keys
:data:`DATA`, :data:`AFFINE`, :data:`PATH` and :data:`TYPE` (:data:`INTENSITY` or :data:`LABEL`),
and the patches' ``(B, 6)`` locations under :data:`LOCATION`, as TorchIO's do.
"""

from __future__ import annotations

DATA = "data"
"""An image's voxels: ``(B, C, X, Y, Z)`` in a batch."""

AFFINE = "affine"
"""An image's voxel-to-world affines: ``(B, 4, 4)`` in a batch."""

PATH = "path"
"""An image's file paths (None for in-memory images), one per batch row."""

TYPE = "type"
"""An image's type, one per batch row: :data:`INTENSITY` or :data:`LABEL`."""

INTENSITY = "intensity"
"""The type of a :class:`~shmqueue.ScalarImage`."""

LABEL = "label"
"""The type of a :class:`~shmqueue.LabelMap`."""

LOCATION = "location"
"""The patches' ``(B, 6)`` int64 locations ``[i0, j0, k0, i1, j1, k1]`` in a batch."""
