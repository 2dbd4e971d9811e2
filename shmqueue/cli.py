"""The ``shmqueue`` command: ``shmqueue estimate``, ``shmqueue cache``
(:mod:`shmqueue.cache.command`) and ``shmqueue demo`` (also ``python -m shmqueue ...``).

Each subcommand is a pair of functions: ``_add_<name>(subparsers)`` declares its arguments and
``_run_<name>(args) -> int`` runs it; :func:`build_parser` lists the subcommands. Exit status: 0
when the command succeeds (for ``estimate``: the plan fits this machine), 1 when ``estimate``
finds that it does not fit, 2 on usage errors and unreadable inputs.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .arguments import check_count
from .cache.command import add_cache_command
from .errors import ShmqueueError
from .image import ScalarImage
from .machine import memory_capacity
from .memory import budget_problems, estimate_memory
from .subject import Subject
from .units import pretty_bytes

EXIT_OK = 0
EXIT_DOES_NOT_FIT = 1
EXIT_USAGE = 2

PROGRESS_MIN_FILES = 20
"""Show a header-reading counter on a terminal from this many files on."""

_ESTIMATE_DESCRIPTION = """\
Estimate the memory a shmqueue Queue needs for these images, term by term: the shared-memory
ring of patches, each worker at its peak (process, raw and loaded volumes, .nii.gz
decompression, transform intermediates), the batches and the training process. Only the
headers are read, so thousands of files take seconds. Each path is one subject with one
ScalarImage. The plan is then checked against this machine's available memory (and its
container's limit).

exit status: 0 if the plan fits this machine, 1 if it does not, 2 on usage errors or
unreadable files."""

_ESTIMATE_EXAMPLE = """\
example:
  shmqueue estimate 'data/sub-*/anat/*_T1w.nii.gz' --patch-size 64 \\
      --max-length 300 --num-workers 4 --batch-size 16

  Quote the glob so that shmqueue expands it (the shell may limit the argument count). Add
  --json for a machine-readable breakdown, or --measure to run the pipeline on the largest
  subjects and measure a worker's peak instead of modelling it."""


def build_parser() -> argparse.ArgumentParser:
    """The ``shmqueue`` argument parser, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="shmqueue",
        description="Patch-based training on large 3D volumes through a shared-memory ring.",
    )
    subparsers = parser.add_subparsers(title="commands", dest="command", required=True)
    _add_estimate(subparsers)
    add_cache_command(subparsers)
    _add_demo(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``shmqueue`` command line; returns the exit status.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        0 on success, 1 if ``estimate`` finds that the plan does not fit, 2 on usage errors.

    Example:
        >>> from shmqueue.cli import main
        >>> main(["estimate", "data/*.nii.gz", "--patch-size", "64"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # argparse exits for --help (0) and usage errors (2)
        return exit_request.code if isinstance(exit_request.code, int) else EXIT_USAGE
    status: int = args.run(args)
    return status


# estimate -------------------------------------------------------------------------------------


def _positive(text: str) -> int:
    try:
        return check_count("value", int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None


def _non_negative(text: str) -> int:
    return 0 if text.strip() == "0" else _positive(text)


def _add_estimate(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "estimate",
        help="estimate a queue's memory from image headers, and check it fits this machine",
        description=_ESTIMATE_DESCRIPTION,
        epilog=_ESTIMATE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "paths",
        nargs="+",
        metavar="PATH_OR_GLOB",
        help="NIfTI files (.nii, .nii.gz), or glob patterns such as 'data/**/*.nii.gz'",
    )
    parser.add_argument(
        "--patch-size",
        required=True,
        nargs="+",
        type=_positive,
        metavar="N",
        help="patch size in voxels: one number for a cube, or three (e.g. 96 96 64)",
    )
    parser.add_argument(
        "--max-length", type=_positive, default=300, help="patches in the buffer (default 300)"
    )
    parser.add_argument(
        "--num-workers",
        type=_non_negative,
        default=0,
        help="worker processes; 0 runs everything in the training process (default 0)",
    )
    parser.add_argument(
        "--batch-size", type=_positive, default=16, help="the loader's batch size (default 16)"
    )
    parser.add_argument(
        "--patches-per-volume",
        type=_positive,
        default=10,
        help="patches drawn from each subject per epoch (default 10)",
    )
    parser.add_argument(
        "--ranks-per-node",
        type=_positive,
        default=1,
        help="training processes per machine in distributed training (default 1)",
    )
    parser.add_argument(
        "--start-method",
        choices=("fork", "spawn", "forkserver"),
        default=None,
        help="how workers start, as the Queue's multiprocessing_context (default: the"
        " platform's); spawned workers each import torch, forked ones share its pages",
    )
    parser.add_argument(
        "--measure",
        action="store_true",
        help="run load + transform + sample on the largest subjects in a fresh process and use"
        " the measured peak for the workers (reads those files; takes seconds)",
    )
    parser.add_argument("--json", action="store_true", help="print the breakdown as JSON")
    parser.set_defaults(run=_run_estimate)


def _expand(patterns: Sequence[str]) -> list[Path]:
    """Files named by ``patterns`` (paths or globs, ``**`` recursive), in a stable order.

    Raises:
        ValueError: a pattern matches nothing, or names a directory.
    """
    paths: list[Path] = []
    for pattern in patterns:
        path = Path(pattern).expanduser()
        if path.is_dir():
            raise ValueError(
                f"'{pattern}' is a directory; pass its images, e.g. '{path / '*.nii.gz'}'"
            )
        if path.is_file():
            paths.append(path)
            continue
        matches = sorted(glob.glob(str(path), recursive=True))
        files = [Path(match) for match in matches if Path(match).is_file()]
        if not files:
            raise ValueError(f"no file matches '{pattern}' (resolved from '{Path.cwd()}')")
        paths.extend(files)
    return list(dict.fromkeys(paths))


def _read_headers(subjects: Sequence[Subject], stream: TextIO) -> None:
    """Read every header now (they are cached), with a counter on a terminal."""
    show = stream.isatty() and len(subjects) >= PROGRESS_MIN_FILES
    step = max(1, len(subjects) // 100)
    for done, subject in enumerate(subjects, start=1):
        subject.spatial_shape  # noqa: B018 -- reads and caches the header
        if show and (done % step == 0 or done == len(subjects)):
            stream.write(f"\rReading headers: {done}/{len(subjects)}")
            stream.flush()
    if show:
        stream.write("\n")


def _run_estimate(args: argparse.Namespace) -> int:
    if len(args.patch_size) not in (1, 3):
        print(
            f"shmqueue estimate: error: --patch-size takes one number or three, got"
            f" {len(args.patch_size)}",
            file=sys.stderr,
        )
        return EXIT_USAGE
    patch_size = args.patch_size[0] if len(args.patch_size) == 1 else tuple(args.patch_size)
    try:
        paths = _expand(args.paths)
        subjects = [Subject(image=ScalarImage(path)) for path in paths]
        _read_headers(subjects, sys.stderr)
        estimate = estimate_memory(
            subjects,
            patch_size,
            max_length=args.max_length,
            num_workers=args.num_workers,
            batch_size=args.batch_size,
            ranks_per_node=args.ranks_per_node,
            patches_per_volume=args.patches_per_volume,
            measure=args.measure,
            multiprocessing_context=args.start_method,
        )
    except (ShmqueueError, ValueError, OSError) as error:
        print(f"shmqueue estimate: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    capacity = memory_capacity()
    problems = budget_problems(estimate, capacity=capacity, per_node=True)
    if args.json:
        report = {
            **estimate.to_dict(),
            "fits": not problems,
            "problems": problems,
            "available": capacity.available,
        }
        print(json.dumps(report, indent=2))
    else:
        print(estimate)
        print()
        if problems:
            print("Does NOT fit this machine:")
            for problem in problems:
                print(f"  - {problem}")
        else:
            total = estimate.total_per_node
            print(f"Fits this machine: {pretty_bytes(total)} needed; {capacity.description}.")
    return EXIT_DOES_NOT_FIT if problems else EXIT_OK


def _add_demo(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train a tiny 3D U-Net on generated head phantoms and draw what the queue did",
        description=(
            "Generate (once) 16 head-like T1 phantoms with label maps, train a tiny 3D U-Net"
            " for 2 epochs on the CPU through a Queue with 2 worker processes, report"
            " throughput, waits and memory, and write two pictures: sampled patches with their"
            " labels, and a timeline of buffer fill and consumer waits."
        ),
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path("demo-output"),
        help="where the pictures go (default: ./demo-output)",
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help="where the phantoms are cached (default: $SHMQUEUE_DEMO_DATA or"
        " ~/.cache/shmqueue/demo)",
    )
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo  # imports matplotlib and the network only when asked

    return run_demo(args.output, args.data)
