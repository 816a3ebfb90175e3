"""compare.md and compare.csv: the rows' own columns, then a column (or columns) per registered
statistic, in the order they were registered (harness/analysis/registry.py)."""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from harness.analysis.registry import Statistic, Study, registered
from harness.analysis.rows import Row
from harness.analysis.select import Choice
from harness.analysis.statistics import ALPHA
from harness.tasks import get_task

METRIC_TITLES = {"accuracy": "acc", "pearson": "r", "spearman": "Spearman", "macro_f1": "macro-F1", "mcc": "MCC", "f1": "F1"}


def task_title(task: str) -> str:
    spec = get_task(task)
    return f"{spec.title or task} {METRIC_TITLES.get(spec.primary_metric, spec.primary_metric)}"


def _tasks(rows: list[Row]) -> list[str]:
    return list(rows[0].tasks) if rows else []


def _score_columns(rows: list[Row]) -> list[tuple[str, Any]]:
    """(title, the row's cell) per score column: each task's primary metric, followed by its extra dev
    files' (MNLI: "MNLI acc", then "MNLI acc (mismatched)")."""
    columns = []
    for task in _tasks(rows):
        columns.append((task_title(task), lambda r, task=task: r.tasks[task]))
        spec = get_task(task)
        for name in spec.extra_dev:
            key = f"{task}/{spec.primary_metric}_{name}"
            columns.append((f"{task_title(task)} ({name})", lambda r, key=key: r.extra[key]))
    return columns


def _count(n: int, fraction: float) -> str:
    return f"{n:,}" + ("" if math.isnan(fraction) else f" ({fraction:.3g}x)")


def _mean_std(cell) -> str:
    if math.isnan(cell.mean):
        return "-"
    return f"{cell.mean:.3f}" + ("" if math.isnan(cell.std) else f" ± {cell.std:.3f}")


def _columns(study: Study, where: str) -> list[Statistic]:
    return [s for s in registered() if s.title is not None and s.where == where and s.shown(study)]


def markdown_table(rows: list[Row], baseline: str, test: str, detect: float | None = None) -> str:
    """The table: per row its tasks and overall score (mean ± std over seeds), the registered
    statistics' columns, and its costs (with the statistics placed beside them)."""
    study = Study(baseline, test, detect=detect)
    scores = _score_columns(rows)
    results, by_cost = _columns(study, "result"), _columns(study, "cost")
    header = (["variant", "n", *(title for title, _ in scores), "overall", *(s.heading(study) for s in results),
               "trainable params (x encoder)", "stored per added task (x encoder)", *(s.heading(study) for s in by_cost),
               "task-specific params", "ratio to encoder", "train min"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    base_formula = next((r.overall_formula for r in rows if r.variant_name == baseline), None)
    other = {r.overall_formula for r in rows if base_formula and r.overall_formula != base_formula}
    for r in rows:
        mark = " †" if r.overall_formula in other else ""
        cells = [r.variant, str(r.n), *(_mean_std(cell(r)) for _, cell in scores), _mean_std(r.overall) + mark,
                 *(s.cell(r.stats[s.name]) for s in results), _count(r.trainable_params, r.trainable_fraction),
                 _count(r.stored_per_task, r.stored_fraction), *(s.cell(r.stats[s.name]) for s in by_cost),
                 f"{r.task_specific_params:,}", f"{r.ratio_to_encoder:.4f}", f"{r.train_minutes_mean:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"\n† the overall score of another task set ({f}), not compared with {baseline}'s ({base_formula})."
             for f in sorted(other)]
    return "\n".join(lines) + "\n" + "".join(n + "\n" for n in notes)


def caption(rows: list[Row], baseline: str, test: str) -> str:
    """What the verdict requires, and which correction for multiple comparisons applies to which test."""
    n_t = sum(not math.isnan(r.stats["p_seeds"]) for r in rows)
    n_b = sum(not math.isnan(r.stats["ci"].low) for r in rows)
    level = "95%"  # bootstrap_difference's confidence_level
    holm_text = (f"Holm (step-down) is applied to the t-test p-values across the {n_t} comparison(s) with "
                 f"{baseline}; ")
    plain = (f"the bootstrap intervals are not corrected for multiple comparisons (each is a plain {level} "
             "interval).")
    if test == "seeds":
        rule = f"the Holm-adjusted p < {ALPHA}"
        note = holm_text + "no bootstrap ran."
    elif test == "bootstrap":
        rule = f"the {level} bootstrap interval excludes 0"
        note = (f"No correction for multiple comparisons applies to the verdict (no t-test ran): each of the {n_b} "
                f"intervals is a plain {level} interval.")
    else:
        rule = (f"the Holm-adjusted p < {ALPHA} and the {level} bootstrap interval excludes 0 (with under 2 "
                "common seeds there is no t-test, and the interval alone decides)")
        note = holm_text + plain
    chance = [r.stats["chance"].overall for r in rows if not math.isnan(r.stats["chance"].overall)]
    chance_text = (f" Chance: each task's score for a predictor that ignores its input (majority class; r = 0), "
                   f"overall {chance[0]:.3f}; a row not above it is named under caveats." if chance else "")
    return (f"Verdict `better`/`worse` only where {rule}; otherwise `within noise` (`untested`: one common seed and no bootstrap). {note} Detectable Δ: the "
            "smallest true difference of the overall score that a two-sided paired t-test over these seeds detects "
            f"with 80% power (alpha {ALPHA}), from the spread of the per-seed differences.{chance_text} Frontier: "
            "no other row scores as well or better at the same or lower cost (the plot's x-axis).")


def task_difference_table(rows: list[Row], baseline: str) -> str:
    """Each task's metric difference from the baseline (mean over common seeds) and its 95%
    bootstrap interval; * where the interval excludes 0."""
    tasks = _tasks(rows)
    lines = ["| variant | " + " | ".join(f"Δ {t}" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for r in rows:
        if r.variant_name == baseline:
            continue
        cells = []
        for difference in (r.stats["task_differences"][t] for t in tasks):
            if math.isnan(difference.delta):
                cells.append("-")
                continue
            cell, ci = f"{difference.delta:+.3f}", difference.ci
            if not math.isnan(ci.low):
                cell += f" [{ci.low:+.3f}, {ci.high:+.3f}]" + ("*" if ci.excludes_zero else "")
            cells.append(cell)
        lines.append(f"| {r.variant} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def choices_table(chosen: list[Choice]) -> str:
    return ("| variant | seed | chosen point | val overall | points tried |\n|---|---|---|---|---|\n"
            + "".join(f"| {c.variant} | {c.seed} | {c.point} | {c.validation:.4f} | {c.candidates} |\n"
                      for c in chosen))


def tables(rows: list[Row], baseline: str, test: str, detect: float | None, chosen: list[Choice]) -> str:
    """The main table, then (with a baseline row) each task's difference, then (with --select-best-by)
    the points chosen."""
    text = markdown_table(rows, baseline, test, detect)
    if any(r.variant_name == baseline for r in rows):
        text += (f"\nPer task, the difference from {baseline} (mean over common seeds) and its 95% paired "
                 "bootstrap interval over dev examples; * where the interval excludes 0:\n\n"
                 + task_difference_table(rows, baseline))
    if chosen:
        text += ("\nEach variant at its best grid point per seed by the validation score (val/overall); dev is "
                 "reported for that point:\n\n" + choices_table(chosen))
    return text


def document(title: str, finished: int, rows: list[Row], baseline: str, test: str, tables_text: str) -> str:
    """compare.md."""
    return (f"# {title}\n\nFinished runs: {finished}. Mean ± std over seeds (n). Δ: mean paired difference "
            f"of the overall score from {baseline} over common seeds. {caption(rows, baseline, test)}\n\n"
            + tables_text)


def csv_rows(rows: list[Row]) -> list[dict[str, Any]]:
    """compare.csv's rows: each row's own columns, then each registered statistic's."""
    return [{**r.description(), **{k: v for s in registered() for k, v in s.columns(r.stats[s.name]).items()}}
            for r in rows]


def write_csv(rows: list[Row], path: Path) -> None:
    table = csv_rows(rows)
    with open(path, "w", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
