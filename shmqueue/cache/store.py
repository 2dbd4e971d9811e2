"""VolumeCache: preprocessed subjects on disk, read back memory-mapped.

Each entry is one subject after loading and after the transform's cached prefix
(:func:`~shmqueue.cache.prefix.cached_prefix`), under its key (:mod:`~shmqueue.cache.identity`):
every image's voxels as an uncompressed ``.npy`` array, which a reader maps copy-on-write
(``np.load(mmap_mode="c")``): its pages come from the page cache, shared by every process that
reads the entry, and count in no process's anonymous memory; a patch touches only the pages
its region lies on. Beside them, the subject without its voxels (pickled: kinds, paths,
headers, metadata) and a JSON summary for ``shmqueue cache info``. Only the directory's owner
should be able to write it: entries are unpickled.

The directory::

    entries/<2 hex>/<key>/   complete entries, renamed into place in one step
    building/<key>.<host>.<pid>.<n>/   entries being written
    locks/<key>.lock   held (flock) by the process building <key>
    removing/   entries being deleted, renamed away first

A reader never sees a partial entry: an entry is written under ``building/`` and renamed into
``entries/`` once complete, so a process killed while writing leaves only a ``building/``
directory, removed by the next process that finds its writer dead. Several processes (DDP ranks,
``shmqueue cache fill`` beside training) fill one cache at once: the first to miss a key takes
its lock and builds it; the others wait on the lock and then read the entry. With ``max_size``,
the least recently read entries are removed after each write until the cache fits.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import pickle
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CacheError
from ..image import Image, PathLike
from ..subject import Subject
from ..transforms import SubjectTransform
from ..units import parse_bytes, pretty_bytes
from .identity import subject_key

logger = logging.getLogger("shmqueue")

_SUBJECT = "subject.pkl"
_SUMMARY = "entry.json"


@dataclass(frozen=True)
class CacheUsage:
    """What a cache holds: complete entries and their bytes on disk, the bound, and the entries
    being written (or left by processes that died writing them, until they are removed)."""

    directory: Path
    entries: int
    bytes: int
    max_bytes: int | None
    building: int

    def __str__(self) -> str:
        bound = "unbounded" if self.max_bytes is None else f"max {pretty_bytes(self.max_bytes)}"
        building = f", {self.building} being written" if self.building else ""
        return (
            f"{self.directory}: {self.entries} entries, {pretty_bytes(self.bytes)} ({bound})"
            f"{building}"
        )


class VolumeCache:
    """A directory of preprocessed subjects, for ``Queue(cache_dir=...)``.

    Args:
        directory: where the entries live (created if missing); a local disk is fastest.
        content_hash: key files by a hash of their bytes instead of their size and
            modification time: for datasets copied without their times (the hash costs a read
            of every file each time its subject is loaded).
        max_size: bound on the entries' bytes (an int, or a text such as ``'50 GiB'``); the
            least recently read entries are removed to keep within it, and a subject larger
            than the bound is not stored. None: unbounded.

    Raises:
        CacheError: the directory cannot be created or written.

    Example:
        >>> import tempfile, torch, shmqueue as sq
        >>> cache = sq.VolumeCache(tempfile.mkdtemp(), max_size="1 GiB")
        >>> cache.usage().entries
        0
    """

    def __init__(
        self,
        directory: PathLike,
        *,
        content_hash: bool = False,
        max_size: int | str | None = None,
    ) -> None:
        self.directory = Path(directory).expanduser().resolve()
        self.content_hash = content_hash
        self.max_bytes = None if max_size is None else parse_bytes(max_size, "max_size")
        try:
            for part in ("entries", "building", "locks", "removing"):
                (self.directory / part).mkdir(parents=True, exist_ok=True)
            probe = self.directory / "building" / f".probe.{os.getpid()}.{secrets.token_hex(4)}"
            probe.touch()
            probe.unlink()
        except OSError as error:
            raise CacheError(
                f"Cannot use '{self.directory}' as a cache of preprocessed subjects: {error}."
                " Give a cache_dir on a disk this process can write to."
            ) from error

    def __repr__(self) -> str:
        return (
            f"VolumeCache('{self.directory}', content_hash={self.content_hash},"
            f" max_size={self.max_bytes})"
        )

    # Reading and filling ------------------------------------------------------------------------

    def key(self, subject: Subject, steps: Sequence[SubjectTransform]) -> str:
        """The key of ``subject`` preprocessed by ``steps`` (:func:`~.identity.subject_key`)."""
        return subject_key(subject, steps, self.content_hash)

    def preprocessed(
        self,
        subject: Subject,
        steps: Sequence[SubjectTransform],
        preprocess: Callable[[Subject], Subject],
    ) -> tuple[Subject, bool]:
        """``subject`` loaded and preprocessed by ``steps``: read from its entry, or made by
        ``preprocess(subject)`` and stored; and whether it was read.

        Raises:
            CacheKeyError: ``steps`` or ``subject`` hold a value the key cannot see into.
            CacheError: the result cannot be stored (an image that does not pickle).
        """
        key = self.key(subject, steps)
        found = self.read(key)
        if found is not None:
            return found, True
        with self._building(key):
            found = self.read(key)  # another process may have built it while we waited
            if found is not None:
                return found, True
            result = preprocess(subject)
            self.write(key, result)
            return result, False

    def read(self, key: str) -> Subject | None:
        """The subject stored under ``key``, its images mapped from the entry; None if there is
        none. A damaged entry is removed (with a warning) and read as missing."""
        entry = self._entry(key)
        try:
            skeleton = pickle.loads((entry / _SUBJECT).read_bytes())
            subject = Subject(skeleton)
            for number, (name, image) in enumerate(skeleton.images.items()):
                array = np.load(entry / f"image-{number}.npy", mmap_mode="c", allow_pickle=False)
                subject[name] = image.with_data(torch.from_numpy(array))
        except FileNotFoundError:
            return None  # not built, or removed since (another process bounding the cache)
        except Exception as error:
            logger.warning("Removing damaged cache entry '%s': %s: %s", entry, type(error), error)
            self._remove(entry)
            return None
        try:
            os.utime(entry)  # the least recently read entries go first when bounding
        except FileNotFoundError:
            pass
        return subject

    def write(self, key: str, subject: Subject) -> bool:
        """Store ``subject`` (loaded) under ``key``; whether it was stored: not when it alone
        exceeds ``max_size``, nor when the disk is full (both with a warning: training goes on
        without the entry). The entry appears complete or not at all.

        Raises:
            CacheError: the subject cannot be pickled (e.g. a ``reader=`` that is a lambda).
        """
        building = self.directory / "building" / f"{key}.{_writer_tag()}.{secrets.token_hex(4)}"
        try:
            building.mkdir()
            size = self._write_entry(building, subject)
            if self.max_bytes is not None and size > self.max_bytes:
                logger.warning(
                    "Not caching %s: its %s exceed the cache's max_size of %s in '%s'.",
                    subject.describe(),
                    pretty_bytes(size),
                    pretty_bytes(self.max_bytes),
                    self.directory,
                )
                return False
            entry = self._entry(key)
            entry.parent.mkdir(exist_ok=True)
            try:
                building.rename(entry)
            except OSError as error:
                if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                return True  # another process stored the same entry first: keep that one
        except OSError as error:
            logger.warning("Could not cache %s in '%s': %s", subject.describe(), building, error)
            return False
        finally:
            shutil.rmtree(building, ignore_errors=True)
        if self.max_bytes is not None:
            self.prune(self.max_bytes)
        return True

    def _write_entry(self, building: Path, subject: Subject) -> int:
        """Write ``subject``'s files into ``building``; their bytes."""
        skeleton = Subject(
            {
                name: value.voxelless() if isinstance(value, Image) else value
                for name, value in subject.items()
            }
        )
        try:
            pickled = pickle.dumps(skeleton, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as error:
            raise CacheError(
                f"Cannot cache {subject.describe()}: it does not pickle ({type(error).__name__}:"
                f" {error}). A reader= must be a module-level function and metadata picklable."
            ) from error
        for number, image in enumerate(subject.images.values()):
            np.save(building / f"image-{number}.npy", image.data.numpy(), allow_pickle=False)
        (building / _SUBJECT).write_bytes(pickled)
        size = sum(file.stat().st_size for file in building.iterdir())
        summary = {"subject": subject.describe(), "bytes": size, "created": time.time()}
        (building / _SUMMARY).write_text(json.dumps(summary))
        return size

    @contextmanager
    def _building(self, key: str) -> Iterator[None]:
        """Hold the lock of ``key`` while building it; wait while another process holds it."""
        path = self.directory / "locks" / f"{key}.lock"
        with open(path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released by the kernel if this process dies
            try:
                yield
            finally:
                # Built (or failed): later processes read the entry without the lock, so its file
                # can go; one that waits on it still gets it, and reads the entry.
                path.unlink(missing_ok=True)
                fcntl.flock(lock, fcntl.LOCK_UN)

    # Size -----------------------------------------------------------------------------------

    def warn_if_short_of_disk(self, needed: int) -> None:
        """Warn if entries of ``needed`` bytes in all (a queue's estimate,
        :attr:`~shmqueue.MemoryEstimate.cache_disk`) will not fit the disk's free space
        beside what the cache holds, nor ``max_size``: the subjects left out are then loaded
        and preprocessed every epoch."""
        held = self.usage().bytes
        free = shutil.disk_usage(self.directory).free
        room = held + free if self.max_bytes is None else min(self.max_bytes, held + free)
        if needed > room:
            logger.warning(
                "The cache '%s' needs about %s for these subjects but has room for %s (%s free"
                " on its disk, max_size %s): the subjects that do not fit will be preprocessed"
                " every epoch. Free disk space, raise max_size, or use another cache_dir.",
                self.directory,
                pretty_bytes(needed),
                pretty_bytes(room),
                pretty_bytes(free),
                "none" if self.max_bytes is None else pretty_bytes(self.max_bytes),
            )

    def usage(self) -> CacheUsage:
        """The entries and their bytes on disk (after removing what dead writers left)."""
        self._remove_abandoned()
        entries = list(self._entries())
        return CacheUsage(
            directory=self.directory,
            entries=len(entries),
            bytes=sum(_bytes(entry) for entry in entries),
            max_bytes=self.max_bytes,
            building=sum(1 for _ in (self.directory / "building").iterdir()),
        )

    def prune(self, max_bytes: int | str) -> int:
        """Remove the least recently read entries until the rest hold at most ``max_bytes``;
        the bytes removed."""
        bound = parse_bytes(max_bytes, "max_bytes")
        entries = sorted(self._entries(), key=_last_read)
        sizes = [_bytes(entry) for entry in entries]
        total, removed = sum(sizes), 0
        for entry, size in zip(entries, sizes):
            if total - removed <= bound:
                break
            self._remove(entry)
            removed += size
        return removed

    def clear(self) -> int:
        """Remove every entry (and what dead writers left); the bytes removed."""
        removed = self.prune(0)
        self._remove_abandoned()
        return removed

    def summaries(self) -> list[dict[str, Any]]:
        """Each entry's summary (its key, subject, bytes and creation time), least recently read
        first: what ``shmqueue cache info --entries`` lists."""
        summaries = []
        for entry in sorted(self._entries(), key=_last_read):
            try:
                summary = json.loads((entry / _SUMMARY).read_text())
            except (OSError, ValueError):
                continue  # removed meanwhile, or written by a process still renaming it
            summaries.append({"key": entry.name, **summary})
        return summaries

    def _entry(self, key: str) -> Path:
        return self.directory / "entries" / key[:2] / key

    def _entries(self) -> Iterator[Path]:
        for shard in (self.directory / "entries").iterdir():
            yield from shard.iterdir()

    def _remove(self, entry: Path) -> None:
        """Delete ``entry``: renamed away first, so that no reader sees it half deleted; a
        process that maps its files keeps reading them until it unmaps them."""
        away = self.directory / "removing" / f"{entry.name}.{_writer_tag()}.{secrets.token_hex(4)}"
        try:
            entry.rename(away)
        except FileNotFoundError:
            return  # another process removed it first
        shutil.rmtree(away, ignore_errors=True)

    def _remove_abandoned(self) -> None:
        """Remove the partial entries and deletions of processes of this host that died."""
        for part in ("building", "removing"):
            for path in (self.directory / part).iterdir():
                if _writer_died(path.name):
                    shutil.rmtree(path, ignore_errors=True)


_HOST = socket.gethostname().replace(".", "_")


def _writer_tag() -> str:
    """``<host>.<pid>``: who writes a ``building/`` or ``removing/`` path."""
    return f"{_HOST}.{os.getpid()}"


def _writer_died(name: str) -> bool:
    """Whether the process that named a ``building/`` or ``removing/`` path ``name`` (see
    :func:`_writer_tag`) ran on this host and is gone."""
    parts = name.split(".")
    if len(parts) < 4 or parts[-3] != _HOST or not parts[-2].isdigit():
        return False
    try:
        os.kill(int(parts[-2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _bytes(entry: Path) -> int:
    try:
        return sum(file.stat().st_size for file in entry.iterdir())
    except FileNotFoundError:
        return 0


def _last_read(entry: Path) -> float:
    try:
        return entry.stat().st_mtime
    except FileNotFoundError:
        return 0.0
