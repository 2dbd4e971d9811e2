"""shmqueue: patch-based training on large 3D volumes through a shared-memory ring of patches.

A TorchIO-compatible API: switch with ``import shmqueue as tio``.
"""

from .batch import Batch, BatchImage, collate_subjects
from .errors import (
    ImageFileError,
    ImageFileNotFoundError,
    InvalidImageError,
    PatchSizeError,
    QueueClosedError,
    RingAllocationError,
    SamplingError,
    ShmqueueError,
    SubjectError,
    SubjectProcessingError,
    WorkerDiedError,
)
from .image import Image, LabelMap, ScalarImage
from .loader import SubjectsLoader
from .queue import Queue
from .sampling import (
    GridSampler,
    LabelSampler,
    PatchAggregator,
    PatchLocation,
    PatchSampler,
    UniformSampler,
    WeightedSampler,
)
from .stats import QueueStats
from .subject import Subject
from .transforms import (
    Compose,
    Flip,
    Lambda,
    Noise,
    RescaleIntensity,
    Transform,
    ZNormalization,
)

__version__ = "0.1.0"

__all__ = [
    "Batch",
    "BatchImage",
    "Compose",
    "Flip",
    "GridSampler",
    "Image",
    "ImageFileError",
    "ImageFileNotFoundError",
    "InvalidImageError",
    "LabelMap",
    "LabelSampler",
    "Lambda",
    "Noise",
    "PatchAggregator",
    "PatchLocation",
    "PatchSampler",
    "PatchSizeError",
    "Queue",
    "QueueClosedError",
    "QueueStats",
    "RescaleIntensity",
    "RingAllocationError",
    "SamplingError",
    "ScalarImage",
    "ShmqueueError",
    "Subject",
    "SubjectError",
    "SubjectProcessingError",
    "SubjectsLoader",
    "Transform",
    "UniformSampler",
    "WeightedSampler",
    "WorkerDiedError",
    "ZNormalization",
    "__version__",
    "collate_subjects",
]
