"""The comparison's statistics, registered in the order of their columns (Markdown table and CSV).

A row is paired with the baseline (`multitask`) by seed. Two tests say whether a difference in the
overall score is more than noise:
- over seeds: scipy's paired t-test on the per-seed overall scores (needs 2+ common seeds);
- over dev examples: a paired bootstrap (scipy.stats.bootstrap) resampling each task's dev
  examples, both models scored on the same resample, the difference averaged over seeds. Its
  95% interval excluding 0 is what marks a difference as real.
The t-test p-values of all the labels compared with the baseline in one call are Holm-adjusted
(Holm-Bonferroni step-down) for multiple comparisons, and the verdict uses the adjusted p-value.
The bootstrap intervals are not corrected: each is a plain 95% interval.

Adding a statistic: one function here (or in a plugin, or a test) decorated with
`@statistic(name, title=..., cell=..., ...)` (harness/analysis/registry.py); its value lands in
`Row.stats[name]` and its column in compare.md and compare.csv.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.analysis.collect import CompareError, RunRecord
from harness.analysis.registry import Study, statistic
from harness.tasks.metrics import METRICS
from harness.core.names import COSTS
from harness.analysis.power import chance_level, detectable_difference, seeds_needed
from harness.tasks import get_task, overall_formula
from harness.tasks.registry import extra_metric

ALPHA = 0.05  # the verdict's threshold for the Holm-adjusted t-test p-value (the bootstrap interval is 95%)


@dataclass(frozen=True)
class Interval:
    """A 95% bootstrap interval of a difference (NaN: no bootstrap ran)."""
    low: float = math.nan
    high: float = math.nan

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


@dataclass(frozen=True)
class TaskDifference:
    """One task's metric difference from the baseline (mean over common seeds) and its interval."""
    delta: float = math.nan
    ci: Interval = Interval()


@dataclass(frozen=True)
class Chance:
    """The tasks (and "overall") whose mean is not above chance, and the overall score at chance."""
    at_chance: str = ""  # comma-separated
    overall: float = math.nan


# --- the methods --------------------------------------------------------------------------------

def _sources(needed: dict[str, list[str]]) -> dict[tuple[str, str], tuple[str, str]]:
    """(task, metric) -> (its prediction set, the metric computed on it): a task's own dev metrics on
    its predictions, an extra dev file's (`accuracy_mismatched`) on that file's (`mnli_mismatched`)."""
    out = {}
    for task, metrics in needed.items():
        for metric in metrics:
            dev_set, base = get_task(task).metric_source(metric)
            out[task, metric] = (extra_metric(task, dev_set) if dev_set else task, base)
    return out


def bootstrap_difference(pairs: list[tuple[dict, dict]], tasks: list[str], resamples: int = 1000,
                         seed: int = 0, score=None) -> tuple[float, float, float]:
    """Paired bootstrap over dev examples of score(variant) - score(baseline), mean over seeds.

    `pairs` holds (variant predictions, baseline predictions) per common seed, by prediction set
    (a task's, and its extra dev files', harness.analysis.collect.prediction_sets). `score` maps
    {task: primary metric} to one number (default: the overall score of `tasks`, from every metric
    its formula names). Each prediction set's examples are resampled (the same resample for every
    model and seed). Returns the observed difference and the 95% percentile interval.
    """
    from scipy import stats

    tasks = list(dict.fromkeys(tasks))
    if score is None:
        formula = overall_formula(tasks)
        needed = {t: [m for m, _ in terms] for t, terms in formula.by_task().items()}
        score_of = formula.score
    else:
        needed = {t: [get_task(t).primary_metric] for t in tasks}

        def score_of(metrics):
            return score({t: values[get_task(t).primary_metric] for t, values in metrics.items()})
    sources = _sources(needed)
    sets = list(dict.fromkeys(source for source, _ in sources.values()))
    for variant, baseline in pairs:
        for name in sets:
            if variant[name]["ids"] != baseline[name]["ids"]:
                raise CompareError(f"dev examples of {name} differ between runs: not the same dev set")

    def overall_difference(*indices):
        at = dict(zip(sets, indices))
        diffs = []
        for variant, baseline in pairs:
            scores = {}
            for which, preds in (("v", variant), ("b", baseline)):
                metrics: dict[str, dict[str, float]] = {}
                for (task, metric), (source, base) in sources.items():
                    i = at[source]
                    metrics.setdefault(task, {})[metric] = METRICS[base].fn(preds[source]["pred"][i],
                                                                            preds[source]["label"][i])
                scores[which] = score_of(metrics)
            diffs.append(scores["v"] - scores["b"])
        return float(np.mean(diffs))

    data = tuple(np.arange(len(pairs[0][0][name]["ids"])) for name in sets)
    observed = overall_difference(*data)
    result = stats.bootstrap(data, overall_difference, n_resamples=resamples, vectorized=False, paired=False,
                             method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed))
    return observed, float(result.confidence_interval.low), float(result.confidence_interval.high)


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni (step-down) adjusted p-values, in the order given.

    With the m p-values sorted p(1) <= ... <= p(m), p(i) becomes max over j <= i of (m - j + 1) p(j),
    capped at 1: rejecting where the adjusted p < alpha keeps the chance of any false "beyond noise"
    among the m comparisons at most alpha. NaN (no test ran) stays NaN and is not counted in m.
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = len(tested)
    running = 0.0
    for rank, i in enumerate(tested[np.argsort(p[tested], kind="stable")]):
        running = max(running, (m - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return [float(a) for a in adjusted]


def verdict(delta: float, p_holm: float, ci: Interval, test: str) -> str:
    """`better`/`worse` only if every test that could run finds the difference beyond noise
    (the t-test needs 2+ common seeds; its Holm-adjusted p-value is what counts); else `within noise`;
    `untested` where no test could run (one common seed and no bootstrap)."""
    beyond = []
    if test in ("bootstrap", "both") and not math.isnan(ci.low):
        beyond.append(ci.excludes_zero)
    if test in ("seeds", "both") and not math.isnan(p_holm):
        beyond.append(p_holm < ALPHA)
    if not beyond:
        return "untested"
    if all(beyond):
        return "better" if delta > 0 else "worse"
    return "within noise"


def chance_levels(records: list[RunRecord], predictions) -> dict[str, float]:
    """Each task's chance level (harness.analysis.power.chance_level) from one run's dev labels, and the
    overall score's at those levels for each overall formula of these runs ("overall <formula>")."""
    levels: dict[str, float] = {}
    at_chance: dict[str, dict[str, float]] = {}  # task -> metric -> its chance level (the formula's metrics)
    for record in records:
        formula = overall_formula(list(record.scores))
        needed = {t: [get_task(t).primary_metric, *(m for m, _ in formula.by_task().get(t, ()))]
                  for t in record.scores}
        missing = {key: source for key, source in _sources(needed).items() if key[1] not in at_chance.get(key[0], {})}
        if missing:
            loaded = predictions(record)
            for (task, metric), (source, base) in missing.items():
                at_chance.setdefault(task, {})[metric] = chance_level(base, loaded[source]["label"])
        for task in record.scores:
            levels[task] = at_chance[task][get_task(task).primary_metric]
        levels[f"overall {record.formula}"] = formula.score(at_chance)
    return levels


def frontier(rows: list, cost: str = "trainable") -> list[bool]:
    """Whether each row is on the Pareto frontier of score against cost: no other row scores at
    least as well for at most the cost, and better in one of the two. Only rows whose overall score
    is comparable (the most common formula) take part."""
    column = COSTS[cost][0]
    formulas = [r.overall_formula for r in rows if not math.isnan(r.overall.mean)]
    common = max(set(formulas), key=formulas.count) if formulas else None
    candidates = [r for r in rows if r.overall_formula == common and not math.isnan(r.overall.mean)]

    def dominated(row) -> bool:
        cost_of, score = getattr(row, column), row.overall.mean
        return any(getattr(o, column) <= cost_of and o.overall.mean >= score
                   and (getattr(o, column) < cost_of or o.overall.mean > score) for o in candidates)

    return [any(row is c for c in candidates) and not dominated(row) for row in rows]


def _needed(n: float) -> str:
    return "-" if math.isnan(n) else (">10000" if n > 10_000 else str(int(n)))


def _signed(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:+.3f}"


# --- the registered statistics, in the order of their columns ----------------------------------

@statistic("delta_overall", title="Δ overall vs {baseline}", cell=_signed)
def delta_overall(row, study: Study) -> float:
    """The mean paired difference of the overall score from the baseline over common seeds."""
    return float(np.mean(row.runs.deltas)) if row.runs.compared else math.nan


@statistic("p_seeds", title="p (paired t, seeds)")
def t_test(row, study: Study) -> float:
    """scipy's paired t-test on the per-seed overall scores (2+ common seeds)."""
    from scipy import stats

    paired = row.runs.paired
    if not row.runs.compared or study.test not in ("seeds", "both") or len(paired) < 2:
        return math.nan
    return float(stats.ttest_rel([r.overall for r, _ in paired], [b.overall for _, b in paired]).pvalue)


@statistic("p_seeds_holm", title="p Holm-adjusted", needs=("p_seeds",), across=True)
def holm_adjusted(rows, study: Study) -> list[float]:
    """The t-test p-values Holm-adjusted across every row compared with the baseline."""
    compared = [r for r in rows if r.runs.compared]
    adjusted = {id(r): a for r, a in zip(compared, holm([r.stats["p_seeds"] for r in compared]))}
    return [adjusted.get(id(r), math.nan) for r in rows]


@statistic("ci", title="95% CI (bootstrap, dev examples)",
           cell=lambda v: "-" if math.isnan(v.low) else f"[{v.low:+.3f}, {v.high:+.3f}]",
           csv=lambda v: {"ci_low": v.low, "ci_high": v.high})
def bootstrap_interval(row, study: Study) -> Interval:
    """The 95% paired bootstrap interval over dev examples of the overall score's difference."""
    paired = row.runs.paired
    if not row.runs.compared or study.test not in ("bootstrap", "both"):
        return Interval()
    pairs = [(study.predictions(r), study.predictions(b)) for r, b in paired]
    tasks = list(dict.fromkeys(t for t, _, _ in overall_formula(list(paired[0][0].scores)).terms))
    _, low, high = bootstrap_difference(pairs, tasks, study.resamples)
    return Interval(low, high)


@statistic("paired_seeds")
def paired_seeds(row, study: Study) -> int:
    return len(row.runs.paired)


@statistic("verdict", title="verdict", cell=lambda v: v or "-", needs=("delta_overall", "p_seeds_holm", "ci"),
           mark=lambda v: "*" if v in ("better", "worse") else "")
def verdict_of(row, study: Study) -> str:
    if not row.runs.compared:
        return ""
    return verdict(row.stats["delta_overall"], row.stats["p_seeds_holm"], row.stats["ci"], study.test)


@statistic("detectable", title="detectable Δ (80% power)")
def detectable(row, study: Study) -> float:
    """The smallest true difference a paired t-test over these seeds detects with 80% power."""
    return detectable_difference(row.runs.deltas) if row.runs.compared else math.nan


@statistic("seeds_for_observed", needs=("delta_overall",))
def seeds_for_observed(row, study: Study) -> float:
    """The seeds the observed difference would need for 80% power."""
    return seeds_needed(row.stats["delta_overall"], row.runs.deltas) if row.runs.compared else math.nan


@statistic("seeds_for_detect", title="seeds to detect {detect:g}", cell=_needed, shown=lambda study: bool(study.detect))
def seeds_for_detect(row, study: Study) -> float:
    """The seeds --detect's difference would need for 80% power."""
    return seeds_needed(study.detect, row.runs.deltas) if row.runs.compared and study.detect else math.nan


@statistic("caveats", title="caveats", cell=lambda v: v or "-", in_csv=False,
           needs=("chance", "paired_seeds", "seeds_for_observed", "p_seeds"))
def caveats(row, study: Study) -> str:
    """What keeps a row's verdict from being a finding: scores not above chance, or a t-test on
    fewer seeds than the observed difference needs for 80% power."""
    said = []
    if row.stats["chance"].at_chance:
        said.append(f"not above chance: {row.stats['chance'].at_chance.replace(',', ', ')}")
    needed, have = row.stats["seeds_for_observed"], row.stats["paired_seeds"]
    if not math.isnan(row.stats["p_seeds"]) and not math.isnan(needed) and needed > have:
        said.append(f"t-test on {have} seeds; the observed Δ needs {'>10000' if needed > 10_000 else int(needed)}")
    return "; ".join(said)


@statistic("task_differences",
           csv=lambda v: {f"{key}_{t}": value for t, d in v.items()
                          for key, value in (("delta", d.delta), ("ci_low", d.ci.low), ("ci_high", d.ci.high))})
def task_differences(row, study: Study) -> dict[str, TaskDifference]:
    """Each task's own difference (also where the task sets, and so the overall formulas, differ)."""
    out = {}
    for task in row.tasks:
        pairs = [(r, b) for r, b in row.runs.by_task if task in r.scores and task in b.scores]
        if row.variant == row.runs.base_label or not pairs:
            out[task] = TaskDifference()
            continue
        ci = Interval()
        if study.test in ("bootstrap", "both"):
            _, low, high = bootstrap_difference([(study.predictions(r), study.predictions(b)) for r, b in pairs],
                                                [task], study.resamples, score=lambda m, task=task: m[task])
            ci = Interval(low, high)
        out[task] = TaskDifference(float(np.mean([r.scores[task] - b.scores[task] for r, b in pairs])), ci)
    return out


@statistic("chance", across=True, csv=lambda v: {"at_chance": v.at_chance, "chance_overall": v.overall})
def chance(rows, study: Study) -> list[Chance]:
    """Each row's tasks (and overall score) whose mean is not above what ignoring the input scores."""
    levels = chance_levels(study.records, study.predictions) if study.chance else {}
    out = []
    for row in rows:
        overall_key = f"overall {row.runs.group[0].formula}"
        cells = [(t, t, cell) for t, cell in row.tasks.items()] + [("overall", overall_key, row.overall)]
        out.append(Chance(",".join(t for t, key, cell in cells if key in levels and not cell.mean > levels[key]),
                          levels.get(overall_key, math.nan)))
    return out


@statistic("frontier", title="frontier", cell=lambda v: "**yes**" if v else "", where="cost", across=True)
def on_frontier(rows, study: Study) -> list[bool]:
    return frontier(rows, study.cost)
