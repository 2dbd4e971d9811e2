"""``python -m benchmarks [--quick] [--repeats N] [--output DIR]``: run benchmarks, print tables.

The dataset is generated on first use into ``$SHMQUEUE_BENCH_DATA`` (default
``~/.cache/shmqueue-bench``) and reused afterwards. Results go to ``<output>/steady_state.md``
(the table) and ``<output>/steady_state.json`` (every raw number).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .steady_state import FULL, QUICK, run_benchmark

DEFAULT_REPEATS = 3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a tiny variant (4 files of 64^3, patch 32, 1 repeat) for a smoke test",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"runs of each configuration (default {DEFAULT_REPEATS}; 1 with --quick)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results"),
        help="directory for steady_state.md and steady_state.json (default bench-results/)",
    )
    args = parser.parse_args(argv)
    repeats = args.repeats if args.repeats is not None else 1 if args.quick else DEFAULT_REPEATS
    if repeats < 1:
        parser.error("--repeats must be at least 1")
    table = run_benchmark(QUICK if args.quick else FULL, repeats, args.output)
    print(table)
    print(f"\nwritten: {args.output / 'steady_state.md'}, {args.output / 'steady_state.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
