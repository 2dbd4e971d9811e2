"""Patch samplers: where patches come from."""

from .base import PatchLocation, PatchSampler, extract_patch
from .grid import GridSampler, PatchAggregator
from .uniform import UniformSampler
from .weighted import LabelSampler, WeightedSampler

__all__ = [
    "GridSampler",
    "LabelSampler",
    "PatchAggregator",
    "PatchLocation",
    "PatchSampler",
    "UniformSampler",
    "WeightedSampler",
    "extract_patch",
]
