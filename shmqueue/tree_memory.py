"""The memory of a process tree, followed from a thread: the gauge of the demo and the benchmarks.

:class:`TreeMemorySampler` sums, over a process and all its descendants, three measures of their
memory and records the peak of each over the sampling period:

* ``tree``: every page of the tree once, which is what a memory limit charges: the summed
  ``Pss_Anon`` (anonymous pages; one that forked processes still share copy-on-write is split
  among them, so it counts once in the sum) plus the largest ``RssFile`` (the shared libraries,
  which every process maps), once. Shared memory (a ring) is in neither: add its bytes.
* ``pss``: the summed PSS (each page divided among the processes mapping it), which counts every
  page of the tree once, the touched part of shared memory included.
* ``uss``: the summed USS (pages mapped by one process only): what the processes would give back
  if they exited. Pages that forked processes still share copy-on-write and the libraries' pages
  are in nobody's USS, and so is a shared-memory page once two processes have touched it; a ring
  slot written but not yet read is in its worker's.

Sampling. All three come from ``/proc/<pid>/smaps_rollup``, whose read walks the process's page
tables: about 16 ms for a 1 GiB process. Read for every process every few milliseconds it would
take a core from the run it measures, and read every half second it misses the short peak of a
worker converting a volume. So a process's rollup is read only every ``anchor_interval`` (an
*anchor*), and at once for the whole tree when a process joins it (a fork makes its parent's
pages shared, which moves every offset); in between, every ``interval``, each process's
anonymous resident memory (``/proc/<pid>/statm``, microseconds) is read and corrected by its
offsets (each measure minus the anonymous RSS) at its last anchor. New allocations (tensors,
volumes) are private anonymous pages, so the estimate follows the short peaks; the offsets drift
only as copy-on-write pages are split or shared pages change hands, until the next anchor. A
continuous exact-rollup sampler agreed with the followed ``tree`` within 2-17 MiB (the followed
one higher: it sees shorter peaks). The thread measures its own CPU time, so that a report can
say what sampling took from the run.

Linux only: it reads ``/proc``.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from types import TracebackType

import psutil

INTERVAL = 0.02
"""Seconds between two sweeps over the tree's anonymous resident memory."""

ANCHOR_INTERVAL = 0.5
"""Seconds between two readings of every process's ``smaps_rollup``."""

TREE_INTERVAL = 0.1
"""Seconds between two listings of the tree's processes (a scan of ``/proc``)."""

_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class TreeMemoryPeaks:
    """Peaks over a sampling period, in bytes, of sums over a process and its descendants.

    Attributes:
        tree: the summed ``Pss_Anon`` plus the largest ``RssFile``: every page of the tree once,
            shared memory aside (see the module docstring).
        pss: the summed PSS.
        uss: the summed USS.
        root: the root process's own ``Pss_Anon``.
        descendant: the largest descendant's ``Pss_Anon`` (0 if there was none).
        libraries: the largest ``RssFile``: the shared libraries' resident pages.
        processes: the most processes the tree had at once.
        samples: sweeps over the tree.
        anchors: sweeps that read every process's rollup.
        cpu_seconds: the sampling thread's CPU time.
    """

    tree: int
    pss: int
    uss: int
    root: int
    descendant: int
    libraries: int
    processes: int
    samples: int
    anchors: int
    cpu_seconds: float


@dataclass
class _Followed:
    """A process of the tree: its anonymous RSS is read often, its rollup now and then."""

    pid: int
    anchored: float = -1.0  # when its rollup was last read; negative: at the next sweep
    pss_anon: int = 0  # Pss_Anon - anonymous RSS at the last anchor (copy-on-write sharing)
    pss: int = 0  # PSS - anonymous RSS, likewise
    uss: int = 0  # USS - anonymous RSS, likewise
    rss_file: int = 0


def _anonymous_rss(pid: int) -> int:
    """Resident minus file and shmem pages, from ``/proc/<pid>/statm``: microseconds."""
    with open(f"/proc/{pid}/statm") as file:
        _, resident, shared, *_ = file.read().split()
    return (int(resident) - int(shared)) * _PAGE


def _anchor(process: _Followed, now: float) -> None:
    """Read ``process``'s rollup and ``RssFile`` (milliseconds: it walks the page tables).

    A busy process may allocate or free while the rollup is read; the offsets then use the
    midpoint of the anonymous RSS before and after, so they are off by at most half of that
    change, and only until the next anchor.
    """
    before = _anonymous_rss(process.pid)
    rollup: dict[str, int] = {}
    with open(f"/proc/{process.pid}/smaps_rollup") as file:
        for line in file:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                rollup[parts[0]] = int(parts[1]) * 1024
    with open(f"/proc/{process.pid}/status") as file:
        process.rss_file = next(
            int(line.split()[1]) * 1024 for line in file if line.startswith("RssFile")
        )
    anonymous = (before + _anonymous_rss(process.pid)) // 2
    process.pss_anon = rollup["Pss_Anon:"] - anonymous
    process.pss = rollup["Pss:"] - anonymous
    process.uss = rollup["Private_Clean:"] + rollup["Private_Dirty:"] - anonymous
    process.anchored = now


class TreeMemorySampler:
    """Follow, from a thread, the memory of ``pid``'s process tree and record its peaks.

    Use as a context manager; :attr:`peaks` holds the result after the ``with`` block. The last
    sweep, after the block, reads every rollup.

    Args:
        pid: the tree's root; this process when None.
        interval: seconds between two sweeps over the tree's anonymous resident memory.
        anchor_interval: seconds between two readings of every process's rollup.

    Example:
        >>> from shmqueue.tree_memory import TreeMemorySampler
        >>> with TreeMemorySampler() as sampler:
        ...     block = b"x" * 10_000_000
        >>> sampler.peaks.uss > 10_000_000
        True
    """

    def __init__(
        self,
        pid: int | None = None,
        interval: float = INTERVAL,
        anchor_interval: float = ANCHOR_INTERVAL,
    ) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.anchor_interval = anchor_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, name="tree-memory", daemon=True)
        self._followed: dict[int, _Followed] = {}
        self._tree = self._pss = self._uss = self._root = self._descendant = 0
        self._libraries = self._processes = self._samples = self._anchors = 0
        self._cpu_seconds = 0.0
        self._peaks: TreeMemoryPeaks | None = None

    @property
    def peaks(self) -> TreeMemoryPeaks:
        """The peaks of the sampling period; available after the ``with`` block."""
        if self._peaks is None:
            raise RuntimeError("the sampler has not finished: read peaks after the with block")
        return self._peaks

    def __enter__(self) -> TreeMemorySampler:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._peaks = TreeMemoryPeaks(
            tree=self._tree,
            pss=self._pss,
            uss=self._uss,
            root=self._root,
            descendant=self._descendant,
            libraries=self._libraries,
            processes=self._processes,
            samples=self._samples,
            anchors=self._anchors,
            cpu_seconds=self._cpu_seconds,
        )

    def _follow(self) -> None:
        started = time.thread_time()
        listed = -TREE_INTERVAL
        while True:
            now = time.monotonic()
            if now - listed >= TREE_INTERVAL:
                self._list_tree()
                listed = now
            self._sweep(now, anchor=False)
            if self._stop.wait(self.interval):
                break
        self._list_tree()
        self._sweep(time.monotonic(), anchor=True)  # the end of the period, read exactly
        self._cpu_seconds = time.thread_time() - started

    def _list_tree(self) -> None:
        try:
            pids = [self.root.pid, *(child.pid for child in self.root.children(recursive=True))]
        except psutil.NoSuchProcess:
            pids = []  # the root has ended: nothing left to follow
        if any(pid not in self._followed for pid in pids):
            for process in self._followed.values():
                process.anchored = -1.0  # a fork shares pages anew: read every offset again
        self._followed = {pid: self._followed.get(pid, _Followed(pid)) for pid in pids}

    def _sweep(self, now: float, anchor: bool) -> None:
        """Add up the tree's memory once, reading the rollups that are due (or all)."""
        anchored = False
        tree = pss = uss = libraries = count = 0
        for process in list(self._followed.values()):
            try:
                if anchor or now - process.anchored >= self.anchor_interval:
                    _anchor(process, now)
                    anchored = True
                anonymous = _anonymous_rss(process.pid)
            except (OSError, StopIteration, KeyError, ValueError):
                del self._followed[process.pid]  # it exited since the tree was listed
                continue
            own = anonymous + process.pss_anon
            tree += own
            pss += anonymous + process.pss
            uss += anonymous + process.uss
            libraries = max(libraries, process.rss_file)
            count += 1
            if process.pid == self.root.pid:
                self._root = max(self._root, own)
            else:
                self._descendant = max(self._descendant, own)
        self._tree = max(self._tree, tree + libraries)
        self._pss = max(self._pss, pss)
        self._uss = max(self._uss, uss)
        self._libraries = max(self._libraries, libraries)
        self._processes = max(self._processes, count)
        self._samples += 1
        self._anchors += int(anchored)
