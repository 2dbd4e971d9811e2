"""Adapters: other libraries' transforms run as shmqueue transforms, seeded per task.

* :class:`TorchioAdapter`: any TorchIO transform, 1.x or 2.0, a ``Compose`` included.
* :class:`MonaiAdapter`: any MONAI dictionary transform, keyed by the subject's image names.

Each converts the subject into its library's form and back (data, dtypes, affines, image kinds,
paths, metadata) and seeds the library's randomness from the generator the queue derives from
``(seed, epoch, subject)``. TorchIO and MONAI are optional: each is imported when an adapter is
built, never by ``import shmqueue``.
"""

from .monai_adapter import MonaiAdapter
from .torchio_adapter import TorchioAdapter

__all__ = ["MonaiAdapter", "TorchioAdapter"]
