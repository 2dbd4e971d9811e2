"""The comparison's figures (matplotlib, PNG): throughput bars, consumer waits over time, memory.

Bars show medians; error bars span the repeats' minimum to maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from ..report import MIB, Summary
from .runs import Run
from .scenarios import (
    AUGMENTATION,
    CACHE,
    FIRST_BATCH,
    PREPROCESSING,
    STEADY,
    TINY,
    WORKERS,
    Scenario,
)
from .tables import Comparison, Metric

COLOURS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e")
DPI = 110


def _short(value: float) -> str:
    """A bar's label: whole numbers from 10 up, else two significant digits."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _bars(
    axes: Axes,
    groups: Sequence[str],
    series: dict[str, list[Summary]],
    ylabel: str,
    labelled: bool = False,
) -> None:
    """Grouped bars: one group per label in ``groups``, one bar per series, min-max whiskers;
    ``labelled`` writes each bar's median above it (none above an empty bar) with
    :func:`_short`."""
    width = 0.8 / len(series)
    for number, (name, summaries) in enumerate(series.items()):
        offsets = [group + (number - (len(series) - 1) / 2) * width for group in range(len(groups))]
        medians = [summary.median for summary in summaries]
        errors = [
            [summary.median - summary.low for summary in summaries],
            [summary.high - summary.median for summary in summaries],
        ]
        bars = axes.bar(
            offsets,
            medians,
            width,
            yerr=errors,
            capsize=2,
            label=name,
            color=COLOURS[number % len(COLOURS)],
        )
        if labelled:
            labels = [_short(median) if median else "" for median in medians]
            axes.bar_label(bars, labels=labels, fontsize=7, padding=2)
    axes.set_xticks(range(len(groups)), groups)
    axes.set_ylabel(ylabel)
    axes.grid(axis="y", alpha=0.3)


def _legend_above(figure: Figure, axes: Axes, top: float) -> None:
    """The legend of ``axes``'s series in one row, centred at height ``top`` of the figure:
    above the panels, where it hides no bar."""
    handles, labels = axes.get_legend_handles_labels()
    figure.legend(
        handles,
        labels,
        loc="upper center",
        ncols=len(labels),
        fontsize=8,
        bbox_to_anchor=(0.5, top),
    )


def _scenario_bars(
    axes: Axes,
    comparison: Comparison,
    scenario: Scenario,
    metric: Metric,
    ylabel: str,
    labelled: bool = False,
) -> None:
    """One group of bars per setting of ``scenario``, one bar per library that ran it; a panel
    saying so if the scenario did not run."""
    axes.set_title(scenario.title, fontsize=10)
    settings = comparison.settings_of(scenario)
    if not settings:
        axes.text(0.5, 0.5, "not run", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return
    _bars(
        axes,
        [setting.label for setting in settings],
        {
            library.label: [comparison.summary(setting, library, metric) for setting in settings]
            for library in comparison.libraries_for(scenario)
        },
        ylabel,
        labelled,
    )


def throughput_figure(comparison: Comparison, path: Path) -> None:
    """Patches per second in (a), (c) and (d), and the first batch's latency in (b)."""
    figure, panels = plt.subplots(2, 2, figsize=(12, 8))
    for axes, scenario in zip(panels.flat, (STEADY, WORKERS, TINY)):
        _scenario_bars(axes, comparison, scenario, lambda run: run.patches_per_second, "patches/s")
    _scenario_bars(
        panels[1, 1], comparison, FIRST_BATCH, lambda run: run.first_batch_seconds, "first batch s"
    )
    next(axes for axes in panels.flat if axes.axison).legend(fontsize=8)
    figure.suptitle("Throughput (higher is better) and first-batch latency (lower is better)")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _median_run(runs: Sequence[Run]) -> Run:
    """The run whose throughput is the median (the lower middle one for an even count)."""
    ordered = sorted(runs, key=lambda run: run.patches_per_second)
    return ordered[(len(ordered) - 1) // 2]


def waits_figure(comparison: Comparison, path: Path) -> None:
    """For each steady-state setting and library, every wait inside ``next()`` over time."""
    settings = comparison.settings_of(STEADY)
    libraries = comparison.libraries_for(STEADY)
    figure, panels = plt.subplots(
        len(libraries),
        len(settings),
        figsize=(6 * len(settings), 1.9 * len(libraries)),
        sharex="col",
        squeeze=False,
    )
    for column, setting in enumerate(settings):
        for row, library in enumerate(libraries):
            axes = panels[row, column]
            run = _median_run(comparison.runs_of(setting, library))
            arrivals = [call[0] for call in run.result.calls]
            waits = [call[1] for call in run.result.calls]
            colour = COLOURS[row % len(COLOURS)]
            axes.vlines(arrivals, 0, waits, color=colour, linewidth=1)
            axes.plot(arrivals, waits, ".", color=colour, markersize=3)
            axes.set_title(
                f"{library.label}, {setting.label}: waited {run.wait_after_first_seconds:.1f} s"
                f" of {run.seconds:.1f} s after the first batch",
                fontsize=9,
            )
            axes.set_ylabel("wait s")
            axes.grid(alpha=0.3)
        panels[-1, column].set_xlabel("seconds since the first batch request")
    figure.suptitle(f"{STEADY.title}: time the training loop waited for each batch (median run)")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def memory_figure(comparison: Comparison, path: Path) -> None:
    """Peak PSS and USS (+ring) of each library's process tree beside its own estimate."""
    settings = comparison.settings_of(STEADY)
    figure, panels = plt.subplots(1, len(settings), figsize=(6 * len(settings), 4.5), sharey=True)
    for axes, setting in zip(panels, settings):
        libraries = comparison.libraries_of(setting)
        estimates = [
            comparison.runs_of(setting, library)[0].result.estimate_bytes for library in libraries
        ]
        _bars(
            axes,
            [library.label for library in libraries],
            {
                "peak PSS": [
                    comparison.summary(setting, library, lambda run: run.peak_pss / MIB)
                    for library in libraries
                ],
                "peak USS (+ring)": [
                    comparison.summary(setting, library, lambda run: run.peak_uss / MIB)
                    for library in libraries
                ],
                "own estimate": [Summary.of([(estimate or 0) / MIB]) for estimate in estimates],
            },
            "MiB",
            labelled=True,
        )
        axes.set_title(f"{STEADY.title}, {setting.label}", fontsize=10)
        axes.tick_params(axis="x", labelsize=8)
    panels[0].legend(fontsize=8)
    figure.suptitle("Peak memory of the process tree vs each library's estimate (MONAI has none)")
    figure.tight_layout()
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def augmentation_figure(comparison: Comparison, path: Path) -> None:
    """(f): patches/s, CPU ms per patch and peak PSS of every library, per setting."""
    figure, panels = plt.subplots(3, 1, figsize=(12, 11))
    metrics: list[tuple[Metric, str, str, bool]] = [
        (lambda run: run.patches_per_second, "patches/s", "higher", True),
        (lambda run: 1000 * run.result.cpu_seconds / run.patches, "CPU ms/patch", "lower", True),
        (lambda run: run.peak_pss / MIB, "peak PSS MiB", "lower", False),
    ]
    for axes, (metric, ylabel, better, logarithmic) in zip(panels, metrics):
        _scenario_bars(axes, comparison, AUGMENTATION, metric, ylabel, labelled=True)
        axes.set_title(f"{ylabel} ({better} is better)", fontsize=10)
        if logarithmic:
            axes.set_yscale("log")  # the libraries differ by orders of magnitude
            low, high = axes.get_ylim()
            axes.set_ylim(low, high * 1.6)  # room for the labels above the tallest bars
    _legend_above(figure, panels[0], 0.965)
    figure.suptitle(f"{AUGMENTATION.title}: medians, whiskers min-max")
    figure.tight_layout(rect=(0, 0, 1, 0.95))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def caching_figure(scenario: Scenario, comparison: Comparison, path: Path) -> None:
    """(g) or (h), its first setting: patches/s in the first and in the later epochs, CPU ms per
    patch and peak PSS of every library."""
    setting = comparison.settings_of(scenario)[0]
    libraries = comparison.libraries_of(setting)
    figure, panels = plt.subplots(1, 3, figsize=(15, 4.8), width_ratios=(2, 1, 1))
    _bars(
        panels[0],
        ["first epoch", "later epochs"],
        {
            library.label: [
                comparison.summary(setting, library, lambda run: run.epoch_patches_per_second[0]),
                comparison.summary(
                    setting, library, lambda run: run.later_epochs_patches_per_second
                ),
            ]
            for library in libraries
        },
        "patches/s",
        labelled=True,
    )
    panels[0].set_title("patches/s (higher is better)", fontsize=10)
    metrics: list[tuple[Metric, str]] = [
        (lambda run: 1000 * run.result.cpu_seconds / run.patches, "CPU ms/patch"),
        (lambda run: run.peak_pss / MIB, "peak PSS MiB"),
    ]
    for axes, (metric, ylabel) in zip(panels[1:], metrics):
        _bars(
            axes,
            ["all epochs"],
            {
                library.label: [comparison.summary(setting, library, metric)]
                for library in libraries
            },
            ylabel,
            labelled=True,
        )
        axes.set_title(f"{ylabel} (lower is better)", fontsize=10)
    _legend_above(figure, panels[0], 0.93)
    figure.suptitle(f"{scenario.title}, {setting.label}: medians, whiskers min-max")
    figure.tight_layout(rect=(0, 0, 1, 0.9))
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


Draw = Callable[[Comparison, Path], None]
FIGURES: tuple[tuple[str, Draw, tuple[Scenario, ...]], ...] = (
    ("comparison-throughput.png", throughput_figure, (STEADY, FIRST_BATCH, WORKERS, TINY)),
    ("comparison-waits.png", waits_figure, (STEADY,)),
    ("comparison-memory.png", memory_figure, (STEADY,)),
    ("comparison-augmentation.png", augmentation_figure, (AUGMENTATION,)),
    ("comparison-cache.png", partial(caching_figure, CACHE), (CACHE,)),
    ("comparison-preprocessing.png", partial(caching_figure, PREPROCESSING), (PREPROCESSING,)),
)
"""Each figure's file, how it is drawn, and the scenarios it shows (drawn if any of them ran)."""


def write_figures(comparison: Comparison, directory: Path) -> list[Path]:
    """Write into ``directory`` every figure of the scenarios that ran; their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, draw, scenarios in FIGURES:
        if any(comparison.settings_of(scenario) for scenario in scenarios):
            draw(comparison, directory / name)
            paths.append(directory / name)
    return paths
