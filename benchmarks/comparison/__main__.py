"""``python -m benchmarks.comparison [--quick] [--venvs DIR]``: shmqueue vs TorchIO and MONAI.

The full comparison waits until the machine is quiet (1-minute load average below 1.0, for 20
minutes at most), runs every scenario with every library, prints the tables and the verdicts on
the issue's targets, and writes docs/benchmarks.md, its figures in docs/images/, README.md's
"Performance" section and bench-results/comparison.json. ``--quick`` runs a small variant once,
without waiting, and writes only under bench-results/comparison-quick/.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from ..data import ensure_dataset
from . import document
from .plots import write_figures
from .runs import LIBRARIES, ROOT, check_venvs, run_all, wait_for_quiet_machine
from .scenarios import FULL, QUICK, settings
from .tables import Comparison


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.comparison",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="4 small volumes, 1 repeat: a smoke test"
    )
    parser.add_argument(
        "--venvs",
        type=Path,
        default=ROOT / ".bench-venvs",
        help="directory of the competitors' venvs (default .bench-venvs/)",
    )
    args = parser.parse_args(argv)
    check_venvs(LIBRARIES, args.venvs)
    scale = QUICK if args.quick else FULL
    chosen = settings(scale)
    paths = ensure_dataset(scale.dataset)
    load_before = wait_for_quiet_machine(_progress) if not args.quick else 0.0
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    runs = run_all(chosen, LIBRARIES, paths, args.venvs, _progress)
    session = document.Session(
        started=started.isoformat(timespec="seconds"),
        wall_seconds=time.monotonic() - clock,
        load_before=load_before,
        quick=args.quick,
    )
    comparison = Comparison(runs, chosen, LIBRARIES)
    print(document.text(comparison))
    results = ROOT / "bench-results"
    if args.quick:
        docs = results / "comparison-quick"
        document.write_raw(results / "comparison-quick.json", runs, session)
    else:
        docs = ROOT / "docs"
        document.write_raw(results / "comparison.json", runs, session)
    figures = write_figures(comparison, docs / "images")
    (docs / "benchmarks.md").write_text(document.markdown(comparison, session, "images"))
    written = [docs / "benchmarks.md", *figures]
    if not args.quick and document.update_readme(ROOT / "README.md", comparison):
        written.append(ROOT / "README.md")
    print("\nwritten: " + ", ".join(str(path.relative_to(ROOT)) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
