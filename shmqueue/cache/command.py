"""``shmqueue cache``: fill a cache ahead of training, report its size, bound or clear it.

``shmqueue cache fill TARGET`` imports TARGET, ``module:name`` or ``path/to/script.py:name``,
naming a :class:`~shmqueue.Queue`, a :class:`~shmqueue.SubjectsDataset`, or a function of no
argument that returns one, and preprocesses each of its subjects into the cache (the queue's
own ``cache_dir`` unless ``--cache-dir`` is given) with worker processes. The progress bar is
tqdm's (the ``progress`` extra).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

from ..dataset import SubjectsDataset
from ..subject import Subject
from ..transforms import SubjectTransform
from ..units import pretty_bytes
from .fill import fill_cache
from .store import VolumeCache

PROGRESS_EXTRA = "pip install 'shmqueue[progress]'"


def add_cache_command(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Declare ``shmqueue cache`` and its subcommands."""
    parser = subparsers.add_parser(
        "cache",
        help="fill a cache of preprocessed subjects ahead of training; show, bound or clear it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(title="cache commands", dest="cache_command", required=True)
    fill = commands.add_parser("fill", help="preprocess every subject into the cache")
    fill.add_argument("target", help="module:name or script.py:name of a Queue or dataset")
    fill.add_argument("--cache-dir", type=Path, help="the cache (default: the queue's cache_dir)")
    fill.add_argument(
        "--num-workers", type=int, default=2, help="processes filling it (default 2; 0: none)"
    )
    fill.add_argument("--content-hash", action="store_true", help="key files by their content")
    fill.add_argument("--max-size", help="bound on the cache's size, e.g. '50 GiB'")
    fill.add_argument("--no-progress", action="store_true", help="no progress bar")
    fill.set_defaults(run=_run_fill)
    info = commands.add_parser("info", help="the cache's entries and bytes on disk")
    info.add_argument("cache_dir", type=Path)
    info.add_argument("--entries", action="store_true", help="list every entry")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(run=_run_info)
    prune = commands.add_parser("prune", help="remove the least recently read entries")
    prune.add_argument("cache_dir", type=Path)
    prune.add_argument("--max-size", required=True, help="what may stay, e.g. '50 GiB'")
    prune.set_defaults(run=_run_prune)
    clear = commands.add_parser("clear", help="remove every entry")
    clear.add_argument("cache_dir", type=Path)
    clear.set_defaults(run=_run_clear)


def load_target(target: str) -> Any:
    """The object ``module:name`` or ``script.py:name`` names, called if it is a function.

    Raises:
        ValueError: ``target`` has no ``:name``, or names nothing there.
    """
    where, _, name = target.rpartition(":")
    if not where or not name:
        raise ValueError(f"TARGET must be module:name or script.py:name, got {target!r}")
    if where.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(where).stem, where)
        if spec is None or spec.loader is None or not Path(where).is_file():
            raise ValueError(f"Cannot import '{where}': no such script")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # spawned workers unpickle its classes by this name
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(where)
    if not hasattr(module, name):
        raise ValueError(f"'{where}' has no '{name}'")
    found = getattr(module, name)
    return found() if callable(found) and not isinstance(found, SubjectsDataset) else found


def _subjects_and_transform(
    target: Any, name: str
) -> tuple[list[Subject], SubjectTransform | None, VolumeCache | None]:
    from ..queue import Queue  # the queue imports the cache package

    if isinstance(target, Queue):
        return list(target.subjects), target.transform, target.cache
    if isinstance(target, SubjectsDataset):
        return list(target.subjects), target.transform, None
    raise ValueError(
        f"{name} is a {type(target).__name__}; shmqueue cache fill needs a Queue or a"
        " SubjectsDataset (or a function returning one)"
    )


def _run_fill(args: argparse.Namespace) -> int:
    try:
        subjects, transform, cache = _subjects_and_transform(load_target(args.target), args.target)
    except ValueError as error:
        print(f"shmqueue cache fill: {error}", file=sys.stderr)
        return 2
    if args.cache_dir is not None or cache is None:
        if args.cache_dir is None:
            print(
                f"shmqueue cache fill: {args.target} has no cache_dir: pass --cache-dir",
                file=sys.stderr,
            )
            return 2
        cache = VolumeCache(args.cache_dir, content_hash=args.content_hash, max_size=args.max_size)
    bar = None if args.no_progress else _progress_bar(len(subjects))
    try:
        report = fill_cache(
            cache,
            subjects,
            transform,
            args.num_workers,
            None if bar is None else lambda found: bar.update(1),
        )
    finally:
        if bar is not None:
            bar.close()
    print(
        f"{report.built} subject(s) preprocessed, {report.found} already cached, in"
        f" {report.seconds:.1f} s; {cache.usage()}"
    )
    return 0


def _progress_bar(total: int) -> Any:
    try:
        from tqdm import tqdm  # type: ignore[import-untyped]
    except ImportError:
        print(f"(no progress bar: tqdm is not installed; {PROGRESS_EXTRA})", file=sys.stderr)
        return None
    return tqdm(total=total, unit="subject", desc="preprocessing")


def _run_info(args: argparse.Namespace) -> int:
    cache = VolumeCache(args.cache_dir)
    usage = cache.usage()
    entries = cache.summaries() if args.entries else []
    if args.json:
        report = {"directory": str(usage.directory), "entries": usage.entries}
        report |= {"bytes": usage.bytes, "building": usage.building}
        print(json.dumps({**report, "list": entries} if args.entries else report, indent=2))
        return 0
    print(usage)
    for entry in entries:
        print(f"  {entry['key'][:12]}  {pretty_bytes(entry['bytes']):>10}  {entry['subject']}")
    return 0


def _run_prune(args: argparse.Namespace) -> int:
    cache = VolumeCache(args.cache_dir)
    removed = cache.prune(args.max_size)
    print(f"removed {pretty_bytes(removed)}; {cache.usage()}")
    return 0


def _run_clear(args: argparse.Namespace) -> int:
    cache = VolumeCache(args.cache_dir)
    removed = cache.clear()
    print(f"removed {pretty_bytes(removed)}; {cache.usage()}")
    return 0
