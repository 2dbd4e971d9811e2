"""``python -m benchmarks.comparison [--quick] [--scenarios LETTERS] [--venvs DIR]``: shmqueue
vs TorchIO, MONAI and nnU-Net's batchgeneratorsv2.

The full comparison waits until the machine is quiet (1-minute load average below 1.0, for 20
minutes at most), runs every scenario with every library, prints the tables and the verdicts on
the issue's targets, and writes docs/benchmarks.md, its figures in docs/images/, README.md's
"Performance" section and bench-results/comparison.json. ``--scenarios`` runs only some
scenarios (letters a-h; e is read from a's runs), also after waiting, and writes only under
bench-results/comparison-LETTERS/ (and its .json), so a partial run never replaces the full
document. ``--quick`` runs a small variant once, without waiting, and writes only under
bench-results/comparison-quick[-LETTERS]/.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from . import document
from .plots import write_figures
from .runs import LIBRARIES, ROOT, check_venvs, run_all, taking_part, wait_for_quiet_machine
from .scenarios import FULL, LETTERS, QUICK, settings
from .tables import Comparison

ALL_LETTERS = "".join(LETTERS)


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
        "--scenarios",
        default=ALL_LETTERS,
        help=f"letters of the scenarios to run, e.g. 'f' or 'a,f' (default {ALL_LETTERS})",
    )
    parser.add_argument(
        "--venvs",
        type=Path,
        default=ROOT / ".bench-venvs",
        help="directory of the competitors' venvs (default .bench-venvs/)",
    )
    args = parser.parse_args(argv)
    letters = "".join(sorted({letter for letter in args.scenarios.lower() if letter not in ", "}))
    unknown = set(letters) - set(LETTERS)
    if not letters or unknown:
        parser.error(f"--scenarios takes letters among {ALL_LETTERS}, got {args.scenarios!r}")
    scale = QUICK if args.quick else FULL
    chosen = settings(scale, [LETTERS[letter] for letter in letters])
    libraries = taking_part(LIBRARIES, chosen)
    check_venvs(libraries, args.venvs)
    for setting in chosen:
        setting.prepare()
    load_before = wait_for_quiet_machine(_progress) if not args.quick else 0.0
    started = datetime.now(timezone.utc)
    clock = time.monotonic()
    runs = run_all(chosen, libraries, args.venvs, _progress)
    session = document.Session(
        started=started.isoformat(timespec="seconds"),
        wall_seconds=time.monotonic() - clock,
        load_before=load_before,
        quick=args.quick,
    )
    comparison = Comparison(runs, chosen, libraries)
    print(document.text(comparison))
    results = ROOT / "bench-results"
    complete = letters == ALL_LETTERS
    name = "comparison" + ("-quick" if args.quick else "") + ("" if complete else f"-{letters}")
    docs = ROOT / "docs" if complete and not args.quick else results / name
    document.write_raw(results / f"{name}.json", runs, session)
    figures = write_figures(comparison, docs / "images")
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "benchmarks.md").write_text(document.markdown(comparison, session, "images"))
    written = [docs / "benchmarks.md", *figures]
    if docs == ROOT / "docs" and document.update_readme(ROOT / "README.md", comparison):
        written.append(ROOT / "README.md")
    print("\nwritten: " + ", ".join(str(path.relative_to(ROOT)) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
