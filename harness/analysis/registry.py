"""The statistics of a comparison, each one registered function that the table, the CSV and the
plots pick up: `@statistic(name, title=..., cell=..., csv=...)` on a function of a row (or, with
`across=True`, of all the rows). harness/analysis/statistics.py registers the built-in ones, in
the order of their columns; a statistic registered later (a plugin's, a test's) comes after them.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from harness.analysis.collect import RunRecord


@dataclass
class Study:
    """What a comparison was asked for, and what its statistics read besides a row."""
    baseline: str
    test: str = "both"  # "seeds" (paired t-test), "bootstrap" (over dev examples) or "both"
    resamples: int = 1000
    detect: float | None = None  # --detect: a difference to plan seeds for
    cost: str = "trainable"  # the frontier's cost (harness.core.names.COSTS)
    records: list[RunRecord] = field(default_factory=list)
    # A run's dev predictions per task (harness.analysis.collect.load_predictions).
    predictions: Callable[[RunRecord], dict[str, dict]] | None = None
    chance: bool = False  # whether to read each task's chance level from the runs' dev labels


def number(value: float) -> str:
    """A Markdown cell of a number: 3 decimals, "-" for none (NaN)."""
    return "-" if math.isnan(value) else f"{value:.3f}"


@dataclass(frozen=True)
class Statistic:
    name: str  # its key in Row.stats; its CSV column unless `csv` says otherwise
    fn: Callable  # (row, study) -> value; with `across`, (rows, study) -> a value per row
    title: str | None = None  # its Markdown column's title ({baseline}, {detect} filled in); None: not in the table
    cell: Callable[[Any], str] = number  # a value as its Markdown cell
    csv: Callable[[Any], dict[str, Any]] | None = None  # a value as its CSV columns; default {name: value}
    in_csv: bool = True
    needs: tuple[str, ...] = ()  # the statistics computed before it (their values are in row.stats)
    across: bool = False  # computed from all the rows at once (a correction for multiple comparisons, a frontier)
    where: str = "result"  # its Markdown column among the results, or beside the costs ("cost")
    shown: Callable[[Study], bool] = lambda study: True  # whether its Markdown column shows in this comparison
    mark: Callable[[Any], str] | None = None  # a value's mark on the overall plot's bar ("*"), "" for none

    def heading(self, study: Study) -> str:
        return self.title.format(baseline=study.baseline, detect=study.detect)

    def columns(self, value: Any) -> dict[str, Any]:
        if not self.in_csv:
            return {}
        return self.csv(value) if self.csv else {self.name: value}


STATISTICS: dict[str, Statistic] = {}


def statistic(name: str, **how) -> Callable:
    """Registers the decorated function as the statistic `name` (see Statistic for `how`)."""
    if "where" in how and how["where"] not in ("result", "cost"):
        raise ValueError(f"statistic {name}: where must be 'result' or 'cost', got {how['where']!r}")

    def register(fn: Callable) -> Callable:
        STATISTICS[name] = Statistic(name, fn, **how)
        return fn

    return register


def registered() -> list[Statistic]:
    """The statistics, in the order of their columns."""
    return list(STATISTICS.values())


def compute(rows: list, study: Study) -> None:
    """Every registered statistic of every row, into row.stats; each after those it needs."""
    done: set[str] = set()

    def run(stat: Statistic, path: tuple[str, ...]) -> None:
        if stat.name in done:
            return
        for need in stat.needs:
            if need in path or need not in STATISTICS:
                raise ValueError(f"statistic {stat.name} needs {need!r}: "
                                 + ("a cycle" if need in path else "not registered"))
            run(STATISTICS[need], path + (need,))
        values = stat.fn(rows, study) if stat.across else [stat.fn(row, study) for row in rows]
        for row, value in zip(rows, values, strict=True):
            row.stats[stat.name] = value
        done.add(stat.name)

    for stat in registered():
        run(stat, (stat.name,))
