"""shmqueue side by side with TorchIO 1.2.1, TorchIO 2.0.0a2 and MONAI 1.6 (``make bench-compare``).

Every library runs in its own venv (``.bench-venvs/``), in a fresh subprocess per measurement (a
runner from :mod:`benchmarks.competitors`), on the same generated volumes and settings; this
package only starts the runners, samples their process trees' memory, and writes the tables and
plots. Run ``python -m benchmarks.comparison --help``.
"""
