"""Summaries of repeated measurements and the tables that show them (plain text and markdown)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class Summary:
    """The median of repeated measurements and their range."""

    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            raise ValueError("nothing to summarise")
        return cls(statistics.median(values), min(values), max(values))

    def format(self, digits: int) -> str:
        """``"12.3"`` for one value, ``"12.3 (11.9-12.5)"`` for several."""
        median = f"{self.median:.{digits}f}"
        if self.low == self.high:
            return median
        return f"{median} ({self.low:.{digits}f}-{self.high:.{digits}f})"


def ratio(value: float, baseline: float) -> str:
    """``value / baseline`` as ``"2.41x"``; ``"-"`` when the baseline is zero."""
    return f"{value / baseline:.2f}x" if baseline else "-"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table: columns padded to their widest cell, numbers right-aligned."""
    widths = [max(len(row[column]) for row in [headers, *rows]) for column in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.ljust(width) if column == 0 else cell.rjust(width)
            for column, (cell, width) in enumerate(zip(cells, widths))
        ).rstrip()

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table, numbers right-aligned."""
    align = ["---", *("---:" for _ in headers[1:])]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [headers, align, *rows])
