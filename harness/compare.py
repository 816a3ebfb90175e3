"""`mtl-bench compare`: the study's table, its statistics and its plots, from MLflow runs.

Runs are grouped by label (the variant, plus any grid values of a sweep) and paired with the
baseline (`multitask`) by seed. Two tests say whether a difference in the overall score is more
than noise:
- over seeds: scipy's paired t-test on the per-seed overall scores (needs 2+ common seeds);
- over dev examples: a paired bootstrap (scipy.stats.bootstrap) resampling each task's dev
  examples, both models scored on the same resample, the difference averaged over seeds. Its
  95% interval excluding 0 is what marks a difference as real.
The t-test p-values of all the labels compared with the baseline in one call are Holm-adjusted
(Holm-Bonferroni step-down) for multiple comparisons, and the verdict uses the adjusted p-value.
The bootstrap intervals are not corrected: each is a plain 95% interval.
"""
from __future__ import annotations

import csv
import dataclasses
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness import names
from harness.handout_tasks import HANDOUT_TASKS
from harness.metrics import METRICS
from harness.names import COSTS, primary_key
from harness.power import detectable_difference, seeds_needed
from harness.tasks import TaskError, get_task, overall_formula

ALPHA = 0.05  # the verdict's threshold for the Holm-adjusted t-test p-value (the bootstrap interval is 95%)
METRIC_TITLES = {"accuracy": "acc", "pearson": "r", "spearman": "Spearman", "macro_f1": "macro-F1", "mcc": "MCC"}


class CompareError(RuntimeError):
    pass


@dataclass
class RunRecord:
    run_id: str
    label: str
    variant: str
    seed: int
    scores: dict[str, float]  # task -> its primary dev metric
    overall: float | None
    task_specific: int  # task-specific encoder parameters, all tasks (heads excluded: every variant has them)
    ratio: float  # total parameters / encoder parameters
    train_seconds: float
    formula: str = ""  # how `overall` was computed from the run's task set (harness.tasks.overall_formula)
    validation: float | None = None  # val/overall: the validation split's score (--validation-fraction), if any
    predictions: dict[str, dict] = field(default_factory=dict)  # task -> {"ids", "pred", "label"}, loaded lazily
    trainable: int = 0  # parameters the optimizer trained (params/trainable)
    encoder_params: int = 0  # the pretrained encoder's (params/encoder)
    # What serving one more task stores: its task-specific parts and head (mean over the tasks), and,
    # when the encoder was fine-tuned, a whole encoder copy of its own (the single-task cost).
    stored_per_task: int = 0




def stored_per_task(metrics: dict[str, float], tasks: list[str], encoder_trained: bool) -> int:
    """Parameters that one more task adds to what is stored and served (see RunRecord)."""
    own = [metrics.get(names.params_key(f"task_specific/{t}"), 0) + metrics.get(names.params_key(f"head/{t}"), 0)
           for t in tasks]
    encoder = metrics.get(names.params_key("encoder"), 0) if encoder_trained else 0
    return int(round(np.mean(own) + encoder)) if own else int(encoder)


def collect(client, sweep: str | None = None, experiment: str | None = None,
            out=print) -> tuple[list[RunRecord], str | None]:
    """Finished runs of a sweep (or an experiment), and the sweep's parent run id if there is one.
    Runs left out (not finished, or repeated for the same variant and seed) are counted in `out`."""
    from harness.tracking import search_all_runs

    parent_id = None
    if sweep:
        if "'" in sweep:
            raise CompareError(f"--sweep {sweep!r}: a sweep id has no quotes")
        experiments, token = [], None
        while True:
            page = client.search_experiments(page_token=token)
            experiments.extend(page)
            token = page.token
            if not token:
                break
        parents = search_all_runs(client, [e.experiment_id for e in experiments],
                                  f"tags.`{names.SWEEP_ID}` = '{sweep}' and "
                                  f"tags.`{names.SWEEP_ROLE}` = '{names.PARENT_ROLE}'")
        if not parents:
            raise CompareError(f"no sweep {sweep!r} in {client.tracking_uri} (no run tagged {names.SWEEP_ID}={sweep} "
                               f"and {names.SWEEP_ROLE}={names.PARENT_ROLE}); is --tracking-uri the store the sweep "
                               "used?")
        if len(parents) > 1:
            raise CompareError(f"sweep {sweep!r} exists in {len(parents)} experiments "
                               f"({sorted(p.info.experiment_id for p in parents)}); compare by --experiment instead")
        parent_id = parents[0].info.run_id
        runs = search_all_runs(client, [parents[0].info.experiment_id], f"tags.`{names.SWEEP_ID}` = '{sweep}'")
    else:  # one experiment, or several joined by commas (a study's rows from more than one)
        ids = []
        for name in filter(None, (x.strip() for x in experiment.split(","))):
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise CompareError(f"no experiment {name!r} in {client.tracking_uri}")
            ids.append(exp.experiment_id)
        if not ids:
            raise CompareError(f"--experiment {experiment!r}: no experiment named")
        runs = search_all_runs(client, ids)
    runs = [r for r in runs if r.data.tags.get(names.SWEEP_ROLE) != names.PARENT_ROLE]
    finished = [r for r in runs if r.info.status == "FINISHED"]
    if len(finished) < len(runs):
        out(f"left out: {len(runs) - len(finished)} run(s) not FINISHED")
    for run in finished:
        missing = [t for t in (names.VARIANT, names.SEED) if t not in run.data.tags]
        if missing:
            raise CompareError(f"run {run.info.run_id} has no {' or '.join(missing)} tag: not a harness run")
    if not finished:
        raise CompareError(f"no finished runs in {'sweep ' + sweep if sweep else 'experiment ' + experiment}")
    latest: dict[tuple[str, int], object] = {}
    for run in sorted(finished, key=lambda r: r.info.start_time):
        tags = run.data.tags
        key = (tags.get(names.SWEEP_LABEL) or tags[names.VARIANT], int(tags[names.SEED]))
        if key in latest:
            out(f"left out: run {latest[key].info.run_id} ({key[0]} seed {key[1]}): a later run of the same "
                "variant and seed replaces it")
        latest[key] = run
    records = []
    for (label, seed), run in sorted(latest.items()):
        m = run.data.metrics
        tasks = [t for t in run.data.params.get(names.TASKS_PARAM, ",".join(HANDOUT_TASKS)).split(",") if t]
        try:
            scores = {t: m[primary_key(t)] for t in tasks if primary_key(t) in m}
        except TaskError as exc:
            raise CompareError(f"run {run.info.run_id} ({label} seed {seed}): {exc} (install the package that "
                               "registers it)") from None
        if names.TASK_SPECIFIC_TOTAL not in m:
            raise CompareError(f"run {run.info.run_id} ({label} seed {seed}) has no {names.TASK_SPECIFIC_TOTAL} metric")
        formula = overall_formula(tasks)
        overall = formula.score(_as_metrics(scores))
        encoder_trained = run.data.params.get("freeze_encoder", "False") != "True"
        records.append(RunRecord(run.info.run_id, label, run.data.tags[names.VARIANT], seed, scores, overall,
                                 int(m[names.TASK_SPECIFIC_TOTAL]),
                                 float(m.get(names.RATIO_TO_ENCODER, math.nan)),
                                 float(m.get(names.TRAIN_SECONDS, math.nan)),
                                 formula.describe(), validation=m.get(names.overall_key(names.VALIDATION)),
                                 trainable=int(m.get(names.params_key("trainable"), 0)),
                                 encoder_params=int(m.get(names.params_key("encoder"), 0)),
                                 stored_per_task=stored_per_task(m, tasks, encoder_trained)))
    return records, parent_id


def grid_point(label: str) -> list[tuple[str, str]]:
    """A label's grid values as (setting, "setting=value") pairs: "lora freeze_encoder=True lr=0.001"
    gives [("freeze_encoder", "freeze_encoder=True"), ("lr", "lr=0.001")]."""
    return [(token.split("=", 1)[0], token) for token in label.split()[1:]]


def select_best(records: list[RunRecord], over: tuple[str, ...] = ()) -> tuple[list[RunRecord], list[dict]]:
    """Each variant's best grid point per seed by the validation score (val/overall), labelled by
    the variant alone so that variants are compared each at its own best point; and which point
    each got. Runs without a validation score are refused: choosing on dev would report dev twice.
    A NaN score (a constant predictor's correlation) counts as the worst.

    `over` names the grid settings chosen among (default: all of them). A grid setting it does not
    name stays in the label, so its values remain rows of their own: with over=("lr",) a sweep of
    lr x freeze_encoder gives "lora freeze_encoder=True" and "lora freeze_encoder=False", each at
    its own best learning rate."""
    missing = [r for r in records if r.validation is None]
    if missing:
        names_ = ", ".join(f"{r.run_id} ({r.label} seed {r.seed})" for r in missing[:5])
        raise CompareError(f"--select-best-by validation: {len(missing)} run(s) have no "
                           f"{names.overall_key(names.VALIDATION)} metric (train with --validation-fraction): {names_}")
    grid_settings = {setting for r in records for setting, _ in grid_point(r.label)}
    unknown = sorted(set(over) - grid_settings)
    if unknown:
        raise CompareError(f"--select-over: {unknown} not among the grid settings of these runs "
                           f"({sorted(grid_settings) or 'none'})")

    def kept(record: RunRecord) -> str:
        tokens = [token for setting, token in grid_point(record.label) if over and setting not in over]
        return " ".join([record.variant, *tokens])

    def score(record: RunRecord) -> float:  # NaN (a constant predictor's r) counts as worst, as in training
        return -math.inf if math.isnan(record.validation) else record.validation

    best: dict[tuple[str, int], RunRecord] = {}
    for record in sorted(records, key=lambda r: r.label):  # ties: the first label in order
        key = (kept(record), record.seed)
        if key not in best or score(record) > score(best[key]):
            best[key] = record
    chosen = [{"variant": v, "seed": s, "validation": r.validation,
               "point": " ".join(token for _, token in grid_point(r.label) if token not in v.split()) or "-",
               "candidates": sum(1 for x in records if (kept(x), x.seed) == (v, s))}
              for (v, s), r in sorted(best.items())]
    selected = [dataclasses.replace(r, label=label) for (label, _), r in best.items()]
    return selected, chosen


def _as_metrics(scores: dict[str, float]) -> dict[str, dict[str, float]]:
    """task -> primary value, as the task -> metric -> value that an OverallFormula scores."""
    return {t: {get_task(t).primary_metric: v} for t, v in scores.items()}


def _primary(task: str, preds, labels) -> float:
    return METRICS[get_task(task).primary_metric].fn(preds, labels)


def task_order(records: list[RunRecord]) -> list[str]:
    """The tasks of these runs: the handout's in the study's order, then others as first seen."""
    seen = [t for r in records for t in r.scores]
    return [t for t in HANDOUT_TASKS if t in seen] + list(dict.fromkeys(t for t in seen if t not in HANDOUT_TASKS))


def task_title(task: str) -> str:
    spec = get_task(task)
    return f"{spec.title or task} {METRIC_TITLES.get(spec.primary_metric, spec.primary_metric)}"


def load_predictions(client, record: RunRecord, folder: Path) -> dict[str, dict]:
    if not record.predictions:
        local = Path(client.download_artifacts(record.run_id, names.PREDICTIONS, str(folder / record.run_id)))
        for task in record.scores:
            path = local / names.predictions_file(task)
            if not path.is_file():
                raise CompareError(f"run {record.run_id} ({record.label} seed {record.seed}): "
                                   f"artifact predictions/dev-{task}.csv is missing")
            with open(path, newline="") as fp:
                rows = list(csv.DictReader(fp))
            record.predictions[task] = {"ids": [r["id"] for r in rows],
                                        "pred": np.array([float(r["prediction"]) for r in rows]),
                                        "label": np.array([float(r["label"]) for r in rows])}
    return record.predictions


def bootstrap_difference(pairs: list[tuple[dict, dict]], tasks: list[str], resamples: int = 1000,
                         seed: int = 0, score=None) -> tuple[float, float, float]:
    """Paired bootstrap over dev examples of score(variant) - score(baseline), mean over seeds.

    `pairs` holds (variant predictions, baseline predictions) per common seed; `score` maps
    {task: primary metric} to one number (default: the overall score of `tasks`). Each task's dev
    examples are resampled (the same resample for every model and seed). Returns the observed
    difference and the 95% percentile interval.
    """
    from scipy import stats

    if score is None:
        formula = overall_formula(tasks)

        def score(values):
            return formula.score(_as_metrics(values))

    for variant, baseline in pairs:
        for task in tasks:
            if variant[task]["ids"] != baseline[task]["ids"]:
                raise CompareError(f"dev examples of task {task} differ between runs: not the same dev set")

    def overall_difference(*indices):
        diffs = []
        for variant, baseline in pairs:
            scores = {}
            for which, preds in (("v", variant), ("b", baseline)):
                scores[which] = score({t: _primary(t, preds[t]["pred"][i], preds[t]["label"][i])
                                       for t, i in zip(tasks, indices)})
            diffs.append(scores["v"] - scores["b"])
        return float(np.mean(diffs))

    data = tuple(np.arange(len(pairs[0][0][t]["ids"])) for t in tasks)
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


def _mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else math.nan


def chance_levels(records: list[RunRecord], client, folder: Path) -> dict[str, float]:
    """Each task's chance level (harness.power.chance_level) from one run's dev labels, and the
    overall score's at those levels for each overall formula of these runs ("overall <formula>")."""
    from harness.power import chance_level

    levels: dict[str, float] = {}
    for record in records:
        missing = [t for t in record.scores if t not in levels]
        if missing:
            predictions = load_predictions(client, record, folder)
            for task in missing:
                levels[task] = chance_level(get_task(task).primary_metric, predictions[task]["label"])
    for record in records:
        if all(t in levels for t in record.scores):
            formula = overall_formula(list(record.scores))
            levels[f"overall {record.formula}"] = formula.score(_as_metrics({t: levels[t] for t in record.scores}))
    return levels


def frontier(rows: list[dict], cost: str = "trainable") -> None:
    """Marks (`frontier`) the rows on the Pareto frontier of score against cost: no other row scores
    at least as well for at most the cost, and better in one of the two. Only rows whose overall
    score is comparable (the most common formula) take part."""
    column = COSTS[cost][0]
    formulas = [r["overall_formula"] for r in rows if not math.isnan(r["overall_mean"])]
    common = max(set(formulas), key=formulas.count) if formulas else None
    candidates = [r for r in rows if r["overall_formula"] == common and not math.isnan(r["overall_mean"])]
    for row in rows:
        row["frontier"] = row in candidates and not any(
            o[column] <= row[column] and o["overall_mean"] >= row["overall_mean"]
            and (o[column] < row[column] or o["overall_mean"] > row["overall_mean"]) for o in candidates)


def summarise(records: list[RunRecord], baseline: str, test: str, resamples: int, client=None,
              folder: Path | None = None, order: list[str] | None = None, detect: float | None = None,
              cost: str = "trainable") -> list[dict]:
    """One row per label: means, stds, n, parameters, time, and the difference from the baseline.
    The t-test p-values are Holm-adjusted across every label compared here (`p_seeds_holm`).
    Costs (trainable parameters, stored per added task, each also as a fraction of the encoder) and
    the frontier by `cost`; the difference the seeds could detect at 80% power (`detectable`), and
    with `detect` the seeds needed for that difference (`seeds_for_detect`); with a client, each
    task's chance level and the rows not above it (`at_chance`).

    Rows follow `order` (variant names; a sweep's own order) where given; otherwise, and for
    variants it does not name, the baseline first, then by task-specific parameters, then by label."""
    from scipy import stats

    tasks = task_order(records)
    by_label: dict[str, list[RunRecord]] = {}
    for record in records:
        by_label.setdefault(record.label, []).append(record)
    rows, compared = [], []
    # A grid sweep's label is "<variant> lr=..."; its baseline is the baseline at the same values of
    # the settings the baseline's own labels have: a setting only some variants vary (lora's
    # freeze_encoder) is not part of the baseline's point.
    base_settings = {setting for r in records if r.variant == baseline for setting, _ in grid_point(r.label)}
    for label, group in by_label.items():
        base_label = " ".join([baseline] + [token for setting, token in grid_point(label) if setting in base_settings])
        base = {r.seed: r for r in by_label.get(base_label, [])}
        row = {"variant": label, "n": len(group), "seeds": ",".join(str(r.seed) for r in group),
               "overall_formula": " / ".join(sorted({r.formula for r in group}))}
        for task in tasks + ["overall"]:
            values = [r.overall if task == "overall" else r.scores.get(task) for r in group]
            row[f"{task}_mean"], row[f"{task}_std"] = _mean_std([v for v in values if v is not None])
        row["task_specific_params"] = int(np.median([r.task_specific for r in group]))
        row["ratio_to_encoder"] = float(np.median([r.ratio for r in group]))
        encoder = float(np.median([r.encoder_params for r in group])) or math.nan
        row["trainable_params"] = int(np.median([r.trainable for r in group]))
        row["stored_per_task"] = int(np.median([r.stored_per_task for r in group]))
        row["trainable_fraction"] = row["trainable_params"] / encoder
        row["stored_fraction"] = row["stored_per_task"] / encoder
        row["train_minutes_mean"] = float(np.mean([r.train_seconds for r in group])) / 60
        # Overall scores are compared only between runs of the same formula (the same task set's).
        paired = [(r, base[r.seed]) for r in group if r.seed in base and r.overall is not None
                  and base[r.seed].overall is not None and r.formula == base[r.seed].formula]
        row.update({"delta_overall": math.nan, "p_seeds": math.nan, "p_seeds_holm": math.nan, "ci_low": math.nan,
                    "ci_high": math.nan, "paired_seeds": len(paired), "verdict": "", "detectable": math.nan,
                    "seeds_for_observed": math.nan, "seeds_for_detect": math.nan})
        if label != base_label and paired:
            deltas = [r.overall - b.overall for r, b in paired]
            row["delta_overall"] = float(np.mean(deltas))
            # What these seeds can tell: the difference they would detect at 80% power, and the seeds
            # that the observed difference (and --detect's) would need.
            row["detectable"] = detectable_difference(deltas)
            row["seeds_for_observed"] = seeds_needed(row["delta_overall"], deltas)
            if detect:
                row["seeds_for_detect"] = seeds_needed(detect, deltas)
            if test in ("seeds", "both") and len(paired) >= 2:
                row["p_seeds"] = float(stats.ttest_rel([r.overall for r, _ in paired],
                                                       [b.overall for _, b in paired]).pvalue)
            if test in ("bootstrap", "both"):
                pairs = [(load_predictions(client, r, folder), load_predictions(client, b, folder)) for r, b in paired]
                overall_tasks = [t for t, _, _ in overall_formula(list(paired[0][0].scores)).terms]
                _, row["ci_low"], row["ci_high"] = bootstrap_difference(pairs, overall_tasks, resamples)
            compared.append(row)
        # Each task's own difference (also where the task sets, and so the overall formulas, differ).
        by_task = [(r, base[r.seed]) for r in group if r.seed in base]
        for task in tasks:
            row[f"delta_{task}"] = row[f"ci_low_{task}"] = row[f"ci_high_{task}"] = math.nan
            task_pairs = [(r, b) for r, b in by_task if task in r.scores and task in b.scores]
            if label == base_label or not task_pairs:
                continue
            row[f"delta_{task}"] = float(np.mean([r.scores[task] - b.scores[task] for r, b in task_pairs]))
            if test in ("bootstrap", "both"):
                pairs = [(load_predictions(client, r, folder), load_predictions(client, b, folder))
                         for r, b in task_pairs]
                _, row[f"ci_low_{task}"], row[f"ci_high_{task}"] = bootstrap_difference(
                    pairs, [task], resamples, score=lambda m, task=task: m[task])
        rows.append(row)
    # Multiple comparisons: Holm over the t-tests of every label compared with the baseline; then the verdicts.
    for row, adjusted in zip(compared, holm([r["p_seeds"] for r in compared])):
        row["p_seeds_holm"] = adjusted
    for row in compared:
        row["verdict"] = _verdict(row, test)
    levels = chance_levels(records, client, folder) if client is not None and folder is not None else {}
    for row in rows:
        group = by_label[row["variant"]]
        # A task (or the overall score) whose mean is not above what ignoring the input scores.
        row["at_chance"] = ",".join(t for t in [*tasks, "overall"]
                                    if (f"overall {group[0].formula}" if t == "overall" else t) in levels
                                    and not row[f"{t}_mean"] > levels[f"overall {group[0].formula}"
                                                                      if t == "overall" else t])
        row["chance_overall"] = levels.get(f"overall {group[0].formula}", math.nan)
    frontier(rows, cost)
    position = {variant: i for i, variant in enumerate(order or [])}
    rows.sort(key=lambda r: (position.get(r["variant"].split()[0], len(position)),
                             r["variant"].split()[0] != baseline, r["task_specific_params"], r["variant"]))
    return rows


def _verdict(row: dict, test: str) -> str:
    """`better`/`worse` only if every test that could run finds the difference beyond noise
    (the t-test needs 2+ common seeds; its Holm-adjusted p-value is what counts); else `within noise`."""
    beyond = []
    if test in ("bootstrap", "both") and not math.isnan(row["ci_low"]):
        beyond.append(row["ci_low"] > 0 or row["ci_high"] < 0)
    if test in ("seeds", "both") and not math.isnan(row["p_seeds_holm"]):
        beyond.append(row["p_seeds_holm"] < ALPHA)
    if beyond and all(beyond):
        return "better" if row["delta_overall"] > 0 else "worse"
    return "within noise"


def _fmt(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")


def _tasks_of(rows: list[dict]) -> list[str]:
    """The tasks of summarise's rows, in their order (columns <task>_mean)."""
    if not rows:
        return []
    names = [k[:-len("_mean")] for k in rows[0] if k.endswith("_mean")]
    return [t for t in names if t != "overall" and f"{t}_std" in rows[0]]


def _count(n: int, fraction: float) -> str:
    return f"{n:,}" + ("" if math.isnan(fraction) else f" ({fraction:.3g}x)")


def caveats(row: dict) -> str:
    """What keeps a row's verdict from being a finding: scores not above chance, or a t-test on
    fewer seeds than the observed difference needs for 80% power."""
    said = []
    if row.get("at_chance"):
        said.append(f"not above chance: {row['at_chance'].replace(',', ', ')}")
    needed, have = row.get("seeds_for_observed", math.nan), row.get("paired_seeds", 0)
    if not math.isnan(row["p_seeds"]) and not math.isnan(needed) and needed > have:
        said.append(f"t-test on {have} seeds; the observed Δ needs {'>10000' if needed > 10_000 else int(needed)}")
    return "; ".join(said)


def markdown_table(rows: list[dict], baseline: str, test: str, detect: float | None = None) -> str:
    tasks = _tasks_of(rows)
    extra = f" | seeds to detect {detect:g}" if detect else ""
    lines = [(f"| variant | n | {' | '.join(task_title(t) for t in tasks)} | overall | Δ overall vs {baseline} | "
              "p (paired t, seeds) | p Holm-adjusted | 95% CI (bootstrap, dev examples) | verdict | "
              f"detectable Δ (80% power){extra} | caveats | trainable params (x encoder) | stored per added task "
              "(x encoder) | frontier | task-specific params | ratio to encoder | train min |"),
             "|---|---|" + "---|" * len(tasks) + "---|---|---|---|---|---|---|---|---|---|---|---|---|"
             + ("---|" if detect else "")]
    base_formula = next((r["overall_formula"] for r in rows if r["variant"].split()[0] == baseline), None)
    other = {r["overall_formula"] for r in rows if base_formula and r["overall_formula"] != base_formula}
    for r in rows:
        delta = "-" if math.isnan(r["delta_overall"]) else f"{r['delta_overall']:+.3f}"
        p = "-" if math.isnan(r["p_seeds"]) else f"{r['p_seeds']:.3f}"
        p_holm = "-" if math.isnan(r["p_seeds_holm"]) else f"{r['p_seeds_holm']:.3f}"
        ci = "-" if math.isnan(r["ci_low"]) else f"[{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
        mark = " †" if r["overall_formula"] in other else ""
        lines.append(f"| {r['variant']} | {r['n']} | " + " | ".join(_fmt(r[f'{t}_mean'], r[f'{t}_std'])
                                                             for t in tasks)
                     + f" | {_fmt(r['overall_mean'], r['overall_std'])}{mark}"
                     + f" | {delta} | {p} | {p_holm} | {ci} | {r['verdict'] or '-'} | "
                       + ("-" if math.isnan(r["detectable"]) else f"{r['detectable']:.3f}")
                       + (f" | {_needed(r['seeds_for_detect'])}" if detect else "")
                       + f" | {caveats(r) or '-'} | {_count(r['trainable_params'], r['trainable_fraction'])} | "
                       f"{_count(r['stored_per_task'], r['stored_fraction'])} | {'**yes**' if r['frontier'] else ''} | "
                       f"{r['task_specific_params']:,} | {r['ratio_to_encoder']:.4f} | {r['train_minutes_mean']:.1f} |")
    notes = [f"\n† the overall score of another task set ({f}), not compared with {baseline}'s ({base_formula})."
             for f in sorted(other)]
    return "\n".join(lines) + "\n" + "".join(n + "\n" for n in notes)


def _needed(n: float) -> str:
    return "-" if math.isnan(n) else (">10000" if n > 10_000 else str(int(n)))


def caption(rows: list[dict], baseline: str, test: str) -> str:
    """What the verdict requires, and which correction for multiple comparisons applies to which test."""
    n_t = sum(not math.isnan(r["p_seeds"]) for r in rows)
    n_b = sum(not math.isnan(r["ci_low"]) for r in rows)
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
    chance = [r for r in rows if not math.isnan(r.get("chance_overall", math.nan))]
    chance_text = (f" Chance: each task's score for a predictor that ignores its input (majority class; r = 0), "
                   f"overall {chance[0]['chance_overall']:.3f}; a row not above it is named under caveats."
                   if chance else "")
    return (f"Verdict `better`/`worse` only where {rule}; otherwise `within noise`. {note} Detectable Δ: the "
            "smallest true difference of the overall score that a two-sided paired t-test over these seeds detects "
            f"with 80% power (alpha {ALPHA}), from the spread of the per-seed differences.{chance_text} Frontier: "
            "no other row scores as well or better at the same or lower cost (the plot's x-axis).")


def task_difference_table(rows: list[dict], baseline: str) -> str:
    """Each task's metric difference from the baseline (mean over common seeds) and its 95%
    bootstrap interval; * where the interval excludes 0."""
    tasks = _tasks_of(rows)
    lines = ["| variant | " + " | ".join(f"Δ {t}" for t in tasks) + " |",
             "|---|" + "---|" * len(tasks)]
    for r in rows:
        if r["variant"].split()[0] == baseline:
            continue
        cells = []
        for t in tasks:
            if math.isnan(r[f"delta_{t}"]):
                cells.append("-")
                continue
            cell = f"{r[f'delta_{t}']:+.3f}"
            if not math.isnan(r[f"ci_low_{t}"]):
                beyond = r[f"ci_low_{t}"] > 0 or r[f"ci_high_{t}"] < 0
                cell += f" [{r[f'ci_low_{t}']:+.3f}, {r[f'ci_high_{t}']:+.3f}]" + ("*" if beyond else "")
            cells.append(cell)
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as fp:
        writer = csv.DictWriter(fp, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


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


def plots(rows: list[dict], folder: Path, baseline: str, title: str, cost: str = "trainable") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def err(values):
        return [0 if math.isnan(v) else v for v in values]

    paths = []
    with_overall = [r for r in rows if not math.isnan(r["overall_mean"])]
    names = [r["variant"] for r in with_overall]

    fig, ax = plt.subplots(figsize=(9, 4.5))
    ax.bar(range(len(names)), [r["overall_mean"] for r in with_overall],
           yerr=err([r["overall_std"] for r in with_overall]), capsize=4, color="#4c72b0")
    for i, r in enumerate(with_overall):
        if r["verdict"] in ("better", "worse"):
            ax.annotate("*", (i, r["overall_mean"]), ha="center", va="bottom", fontsize=14)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    _floor(ax, [r["overall_mean"] - err([r["overall_std"]])[0] for r in with_overall])
    ax.set_ylabel("dev overall (mean ± std over seeds)")
    ax.set_title(f"{title}: overall score per variant (* beyond noise vs {baseline})")
    paths.append(_save(fig, folder / "overall.png"))

    column, what = COSTS[cost]
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in with_overall:
        ax.errorbar(max(r[column], 1), r["overall_mean"], yerr=err([r["overall_std"]]), fmt="o", capsize=3,
                    color="#c44e52" if r.get("frontier") else "#4c72b0")
        ax.annotate(r["variant"], (max(r[column], 1), r["overall_mean"]), textcoords="offset points",
                    xytext=(5, 5), fontsize=8)
    best = sorted((r for r in with_overall if r.get("frontier")), key=lambda r: r[column])
    if best:  # the frontier as a step: the best score at or below each cost
        ax.step([max(r[column], 1) for r in best], [r["overall_mean"] for r in best], where="post",
                color="#c44e52", linewidth=1, label="Pareto frontier")
        ax.legend(loc="lower right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(what + " (log)")
    ax.set_ylabel("dev overall (mean ± std over seeds)")
    ax.set_title(f"{title}: score against {what}")
    paths.append(_save(fig, folder / "score_vs_params.png"))

    tasks = _tasks_of(rows)
    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 4.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        present = [r for r in rows if not math.isnan(r[f"{task}_mean"])]
        ax.bar(range(len(present)), [r[f"{task}_mean"] for r in present],
               yerr=err([r[f"{task}_std"] for r in present]), capsize=3, color="#55a868")
        ax.set_xticks(range(len(present)), [r["variant"] for r in present], rotation=60, ha="right", fontsize=7)
        _floor(ax, [r[f"{task}_mean"] - err([r[f"{task}_std"]])[0] for r in present])
        ax.set_title(f"{task} ({get_task(task).primary_metric})")
    fig.suptitle(f"{title}: dev metric per task (mean ± std over seeds)")
    paths.append(_save(fig, folder / "per_task.png"))
    return paths


def compare(sweep: str | None = None, experiment: str | None = None, tracking_uri: str = "", out_dir: str = "",
            baseline: str = "multitask", test: str = "both", resamples: int = 1000, out=print,
            select_best_by: str = "", select_over: tuple[str, ...] = (), detect: float | None = None,
            cost: str = "trainable") -> list[dict]:
    from harness.tracking import open_client

    if cost not in COSTS:
        raise CompareError(f"--cost: expected one of {list(COSTS)}, got {cost!r}")
    if detect is not None and not detect > 0:
        raise CompareError(f"--detect: expected a difference of the overall score > 0, got {detect!r}")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    client = open_client(tracking_uri)
    records, parent_id = collect(client, sweep, experiment, out)
    chosen = []
    if select_best_by:
        if select_best_by != "validation":
            raise CompareError(f"--select-best-by: expected 'validation', got {select_best_by!r}")
        records, chosen = select_best(records, tuple(select_over))
    elif select_over:
        raise CompareError("--select-over names the grid settings --select-best-by chooses among; give both")
    # A sweep's rows follow the order its file or command line listed the variants in.
    order = client.get_run(parent_id).data.params.get(names.SWEEP_VARIANTS, "").split(",") if parent_id else None
    title = sweep or "+".join(x.strip() for x in experiment.split(",") if x.strip())
    folder = Path(out_dir or Path("outputs") / "compare" / title)
    folder.mkdir(parents=True, exist_ok=True)
    if baseline not in {r.variant for r in records}:
        out(f"note: baseline {baseline!r} has no finished runs here: no differences or tests")
    with tempfile.TemporaryDirectory() as tmp:
        rows = summarise(records, baseline, test, resamples, client, Path(tmp), order, detect, cost)
    table = markdown_table(rows, baseline, test, detect)
    if any(r["variant"].split()[0] == baseline for r in rows):
        table += (f"\nPer task, the difference from {baseline} (mean over common seeds) and its 95% paired "
                  "bootstrap interval over dev examples; * where the interval excludes 0:\n\n"
                  + task_difference_table(rows, baseline))
    if chosen:
        table += ("\nEach variant at its best grid point per seed by the validation score (val/overall); dev is "
                  "reported for that point:\n\n| variant | seed | chosen point | val overall | points tried |\n"
                  "|---|---|---|---|---|\n" + "".join(f"| {c['variant']} | {c['seed']} | {c['point']} | "
                                                     f"{c['validation']:.4f} | {c['candidates']} |\n" for c in chosen))
    (folder / "compare.md").write_text(
        f"# {title}\n\nFinished runs: {len(records)}. Mean ± std over seeds (n). Δ: mean paired difference "
        f"of the overall score from {baseline} over common seeds. {caption(rows, baseline, test)}\n\n" + table)
    write_csv(rows, folder / "compare.csv")
    paths = [folder / "compare.md", folder / "compare.csv", *plots(rows, folder, baseline, title, cost)]
    if parent_id:
        for path in paths:
            client.log_artifact(parent_id, str(path), "compare")
    out(table)
    out(caption(rows, baseline, test))
    out(f"written to {folder}" + (f" and logged to the sweep's parent run {parent_id} (artifacts/compare)"
                                  if parent_id else ""))
    return rows
