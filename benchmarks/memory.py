"""Peak memory of a process tree: a thread that follows the USS of a process and its children.

USS (unique set size: pages mapped by one process only) is what a process would give back if it
exited; summed over the training process and its workers it is the tree's own memory, except:

* the ring (shared memory) is in nobody's USS once two processes have touched a page, so the
  caller adds ``ring_bytes``; a ring page written by a worker and not yet read by the consumer is
  still "unique" to the worker, so USS + ring can count part of the ring twice while it fills;
* pages a forked worker still shares copy-on-write with its parent are in nobody's USS.

PSS (each page divided among the processes mapping it) summed over the tree counts every page of
the tree once, the touched part of the ring included, so it is recorded alongside as a check; it
is followed between exact readings the same way as USS (below), with its own offset.

Cost. USS and PSS come from ``/proc/<pid>/smaps_rollup``, whose read walks the process's page
tables: ~16 ms for a 1 GiB process, so reading it for every process every 20 ms takes a third of a
core, which on a small machine slows the very run being measured. So the thread reads it only
every ``anchor_interval`` (0.5 s) and in between follows each process's anonymous resident memory
(``rss - shared`` from ``/proc/<pid>/statm``, a few microseconds) every ``interval`` (20 ms): a
process's USS is estimated as its anonymous RSS plus the offset ``USS - anonymous RSS`` of its last
smaps reading. New allocations (tensors, volumes) are anonymous and private, so the estimate
follows the short peaks that a 0.5 s reading would miss; the offset drifts only as copy-on-write
pages are split or ring pages change hands, and is re-measured every 0.5 s, and at once for the
whole tree when a process appears (a fork makes its parent's pages shared, which moves the
parent's offsets). The thread measures its own CPU time, so the report can show what it took from
the run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from types import TracebackType

import psutil

POLL_SECONDS = 0.02
ANCHOR_SECONDS = 0.5
TREE_SECONDS = 0.1  # how often to look for new child processes (a scan of /proc)


@dataclass(frozen=True)
class TreeMemory:
    """Peaks over a sampling period, in bytes, of sums over the process and its descendants.

    ``peak_uss`` and ``peak_pss_followed`` are followed every 20 ms (see the module's
    docstring); ``peak_pss`` and ``peak_uss_exact`` come from the exact readings only, every 0.5 s.
    """

    peak_uss: int
    peak_uss_exact: int
    peak_pss: int
    baseline_uss: int
    max_processes: int
    samples: int
    exact_samples: int
    sampler_cpu_seconds: float
    peak_pss_followed: int


class TreeMemorySampler:
    """Follow, from a thread, the summed USS of ``pid``'s process tree and record its peak.

    Use as a context manager; :attr:`result` is available after exit.

    Example:
        >>> with TreeMemorySampler() as sampler:
        ...     _ = bytearray(10_000_000)
        >>> sampler.result.peak_uss > 0
        True
    """

    def __init__(
        self,
        pid: int | None = None,
        interval: float = POLL_SECONDS,
        anchor_interval: float = ANCHOR_SECONDS,
    ) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.anchor_interval = anchor_interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="tree-memory-sampler", daemon=True)
        self._tree: list[psutil.Process] = [self.root]
        self._offsets: dict[int, int] = {}  # pid -> USS - anonymous RSS at its last exact reading
        self._pss_offsets: dict[int, int] = {}  # pid -> PSS - anonymous RSS, likewise
        self._peak_uss = self._peak_uss_exact = self._peak_pss = self._peak_pss_followed = 0
        self._max_processes = self._samples = self._exact_samples = 0
        self._cpu_seconds = 0.0
        self._baseline_uss = 0
        self._result: TreeMemory | None = None

    @property
    def result(self) -> TreeMemory:
        if self._result is None:
            raise RuntimeError("the sampler has not finished: read result after the with block")
        return self._result

    def __enter__(self) -> TreeMemorySampler:
        self._baseline_uss = self.root.memory_full_info().uss
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
        self._result = TreeMemory(
            peak_uss=self._peak_uss,
            peak_uss_exact=self._peak_uss_exact,
            peak_pss=self._peak_pss,
            baseline_uss=self._baseline_uss,
            max_processes=self._max_processes,
            samples=self._samples,
            exact_samples=self._exact_samples,
            sampler_cpu_seconds=self._cpu_seconds,
            peak_pss_followed=self._peak_pss_followed,
        )

    def _poll(self) -> None:
        started = time.thread_time()
        next_anchor = next_tree = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_tree:
                self._refresh_tree()
                next_tree = now + TREE_SECONDS
            if now >= next_anchor:
                self._sample_exact()
                next_anchor = now + self.anchor_interval
            else:
                self._sample_estimate()
            if self._stop.wait(self.interval):
                self._sample_exact()  # after stop: the end of the period is covered exactly
                break
        self._cpu_seconds = time.thread_time() - started

    def _refresh_tree(self) -> None:
        try:
            self._tree = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            self._tree = []

    def _sample_exact(self) -> None:
        """Read USS and PSS of every process (slow); re-measure each process's offset."""
        uss = pss = count = 0
        for process in self._tree:
            try:
                info = process.memory_full_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue  # a child that exited since the tree was listed
            self._learn_offsets(process.pid, info.uss, info.pss, info.rss - info.shared)
            uss += info.uss
            pss += info.pss
            count += 1
        self._peak_uss_exact = max(self._peak_uss_exact, uss)
        self._peak_pss = max(self._peak_pss, pss)
        self._exact_samples += 1
        self._record(uss, pss, count)

    def _learn_offsets(self, pid: int, uss: int, pss: int, anonymous: int) -> None:
        """Remember how far USS and PSS were from anonymous RSS at an exact reading."""
        self._offsets[pid] = uss - anonymous
        self._pss_offsets[pid] = pss - anonymous

    def _sample_estimate(self) -> None:
        """Estimate the tree's USS and PSS from each process's anonymous RSS and offsets (fast).

        A new process means a fork: its parent's pages are now shared, so every offset is
        stale; an exact reading of the whole tree then replaces the estimate.
        """
        if any(process.pid not in self._offsets for process in self._tree):
            self._sample_exact()
            return
        uss = pss = count = 0
        for process in self._tree:
            try:
                info = process.memory_info()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            anonymous = info.rss - info.shared
            uss += anonymous + self._offsets[process.pid]
            pss += anonymous + self._pss_offsets[process.pid]
            count += 1
        self._record(uss, pss, count)

    def _record(self, uss: int, pss: int, count: int) -> None:
        self._peak_uss = max(self._peak_uss, uss)
        self._peak_pss_followed = max(self._peak_pss_followed, pss)
        self._max_processes = max(self._max_processes, count)
        self._samples += 1
