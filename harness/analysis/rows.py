"""The table's rows: one `Row` per label (its runs' means, costs and time), paired with the
baseline's runs by seed, with every registered statistic computed into `Row.stats`."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import harness.analysis.statistics  # noqa: F401  (registers the built-in statistics)
from harness.analysis.collect import RunRecord, load_predictions, task_order
from harness.analysis.registry import Study, compute
from harness.sweeps.labels import Label, parse_label
from harness.tasks import get_task
from harness.tasks.registry import extra_metric


@dataclass(frozen=True)
class Cell:
    """A score over a row's seeds: mean and standard deviation (NaN: no value, or one seed for the std)."""
    mean: float = math.nan
    std: float = math.nan

    @classmethod
    def of(cls, values: list[float | None]) -> Cell:
        values = [v for v in values if v is not None and not math.isnan(v)]
        if not values:
            return cls()
        return cls(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


@dataclass
class Pairing:
    """A row's runs beside the baseline's at the same grid point (`base_label`), seed by seed."""
    group: list[RunRecord] = field(default_factory=list)
    base_label: str = ""
    by_task: list[tuple[RunRecord, RunRecord]] = field(default_factory=list)  # (run, baseline run) of a common seed
    # Those of by_task whose overall scores compare: both present and of the same formula (the same task set's).
    paired: list[tuple[RunRecord, RunRecord]] = field(default_factory=list)
    compared: bool = False  # not the baseline's own row, and with paired seeds

    @property
    def deltas(self) -> list[float]:
        """The per-seed differences of the overall score from the baseline."""
        return [r.overall - b.overall for r, b in self.paired]


@dataclass
class Row:
    variant: str  # the label: the variant and any grid values
    n: int = 0
    seeds: str = ""
    overall_formula: str = ""
    tasks: dict[str, Cell] = field(default_factory=dict)  # every task of the comparison, in the table's order
    overall: Cell = Cell()
    task_specific_params: int = 0
    ratio_to_encoder: float = math.nan
    trainable_params: int = 0
    stored_per_task: int = 0
    trainable_fraction: float = math.nan
    stored_fraction: float = math.nan
    train_minutes_mean: float = math.nan
    stats: dict[str, Any] = field(default_factory=dict)  # each registered statistic's value, by its name
    runs: Pairing = field(default_factory=Pairing, repr=False)
    # Each extra dev file's primary metric, "<task>/<metric>" (MNLI's "mnli/accuracy_mismatched"): shown
    # beside its task's column; not part of the row's statistics (those read the tasks' primary metrics).
    extra: dict[str, Cell] = field(default_factory=dict)

    @property
    def variant_name(self) -> str:
        return parse_label(self.variant).variant

    def description(self) -> dict[str, Any]:
        """The row's own CSV columns (those before the statistics')."""
        cells = {f"{t}_{what}": getattr(c, what) for t, c in self.tasks.items() for what in ("mean", "std")}
        cells.update({f"{key.replace('/', '_')}_{what}": getattr(c, what) for key, c in self.extra.items()
                      for what in ("mean", "std")})
        return {"variant": self.variant, "n": self.n, "seeds": self.seeds, "overall_formula": self.overall_formula,
                **cells, "overall_mean": self.overall.mean, "overall_std": self.overall.std,
                "task_specific_params": self.task_specific_params, "ratio_to_encoder": self.ratio_to_encoder,
                "trainable_params": self.trainable_params, "stored_per_task": self.stored_per_task,
                "trainable_fraction": self.trainable_fraction, "stored_fraction": self.stored_fraction,
                "train_minutes_mean": self.train_minutes_mean}


def _row(label: str, group: list[RunRecord], tasks: list[str], pairing: Pairing) -> Row:
    encoder = float(np.median([r.encoder_params for r in group])) or math.nan
    trainable = int(np.median([r.trainable for r in group]))
    stored = int(np.median([r.stored_per_task for r in group]))
    return Row(label, len(group), ",".join(str(r.seed) for r in group), " / ".join(sorted({r.formula for r in group})),
               {t: Cell.of([r.scores.get(t) for r in group]) for t in tasks}, Cell.of([r.overall for r in group]),
               int(np.median([r.task_specific for r in group])), float(np.median([r.ratio for r in group])),
               trainable, stored, trainable / encoder, stored / encoder,
               float(np.mean([r.train_seconds for r in group])) / 60, runs=pairing,
               extra={f"{t}/{m}": Cell.of([r.metrics.get(t, {}).get(m) for r in group]) for t, m in extra_columns(tasks)})


def extra_columns(tasks: list[str]) -> list[tuple[str, str]]:
    """(task, metric): the primary metric of each extra dev file of these tasks (TaskSpec.extra_dev)."""
    return [(t, extra_metric(get_task(t).primary_metric, name)) for t in tasks for name in get_task(t).extra_dev]


def summarise(records: list[RunRecord], baseline: str, test: str, resamples: int, client=None,
              folder: Path | None = None, order: list[str] | None = None, detect: float | None = None,
              cost: str = "trainable") -> list[Row]:
    """One row per label: means, stds, n, parameters, time, and every registered statistic
    (harness/analysis/statistics.py: the difference from the baseline and its tests, what the seeds
    could detect, chance levels with a client, the frontier by `cost`).

    Rows follow `order` (variant names; a sweep's own order) where given; otherwise, and for
    variants it does not name, the baseline first, then by task-specific parameters, then by label."""
    tasks = task_order(records)
    by_label: dict[str, list[RunRecord]] = {}
    for record in records:
        by_label.setdefault(record.label, []).append(record)
    # A grid sweep's label is "<variant> lr=..."; its baseline is the baseline at the same values of
    # the settings the baseline's own labels have: a setting only some variants vary (lora's
    # freeze_encoder) is not part of the baseline's point.
    base_settings = {setting for r in records if r.variant == baseline for setting in parse_label(r.label).settings}
    rows = []
    for label, group in by_label.items():
        base_label = str(Label(baseline, parse_label(label).keeping(base_settings).tokens))
        base = {r.seed: r for r in by_label.get(base_label, [])}
        by_task = [(r, base[r.seed]) for r in group if r.seed in base]
        paired = [(r, b) for r, b in by_task if r.overall is not None and b.overall is not None
                  and r.formula == b.formula]
        rows.append(_row(label, group, tasks, Pairing(group, base_label, by_task, paired,
                                                     compared=label != base_label and bool(paired))))
    compute(rows, Study(baseline, test, resamples, detect, cost, records,
                        predictions=lambda record: load_predictions(client, record, folder),
                        chance=client is not None and folder is not None))
    position = {variant: i for i, variant in enumerate(order or [])}
    rows.sort(key=lambda r: (position.get(r.variant_name, len(position)), r.variant_name != baseline,
                             r.task_specific_params, r.variant))
    return rows
