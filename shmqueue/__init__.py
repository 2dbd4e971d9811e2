"""shmqueue: patch-based training on large 3D volumes through a shared-memory ring of patches.

A TorchIO-compatible API: switch with ``import shmqueue as tio``.
"""

from .adapters import MonaiAdapter, TorchioAdapter
from .batch import Batch, BatchImage, collate_subjects
from .compat import GridAggregator, RandomFlip, RandomNoise
from .constants import AFFINE, DATA, INTENSITY, LABEL, LOCATION, PATH, TYPE
from .dataset import SubjectsDataset
from .distributed import (
    DistributedSubjectSampler,
    EqualizationWarning,
    RankInfo,
    distributed_environment,
    per_rank_memory_budget,
)
from .errors import (
    ConcurrentIterationError,
    ForeignProcessError,
    ImageChangedError,
    ImageFileError,
    ImageFileNotFoundError,
    ImageMemoryError,
    InvalidImageError,
    MemoryBudgetError,
    PatchSizeError,
    QueueClosedError,
    RingAllocationError,
    SamplingError,
    ShmqueueError,
    SubjectError,
    SubjectProcessingError,
    TransformOutputError,
    WorkerDiedError,
    WorkerStartError,
    WorkerTimeoutError,
)
from .image import Image, LabelMap, ScalarImage
from .loader import SubjectsLoader
from .memory import MemoryEstimate, estimate_memory
from .preprocessing import (
    Clamp,
    Crop,
    CropOrPad,
    EnsureShapeMultiple,
    Mask,
    OneHot,
    Pad,
    RemapLabels,
    RemoveLabels,
    RescaleIntensity,
    SequentialLabels,
    ToCanonical,
    ZNormalization,
)
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
    Transform,
)

__version__ = "0.1.0"

__all__ = [
    "AFFINE",
    "DATA",
    "INTENSITY",
    "LABEL",
    "LOCATION",
    "PATH",
    "TYPE",
    "Batch",
    "BatchImage",
    "Clamp",
    "Compose",
    "ConcurrentIterationError",
    "Crop",
    "CropOrPad",
    "DistributedSubjectSampler",
    "EnsureShapeMultiple",
    "EqualizationWarning",
    "Flip",
    "ForeignProcessError",
    "GridAggregator",
    "GridSampler",
    "Image",
    "ImageChangedError",
    "ImageFileError",
    "ImageFileNotFoundError",
    "ImageMemoryError",
    "InvalidImageError",
    "LabelMap",
    "LabelSampler",
    "Lambda",
    "Mask",
    "MemoryBudgetError",
    "MemoryEstimate",
    "MonaiAdapter",
    "Noise",
    "OneHot",
    "Pad",
    "PatchAggregator",
    "PatchLocation",
    "PatchSampler",
    "PatchSizeError",
    "Queue",
    "QueueClosedError",
    "QueueStats",
    "RandomFlip",
    "RandomNoise",
    "RankInfo",
    "RemapLabels",
    "RemoveLabels",
    "RescaleIntensity",
    "RingAllocationError",
    "SamplingError",
    "ScalarImage",
    "SequentialLabels",
    "ShmqueueError",
    "Subject",
    "SubjectError",
    "SubjectProcessingError",
    "SubjectsDataset",
    "SubjectsLoader",
    "ToCanonical",
    "TorchioAdapter",
    "Transform",
    "TransformOutputError",
    "UniformSampler",
    "WeightedSampler",
    "WorkerDiedError",
    "WorkerStartError",
    "WorkerTimeoutError",
    "ZNormalization",
    "__version__",
    "collate_subjects",
    "distributed_environment",
    "estimate_memory",
    "per_rank_memory_budget",
]
