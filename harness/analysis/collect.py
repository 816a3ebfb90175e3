"""The runs a comparison reads: finished harness runs of a sweep or experiment(s) from MLflow, one
`RunRecord` per label and seed, and their per-example dev predictions (read when a test needs them)."""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.core import names
from harness.core.names import metric_key, primary_key
from harness.tasks import TaskError, default_tasks, get_task, overall_formula
from harness.tasks.registry import extra_metric
from harness.tasks import task_order as ordered_tasks


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
    # Every dev metric logged for its tasks (task -> metric -> value; an extra dev file's too, such as
    # MNLI's accuracy_mismatched): what a formula of several metrics per task scores.
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)


def stored_per_task(metrics: dict[str, float], tasks: list[str], encoder_trained: bool) -> int:
    """Parameters that one more task adds to what is stored and served (see RunRecord)."""
    own = [metrics.get(names.params_key(f"task_specific/{t}"), 0) + metrics.get(names.params_key(f"head/{t}"), 0)
           for t in tasks]
    encoder = metrics.get(names.params_key("encoder"), 0) if encoder_trained else 0
    return int(round(np.mean(own) + encoder)) if own else int(encoder)


def as_metrics(scores: dict[str, float]) -> dict[str, dict[str, float]]:
    """task -> primary value, as the task -> metric -> value that an OverallFormula scores."""
    return {t: {get_task(t).primary_metric: v} for t, v in scores.items()}


def _sweep_runs(client, sweep: str) -> tuple[list, str]:
    """A sweep's runs (the parent among them), and its parent run's id."""
    from harness.tracking.tracker import search_all_runs

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
    runs = search_all_runs(client, [parents[0].info.experiment_id], f"tags.`{names.SWEEP_ID}` = '{sweep}'")
    return runs, parents[0].info.run_id


def _experiment_runs(client, experiment: str) -> list:
    """The runs of one experiment, or of several joined by commas (a study's rows from more than one)."""
    from harness.tracking.tracker import search_all_runs

    ids = []
    for name in filter(None, (x.strip() for x in experiment.split(","))):
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise CompareError(f"no experiment {name!r} in {client.tracking_uri}")
        ids.append(exp.experiment_id)
    if not ids:
        raise CompareError(f"--experiment {experiment!r}: no experiment named")
    return search_all_runs(client, ids)


def collect(client, sweep: str | None = None, experiment: str | None = None,
            out=print) -> tuple[list[RunRecord], str | None]:
    """Finished runs of a sweep (or an experiment), and the sweep's parent run id if there is one.
    Runs left out (not finished, or repeated for the same variant and seed) are counted in `out`."""
    parent_id = None
    if sweep:
        runs, parent_id = _sweep_runs(client, sweep)
    else:
        runs = _experiment_runs(client, experiment)
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
    return [_record(run, label, seed) for (label, seed), run in sorted(latest.items())], parent_id


def _record(run, label: str, seed: int) -> RunRecord:
    m = run.data.metrics
    tasks = [t for t in run.data.params.get(names.TASKS_PARAM, ",".join(default_tasks())).split(",") if t]
    try:
        scores = {t: m[primary_key(t)] for t in tasks if primary_key(t) in m}
        metrics = {t: {name: m[metric_key(t, name)] for name in get_task(t).dev_metrics if metric_key(t, name) in m}
                   for t in scores}
    except TaskError as exc:
        recorded = run.data.params.get("task_file", "")
        hint = f"give its task file with --task-file (the run's: {recorded})" if recorded else \
            "install the package that registers it"
        raise CompareError(f"run {run.info.run_id} ({label} seed {seed}): {exc} ({hint})") from None
    if names.TASK_SPECIFIC_TOTAL not in m:
        raise CompareError(f"run {run.info.run_id} ({label} seed {seed}) has no {names.TASK_SPECIFIC_TOTAL} metric")
    formula = overall_formula(tasks)
    encoder_trained = run.data.params.get("freeze_encoder", "False") != "True"
    return RunRecord(run.info.run_id, label, run.data.tags[names.VARIANT], seed, scores,
                     formula.score(metrics), int(m[names.TASK_SPECIFIC_TOTAL]),
                     float(m.get(names.RATIO_TO_ENCODER, math.nan)), float(m.get(names.TRAIN_SECONDS, math.nan)),
                     formula.describe(), validation=m.get(names.overall_key(names.VALIDATION)),
                     trainable=int(m.get(names.params_key("trainable"), 0)),
                     encoder_params=int(m.get(names.params_key("encoder"), 0)),
                     stored_per_task=stored_per_task(m, tasks, encoder_trained), metrics=metrics)


def task_order(records: list[RunRecord]) -> list[str]:
    """The tasks of these runs: the default group's in its order, then others as first seen."""
    return ordered_tasks(t for r in records for t in r.scores)


def prediction_sets(tasks) -> list[str]:
    """The dev prediction sets of these tasks: each task's (its name), then each of its extra dev files'
    (`<task>_<name>`, harness.tasks.registry.extra_metric)."""
    return [s for t in tasks for s in [t, *(extra_metric(t, name) for name in get_task(t).extra_dev)]]


def load_predictions(client, record: RunRecord, folder: Path) -> dict[str, dict]:
    """A run's dev predictions per prediction set (artifacts predictions/dev-<set>.csv: a task's, and its
    extra dev files'), read once and kept on the record."""
    if not record.predictions:
        local = Path(client.download_artifacts(record.run_id, names.PREDICTIONS, str(folder / record.run_id)))
        for task in prediction_sets(record.scores):
            path = local / names.predictions_file(task)
            if not path.is_file():
                raise CompareError(f"run {record.run_id} ({record.label} seed {record.seed}): "
                                   f"artifact predictions/{path.name} is missing")
            with open(path, newline="") as fp:
                rows = list(csv.DictReader(fp))
            record.predictions[task] = {"ids": [r["id"] for r in rows],
                                        "pred": np.array([float(r["prediction"]) for r in rows]),
                                        "label": np.array([float(r["label"]) for r in rows])}
    return record.predictions
