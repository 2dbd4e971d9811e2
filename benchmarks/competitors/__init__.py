"""One runner per library for the side-by-side comparison (``make bench-compare``).

Each runner is started as ``python -m benchmarks.competitors.run_<library>`` by
:mod:`benchmarks.comparison`, with the interpreter of the library's own venv and the repository as
working directory, so no venv ever imports another library. The protocol (a JSON request on stdin,
a JSON result as the last line of stdout) and the timed training loop are in
:mod:`benchmarks.competitors.runner`; a runner only builds its library's idiomatic pipeline.
"""
