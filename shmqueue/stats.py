"""QueueStats: what the queue has done, for progress bars, logs and benchmarks."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class QueueStats:
    """Counters of a queue since it was built.

    Attributes:
        max_length: slots in the buffer.
        ready: patches buffered and ready to yield.
        in_workers: slots reserved by subjects being processed.
        patches_produced: patches written (by workers, or in-process).
        patches_consumed: patches yielded.
        consumer_wait_seconds: time the training loop spent waiting for patches (in-process:
            the time spent loading, augmenting and sampling).
        first_patch_seconds: wait before the first patch of the latest epoch.
        subject_seconds: per worker (or ``[0]`` for in-process), seconds per processed subject.
        worker_peak_rss: per worker, the peak resident memory reported, in bytes.
        worker_descriptors: per worker, its open descriptors by kind (``"pipe"``, ``"memfd"``,
            ``"pidfd"``, ``"file"``, ...) once it had started.
    """

    max_length: int
    ready: int = 0
    in_workers: int = 0
    patches_produced: int = 0
    patches_consumed: int = 0
    consumer_wait_seconds: float = 0.0
    first_patch_seconds: float = 0.0
    subject_seconds: dict[int, list[float]] = field(default_factory=dict)
    worker_peak_rss: dict[int, int] = field(default_factory=dict)
    worker_descriptors: dict[int, dict[str, int]] = field(default_factory=dict)

    @property
    def fill(self) -> float:
        """Fraction of the buffer holding ready patches."""
        return self.ready / self.max_length
