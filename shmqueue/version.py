"""The package's version, in a leaf module so that any module can read it while the package
initialises (the cache's keys include it)."""

__version__ = "0.1.0"
