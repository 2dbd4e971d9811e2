"""Benchmarks of shmqueue: scripts with a fixed seed that print a table (``make bench``).

Each benchmark compares against a baseline measured in the same run, on a dataset generated once
into a cache directory (see :mod:`benchmarks.data`). Run ``python -m benchmarks --help``.
"""
