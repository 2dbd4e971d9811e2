"""The comparison's tables and the verdicts on the issue's targets, from the runs' medians.

Every ratio is ``shmqueue ÷ library`` on medians of the same setting, ``shmqueue + cache ÷
library`` in the cache scenarios (g) and (h): above 1 for throughput means shmqueue is faster;
below 1 for memory and latency means shmqueue needs less.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..report import MIB, Summary, ratio
from .runs import BGV2, MONAI, SHMQUEUE, SHMQUEUE_CACHED, TORCHIO_1, TORCHIO_2, Library, Run
from .scenarios import AUGMENTATION, CACHE, STEADY, Scenario, Setting

Table = tuple[list[str], list[list[str]]]
Metric = Callable[[Run], float]

SPEEDUP_NO_OP = 1.7
SPEEDUP_STEP = 2.0
MEMORY_SHARE = 0.5
ESTIMATE_ERROR = 0.25
AUGMENTATION_SPEEDUPS = ((TORCHIO_1, 10.0), (MONAI, 5.0), (BGV2, 1.5))
"""(f): shmqueue's patches/s at least this many times each library's."""
CACHE_SPEEDUPS = ((SHMQUEUE, 3.0), (TORCHIO_1, 6.0))
"""(g): shmqueue + cache's later epochs' patches/s at least this many times each library's."""


def _patches_per_second(run: Run) -> float:
    return run.patches_per_second


def _cpu_ms_per_patch(run: Run) -> float:
    return 1000 * run.result.cpu_seconds / run.patches


def _peak_pss(run: Run) -> float:
    return run.peak_pss


def _first_epoch(run: Run) -> float:
    return run.epoch_patches_per_second[0]


def _later_epochs(run: Run) -> float:
    return run.later_epochs_patches_per_second


@dataclass(frozen=True)
class Verdict:
    """One of the issue's targets, for one setting or competitor."""

    target: str
    value: str
    met: bool

    def line(self) -> str:
        return f"{'met' if self.met else 'MISSED'}: {self.target}: {self.value}"


class Comparison:
    """The runs of one comparison, grouped by setting and library."""

    def __init__(
        self, runs: Sequence[Run], settings: Sequence[Setting], libraries: Sequence[Library]
    ) -> None:
        self.runs = runs
        self.settings = settings
        self.libraries = libraries

    def runs_of(self, setting: Setting, library: Library) -> list[Run]:
        return [run for run in self.runs if run.setting == setting and run.library == library]

    def summary(self, setting: Setting, library: Library, metric: Metric) -> Summary:
        return Summary.of([metric(run) for run in self.runs_of(setting, library)])

    def median(self, setting: Setting, library: Library, metric: Metric) -> float:
        return self.summary(setting, library, metric).median

    def versus(
        self, setting: Setting, library: Library, metric: Metric, baseline: Library = SHMQUEUE
    ) -> str:
        """``baseline ÷ library`` of the metric's medians (``"-"`` for the baseline's own row)."""
        if library == baseline:
            return "-"
        return ratio(self.median(setting, baseline, metric), self.median(setting, library, metric))

    def settings_of(self, scenario: Scenario) -> list[Setting]:
        return [setting for setting in self.settings if setting.scenario == scenario]

    def libraries_of(self, setting: Setting) -> list[Library]:
        """The libraries that ran ``setting``, in the comparison's order."""
        return [library for library in self.libraries if library.runs(setting)]

    def libraries_for(self, scenario: Scenario) -> list[Library]:
        """The libraries that ran any of the scenario's settings."""
        settings = self.settings_of(scenario)
        return [lib for lib in self.libraries if any(lib.runs(setting) for setting in settings)]

    # Tables ------------------------------------------------------------------------------------

    def scenario_table(self, scenario: Scenario) -> Table:
        """Throughput, latency, waits, patch counts and memory of every library per setting."""
        settings = self.settings_of(scenario)
        by_epoch = any(setting.epochs > 1 for setting in settings)
        headers = [
            "setting",
            "library",
            "patches/s",
            "shmqueue ÷",
            *(["p/s by epoch"] if by_epoch else []),
            "ms/patch",
            "CPU ms/patch",
            "first batch s",
            "wait after first s",
            "patches/epoch",
            "batches/epoch",
            "peak PSS MiB",
            "shmqueue ÷",
        ]
        rows = []
        for setting in settings:
            for library in self.libraries_of(setting):
                runs = self.runs_of(setting, library)
                first = runs[0]
                epochs = _epoch_medians(runs, setting.epochs)
                rows.append(
                    [
                        setting.label,
                        library.label,
                        self.summary(setting, library, _patches_per_second).format(1),
                        self.versus(setting, library, _patches_per_second),
                        *(["/".join(f"{rate:.0f}" for rate in epochs)] if by_epoch else []),
                        self.summary(
                            setting, library, lambda run: 1000 * run.seconds / run.patches
                        ).format(2),
                        self.summary(setting, library, _cpu_ms_per_patch).format(2),
                        self.summary(setting, library, lambda run: run.first_batch_seconds).format(
                            2
                        ),
                        self.summary(
                            setting, library, lambda run: run.wait_after_first_seconds
                        ).format(1),
                        _counts(first.result.epoch_patches, setting.expected_patches),
                        "/".join(str(count) for count in _batches_per_epoch(first)),
                        self.summary(setting, library, lambda run: run.peak_pss / MIB).format(0),
                        self.versus(setting, library, _peak_pss),
                    ]
                )
        return headers, rows

    def memory_table(self) -> Table:
        """Scenario (e): the steady state's peak memory against each library's own estimate."""
        headers = [
            "setting",
            "library",
            "peak PSS MiB",
            "peak USS (+ring) MiB",
            "own estimate MiB",
            "estimate vs PSS",
            "shmqueue ÷ (PSS)",
        ]
        rows = []
        for setting in self.settings_of(STEADY):
            for library in self.libraries_of(setting):
                estimate = self.runs_of(setting, library)[0].result.estimate_bytes
                pss = self.median(setting, library, _peak_pss)
                rows.append(
                    [
                        setting.label,
                        library.label,
                        self.summary(setting, library, lambda run: run.peak_pss / MIB).format(0),
                        self.summary(setting, library, lambda run: run.peak_uss / MIB).format(0),
                        "-" if estimate is None else f"{estimate / MIB:.0f}",
                        "-" if estimate is None else f"{estimate / pss - 1:+.0%}",
                        self.versus(setting, library, _peak_pss),
                    ]
                )
        return headers, rows

    def headline_table(self) -> Table:
        """The steady state in one row per library: throughput per step, then the CPU time per
        patch and the peak memory with the no-op step."""
        steady = self.settings_of(STEADY)
        headers = ["library"]
        for setting in steady:
            headers += [f"patches/s, {setting.label}", "shmqueue ÷"]
        headers += ["CPU ms/patch", "shmqueue ÷", "peak PSS MiB", "shmqueue ÷"]
        rows = []
        no_op = steady[0]
        for library in self.libraries_of(no_op):
            row = [library.label]
            for setting in steady:
                row += [
                    f"{self.median(setting, library, _patches_per_second):.1f}",
                    self.versus(setting, library, _patches_per_second),
                ]
            row += [
                f"{self.median(no_op, library, _cpu_ms_per_patch):.1f}",
                self.versus(no_op, library, _cpu_ms_per_patch),
                f"{self.median(no_op, library, _peak_pss) / MIB:.0f}",
                self.versus(no_op, library, _peak_pss),
            ]
            rows.append(row)
        return headers, rows

    def augmentation_table(self) -> Table:
        """(f): throughput, CPU time per patch and peak memory of every library per setting,
        each with its ``shmqueue ÷`` ratio."""
        headers = [
            "setting",
            "library",
            "patches/s",
            "shmqueue ÷",
            "CPU ms/patch",
            "shmqueue ÷",
            "first batch s",
            "patches/epoch",
            "peak PSS MiB",
            "shmqueue ÷",
        ]
        rows = []
        for setting in self.settings_of(AUGMENTATION):
            for library in self.libraries_of(setting):
                first = self.runs_of(setting, library)[0]
                rows.append(
                    [
                        setting.label,
                        library.label,
                        self.summary(setting, library, _patches_per_second).format(2),
                        self.versus(setting, library, _patches_per_second),
                        self.summary(setting, library, _cpu_ms_per_patch).format(0),
                        self.versus(setting, library, _cpu_ms_per_patch),
                        self.summary(setting, library, lambda run: run.first_batch_seconds).format(
                            1
                        ),
                        _counts(first.result.epoch_patches, setting.expected_patches),
                        self.summary(setting, library, lambda run: run.peak_pss / MIB).format(0),
                        self.versus(setting, library, _peak_pss),
                    ]
                )
        return headers, rows

    def caching_table(self, scenario: Scenario) -> Table:
        """(g) and (h): the first epoch's and the later epochs' throughput, the CPU time per
        patch and the peak memory of every library per setting, each with its ``shmqueue +
        cache ÷`` ratio."""
        ours = f"{SHMQUEUE_CACHED.label} ÷"
        headers = [
            "setting",
            "library",
            "p/s 1st epoch",
            ours,
            "p/s later epochs",
            ours,
            "p/s by epoch",
            "CPU ms/patch",
            ours,
            "patches/epoch",
            "peak PSS MiB",
            ours,
        ]
        rows = []
        for setting in self.settings_of(scenario):
            for library in self.libraries_of(setting):
                runs = self.runs_of(setting, library)
                epochs = _epoch_medians(runs, setting.epochs)
                rows.append(
                    [
                        setting.label,
                        library.label,
                        *self._with_ratio(setting, library, _first_epoch, 1),
                        *self._with_ratio(setting, library, _later_epochs, 1),
                        "/".join(f"{rate:.0f}" for rate in epochs),
                        *self._with_ratio(setting, library, _cpu_ms_per_patch, 2),
                        _counts(runs[0].result.epoch_patches, setting.expected_patches),
                        self.summary(setting, library, lambda run: run.peak_pss / MIB).format(0),
                        self.versus(setting, library, _peak_pss, SHMQUEUE_CACHED),
                    ]
                )
        return headers, rows

    def _with_ratio(
        self, setting: Setting, library: Library, metric: Metric, digits: int
    ) -> list[str]:
        """The metric's summary and its ``shmqueue + cache ÷`` ratio: two cells."""
        return [
            self.summary(setting, library, metric).format(digits),
            self.versus(setting, library, metric, SHMQUEUE_CACHED),
        ]

    # Targets -----------------------------------------------------------------------------------

    def verdicts(self) -> list[Verdict]:
        """The issue's targets for the scenarios that ran, each met or missed, with numbers."""
        return self._steady_verdicts() + self._augmentation_verdicts() + self._cache_verdicts()

    def _cache_verdicts(self) -> list[Verdict]:
        """(g): shmqueue + cache's later epochs' patches/s against shmqueue without it and
        TorchIO 1.2.1, and its peak PSS against shmqueue's without it, per setting."""
        verdicts = []
        for setting in self.settings_of(CACHE):
            ran = self.libraries_of(setting)
            if SHMQUEUE_CACHED not in ran:
                continue
            verdicts += self._speedups(
                setting,
                SHMQUEUE_CACHED,
                _later_epochs,
                CACHE_SPEEDUPS,
                f"{SHMQUEUE_CACHED.label}: later epochs' ",
                "CPU per patch over all epochs",
            )
            if SHMQUEUE in ran:
                verdicts.append(
                    _not_above(
                        f"{SHMQUEUE_CACHED.label}: peak PSS <= {SHMQUEUE.label}'s (no cache),"
                        f" {setting.label}",
                        self.median(setting, SHMQUEUE_CACHED, _peak_pss),
                        self.median(setting, SHMQUEUE, _peak_pss),
                    )
                )
        return verdicts

    def _augmentation_verdicts(self) -> list[Verdict]:
        """(f): patches/s against TorchIO 1.2.1, MONAI and batchgeneratorsv2, and peak PSS
        against TorchIO 1.2.1's, per setting; a miss says by how much, and the CPU time per
        patch says how much of it is work rather than waiting."""
        verdicts = []
        for setting in self.settings_of(AUGMENTATION):
            ran = self.libraries_of(setting)
            if SHMQUEUE not in ran:
                continue
            verdicts += self._speedups(
                setting, SHMQUEUE, _patches_per_second, AUGMENTATION_SPEEDUPS, "", "CPU per patch"
            )
            if TORCHIO_1 in ran:
                verdicts.append(
                    _not_above(
                        f"peak PSS <= {TORCHIO_1.label}'s, {setting.label}",
                        self.median(setting, SHMQUEUE, _peak_pss),
                        self.median(setting, TORCHIO_1, _peak_pss),
                    )
                )
        return verdicts

    def _speedups(
        self,
        setting: Setting,
        ours: Library,
        metric: Metric,
        goals: Sequence[tuple[Library, float]],
        target: str,
        cpu: str,
    ) -> list[Verdict]:
        """``ours``'s patches/s (``metric``) against each library of ``goals`` that ran
        ``setting``, the goal a multiple of its; ``target`` starts each target's text and
        ``cpu`` names the CPU-per-patch ratio shown with it."""
        ran = self.libraries_of(setting)
        return [
            _speedup(
                f"{target}patches/s >= {goal:g}x {library.label}'s, {setting.label}",
                self.median(setting, ours, metric),
                self.median(setting, library, metric),
                goal,
                f"{cpu}: {self.versus(setting, library, _cpu_ms_per_patch, ours)} of"
                f" {library.label}'s",
            )
            for library, goal in goals
            if library in ran
        ]

    def _steady_verdicts(self) -> list[Verdict]:
        """The steady state's targets: throughput against TorchIO, memory, the estimate."""
        verdicts = []
        for setting in self.settings_of(STEADY):
            goal = SPEEDUP_STEP if setting.step_seconds else SPEEDUP_NO_OP
            for library in (TORCHIO_1, TORCHIO_2):
                if library not in self.libraries:
                    continue
                theirs = self.median(setting, library, _patches_per_second)
                speedup = self.median(setting, SHMQUEUE, _patches_per_second) / theirs
                cpu = self.versus(setting, library, _cpu_ms_per_patch)
                value = f"{speedup:.2f}x (CPU per patch: {cpu} of {library.label}'s)"
                bound = setting.batch_size / setting.step_seconds if setting.step_seconds else 0
                if bound and goal * theirs > bound:
                    value += (
                        f"; unreachable: {goal:g}x {theirs:.1f} = {goal * theirs:.1f} patches/s,"
                        f" above the {bound:.1f} that a"
                        f" {setting.step_seconds:g} s step per batch of {setting.batch_size}"
                        " allows any library"
                    )
                verdicts.append(
                    Verdict(
                        f"throughput >= {goal:g}x {library.label}'s, {setting.label}",
                        value,
                        speedup >= goal,
                    )
                )
            if TORCHIO_1 in self.libraries:
                share = self.median(setting, SHMQUEUE, _peak_pss) / self.median(
                    setting, TORCHIO_1, _peak_pss
                )
                verdicts.append(
                    Verdict(
                        f"peak PSS <= {MEMORY_SHARE:g}x {TORCHIO_1.label}'s, {setting.label}",
                        f"{share:.2f}x",
                        share <= MEMORY_SHARE,
                    )
                )
            estimate = self.runs_of(setting, SHMQUEUE)[0].result.estimate_bytes
            if estimate is not None:
                error = estimate / self.median(setting, SHMQUEUE, _peak_pss) - 1
                verdicts.append(
                    Verdict(
                        f"estimate within {ESTIMATE_ERROR:.0%} of measured peak PSS,"
                        f" {setting.label}",
                        f"{error:+.0%}",
                        abs(error) <= ESTIMATE_ERROR,
                    )
                )
        return verdicts


def _speedup(target: str, ours: float, theirs: float, goal: float, detail: str) -> Verdict:
    """Met if ``ours`` patches/s is at least ``goal`` times ``theirs``; the value gives both
    rates and ``detail``, and a miss says by how much and what the goal needs."""
    speedup = ours / theirs
    value = f"{speedup:.2f}x ({ours:.2f} vs {theirs:.2f} patches/s; {detail})"
    if speedup < goal:
        value += f"; missed by {goal / speedup:.2f}x: {goal:g}x needs {goal * theirs:.2f} patches/s"
    return Verdict(target, value, speedup >= goal)


def _not_above(target: str, ours: float, theirs: float) -> Verdict:
    """Met if the peak memory ``ours`` (bytes) is at most ``theirs``; a miss says by how much."""
    value = f"{ours / theirs:.2f}x ({ours / MIB:.0f} vs {theirs / MIB:.0f} MiB)"
    if ours > theirs:
        value += f"; over by {(ours - theirs) / MIB:.0f} MiB ({ours / theirs - 1:+.0%})"
    return Verdict(target, value, ours <= theirs)


def _counts(per_epoch: Sequence[int], expected: int) -> str:
    """``"480/480"``, with the expected count named when an epoch differs from it."""
    counts = "/".join(str(count) for count in per_epoch)
    if all(count == expected for count in per_epoch):
        return counts
    return f"{counts} (expected {expected})"


def _batches_per_epoch(run: Run) -> list[int]:
    """Batches of each epoch: the calls between two epoch-ending calls."""
    counts, current = [], 0
    for call in run.result.calls:
        if call[2]:
            current += 1
        else:
            counts.append(current)
            current = 0
    return counts


def _epoch_medians(runs: Sequence[Run], epochs: int) -> list[float]:
    """Each epoch's patches/s, the median over ``runs``."""
    return [
        Summary.of([run.epoch_patches_per_second[epoch] for run in runs]).median
        for epoch in range(epochs)
    ]
