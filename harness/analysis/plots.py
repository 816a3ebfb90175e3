"""The comparison's plots: the overall score per row (marked by the statistics that mark a bar,
the verdict's *), the score against cost with the frontier, and each task's metric."""
from __future__ import annotations

import math
from pathlib import Path

from harness.analysis.registry import registered
from harness.analysis.rows import Row
from harness.core.names import COSTS
from harness.tasks import get_task


def _floor(ax, lows: list[float]) -> None:
    """Bars start at 0 (a bar's length is its value), or below it for a negative value."""
    if lows:
        ax.set_ylim(min(0.0, min(lows) - 0.05), ax.get_ylim()[1])


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _err(values: list[float]) -> list[float]:
    return [0 if math.isnan(v) else v for v in values]


def _mark(row: Row) -> str:
    """What the registered statistics mark this row's bar with ("*": beyond noise)."""
    return "".join(s.mark(row.stats[s.name]) for s in registered() if s.mark is not None)


def plots(rows: list[Row], folder: Path, baseline: str, title: str, cost: str = "trainable") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    with_overall = [r for r in rows if not math.isnan(r.overall.mean)]
    names = [r.variant for r in with_overall]

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(names)), [r.overall.mean for r in with_overall],
           yerr=_err([r.overall.std for r in with_overall]), capsize=4, color="#4c72b0")
    for i, r in enumerate(with_overall):
        if _mark(r):
            ax.annotate(_mark(r), (i, r.overall.mean), ha="center", va="bottom", fontsize=14)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    _floor(ax, [r.overall.mean - _err([r.overall.std])[0] for r in with_overall])
    ax.set_ylabel("dev overall (mean ± std over seeds)")
    ax.set_title(f"{title}: overall score per variant (* beyond noise vs {baseline})")
    paths.append(_save(fig, folder / "overall.png"))

    column, what = COSTS[cost]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in with_overall:
        x = max(getattr(r, column), 1)
        ax.errorbar(x, r.overall.mean, yerr=_err([r.overall.std]), fmt="o", capsize=3,
                    color="#c44e52" if r.stats.get("frontier") else "#4c72b0")
        ax.annotate(r.variant, (x, r.overall.mean), textcoords="offset points", xytext=(5, 5), fontsize=8)
    best = sorted((r for r in with_overall if r.stats.get("frontier")), key=lambda r: getattr(r, column))
    if best:  # the frontier as a step: the best score at or below each cost
        ax.step([max(getattr(r, column), 1) for r in best], [r.overall.mean for r in best], where="post",
                color="#c44e52", linewidth=1, label="Pareto frontier")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(what + " (log)")
    ax.set_ylabel("dev overall (mean ± std over seeds)")
    ax.set_title(f"{title}: score against {what}")
    paths.append(_save(fig, folder / "score_vs_params.png"))

    tasks = list(rows[0].tasks) if rows else []
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        present = [r for r in rows if not math.isnan(r.tasks[task].mean)]
        ax.bar(range(len(present)), [r.tasks[task].mean for r in present],
               yerr=_err([r.tasks[task].std for r in present]), capsize=3, color="#55a868")
        ax.set_xticks(range(len(present)), [r.variant for r in present], rotation=60, ha="right", fontsize=7)
        _floor(ax, [r.tasks[task].mean - _err([r.tasks[task].std])[0] for r in present])
        ax.set_title(f"{task} ({get_task(task).primary_metric})")
    fig.suptitle(f"{title}: dev metric per task (mean ± std over seeds)")
    paths.append(_save(fig, folder / "per_task.png"))
    return paths
