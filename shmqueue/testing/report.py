"""Reports of the checkers: what was verified, what failed, and where.

Every checker returns a report instead of raising, so a test can look at all failures at once
and a user can print a readable summary. :meth:`Report.raise_for_failures` turns a failed report
into an ``AssertionError`` carrying the same text, for use in a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

MAX_RENDERED_FAILURES = 20


class Contract(str, Enum):
    """What a failure breaks: the queue contracts of DESIGN.md and the component checks."""

    COMPLETENESS = "epoch completeness (contract 1)"
    FIDELITY = "fidelity (contract 2)"
    BOUNDED_BUFFER = "bounded buffer (contract 3)"
    SLOT_DISCIPLINE = "slot discipline (contract 4)"
    REPRODUCIBILITY = "reproducibility (contract 6)"
    DETERMINISM = "determinism given the generator"
    GLOBAL_RANDOMNESS = "no global random state"
    SHAPE = "keeps shapes"
    DTYPE = "keeps dtypes"
    LABEL_VALUES = "keeps label values"
    INPUT_UNCHANGED = "leaves its input unchanged"
    PICKLABLE = "picklable (for spawn workers)"
    RETURN_TYPE = "returns a Subject"
    LOCATIONS_INSIDE = "locations inside the volume"
    PATCH_COUNT = "patch count respected"
    PATCH_COPIES = "patches are copies, not views"
    PATCH_CONTENT = "patches are the regions at their locations"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Failure:
    """One broken contract: which, in which epoch, for which subject, and what differed.

    Attributes:
        contract: the contract or property that does not hold.
        message: what differed, with the values found and expected.
        epoch: the epoch the failure happened in, when it is about an epoch.
        subject: the subject concerned (as ``Subject.describe`` gives it), when known.
    """

    contract: Contract
    message: str
    epoch: int | None = None
    subject: str | None = None

    def __str__(self) -> str:
        where = [f"epoch {self.epoch}"] if self.epoch is not None else []
        if self.subject is not None:
            where.append(self.subject)
        prefix = f"[{self.contract}] " + (", ".join(where) + ": " if where else "")
        return prefix + self.message


@dataclass
class Report:
    """What a checker verified and every failure it found.

    Attributes:
        target: what was checked, e.g. the queue's repr.
        checked: the properties verified, in the order they were checked.
        failures: every failure found (empty when all properties hold).
        notes: what could not be checked, and why (not failures).
    """

    target: str
    checked: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no failure was found."""
        return not self.failures

    def contracts(self) -> set[Contract]:
        """The contracts with at least one failure."""
        return {failure.contract for failure in self.failures}

    def fail(
        self,
        contract: Contract,
        message: str,
        epoch: int | None = None,
        subject: str | None = None,
    ) -> None:
        """Record a failure."""
        self.failures.append(Failure(contract, message, epoch, subject))

    def raise_for_failures(self) -> None:
        """Raise ``AssertionError`` with the rendered report if any check failed.

        Raises:
            AssertionError: the report has failures; its message is ``str(report)``.
        """
        if self.failures:
            raise AssertionError(str(self))

    def _summary(self) -> str:
        return ""

    def __str__(self) -> str:
        status = "OK" if self.ok else f"FAILED ({len(self.failures)} failures)"
        lines = [f"{type(self).__name__} for {self.target}: {status}"]
        summary = self._summary()
        if summary:
            lines.append(f"  {summary}")
        if self.checked:
            lines.append("  checked: " + "; ".join(self.checked))
        lines.extend(f"  note: {note}" for note in self.notes)
        for failure in self.failures[:MAX_RENDERED_FAILURES]:
            lines.append(f"  - {failure}")
        hidden = len(self.failures) - MAX_RENDERED_FAILURES
        if hidden > 0:
            lines.append(f"  ... and {hidden} more failures")
        return "\n".join(lines)


@dataclass
class QueueReport(Report):
    """The result of :func:`~shmqueue.testing.check_queue`.

    Attributes:
        epochs: the epochs run (each once, plus the reproducibility reruns).
        patches: patches yielded in the checked epochs (reruns not counted).
    """

    epochs: list[int] = field(default_factory=list)
    patches: int = 0

    def _summary(self) -> str:
        return f"epochs {self.epochs}, {self.patches} patches"


@dataclass
class TransformReport(Report):
    """The result of :func:`~shmqueue.testing.check_transform`.

    Attributes:
        seeds: the generator seeds the transform was run with.
    """

    seeds: list[int] = field(default_factory=list)

    def _summary(self) -> str:
        return f"seeds {self.seeds}"


@dataclass
class SamplerReport(Report):
    """The result of :func:`~shmqueue.testing.check_sampler`.

    Attributes:
        seeds: the generator seeds the sampler was run with.
        num_patches: the patch count asked for on each run.
    """

    seeds: list[int] = field(default_factory=list)
    num_patches: int = 0

    def _summary(self) -> str:
        return f"seeds {self.seeds}, {self.num_patches} patches per run"
