"""The cache of preprocessed subjects: ``Queue(cache_dir=...)`` and ``shmqueue cache``.

:mod:`.prefix` says which steps of a transform are cached, :mod:`.identity` what an entry's key
depends on, :mod:`.store` how entries are written, read and bounded, and :mod:`.fill` fills a
cache ahead of training with worker processes.
"""

from .fill import FillReport, fill_cache
from .prefix import cached_prefix
from .store import CacheUsage, VolumeCache

__all__ = ["CacheUsage", "FillReport", "VolumeCache", "cached_prefix", "fill_cache"]
