"""Optuna search sweeps (harness/sweeps/search.py): the sweep file's `search:`, the rounds of
trials, and a real search on the local executor with a real MLflow store."""
import json
import math
import re

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient
from test_sweep import child_runs, sweep_cli

from harness.analysis import compare
from harness.core import names
from harness.core.config import ConfigError
from harness.sweeps import Executor, expand, load_spec
from harness.sweeps.search import Search, study_of

SEARCH = """name: search
variants: [multitask, pals-top]
seeds: [0, 1]
set: {validation_fraction: 0.25}
options: {pal_size: 12}
search:
  trials: 3
  batch: 2
  space:
    lr: {low: 1.0e-5, high: 1.0e-2, log: true}
    batch_size: [4, 8]
"""


def spec_of(tmp_path, text=SEARCH):
    path = tmp_path / "search.yaml"
    path.write_text(text)
    return load_spec(path)


@pytest.mark.parametrize("search, message", [
    ("{trials: 3}", "expected a mapping with trials and space"),
    ("{trials: 0, space: {lr: {low: 1.0e-5, high: 1.0e-3}}}", "trials: expected a positive whole number"),
    ("{trials: 2, batch: 1.5, space: {lr: {low: 1.0e-5, high: 1.0e-3}}}", "batch: expected a positive whole"),
    ("{trials: 2, space: {lr: {low: 1.0e-3, high: 1.0e-5}}}", "space 'lr': expected numbers low < high"),
    ("{trials: 2, space: {lr: {low: 0.0, high: 1.0e-3, log: true}}}", "a log scale needs low > 0"),
    ("{trials: 2, space: {lr: {low: 1.0e-5, hi: 1.0e-3}}}", "space 'lr': expected {low: , high: }"),
    ("{trials: 2, space: {lr: {low: fast, high: 1.0e-3}}}", "space 'lr': sweep setting lr: expected a number"),
    ("{trials: 2, space: {seed: [0, 1]}}", "'seed': not a setting a sweep can vary"),
    ("{trials: 2, space: {batch_size: [4, 4]}}", "expected a list of distinct values"),
    ("{trials: 2, space: {epochs: {low: 1, high: 3}}, sampler: annealing}", "sampler: expected one of"),
    ("{trials: 2, space: {epochs: {low: 1, high: 3}}, direction: up}", "direction: expected maximize"),
    ("{trials: 2, space: {epochs: {low: 1, high: 3}}, trails: 3}", "unknown key(s) ['trails']"),
    ("{trials: 2, space: {max_length: {low: 16, high: 32}}}", "'max_length' is also set or in the grid"),
    ("{trials: 2, space: {freeze_encoder: [true, 'true']}}", "expected a list of distinct values"),
    ("{trials: 2, space: {epochs: [1, 2]}, sampler: qmc}", "sampler: expected one of ['tpe', 'random', 'gp']"),
    ("{trials: 2, space: {epochs: [1, 2]}, sampler_options: {seed: 3}}", "seed is not an option here"),
    # a multi-objective search: a list of metrics, one direction each
    ("{trials: 2, space: {epochs: [1, 2]}, metric: [val/overall, params/trainable]}", "direction: expected a list of 2 directions, one per metric"),
    ("{trials: 2, space: {epochs: [1, 2]}, metric: [val/overall, params/trainable], direction: [maximize]}", "expected a list of 2 directions"),
    ("{trials: 2, space: {epochs: [1, 2]}, metric: [val/overall, params/trainable], direction: [maximize, up]}",
     "direction: expected maximize or minimize, got 'up'"),
    ("{trials: 2, space: {epochs: [1, 2]}, direction: [maximize, minimize]}",
     "direction: expected maximize or minimize (metric: 'val/overall'), got ['maximize', 'minimize']"),
    ("{trials: 2, space: {epochs: [1, 2]}, metric: [val/overall], direction: [maximize]}",
     "metric: expected a metric name or a list of two or more distinct metric names"),
    ("{trials: 2, space: {epochs: [1, 2]}, metric: [val/overall, val/overall], direction: [maximize, minimize]}",
     "a list of two or more distinct metric names"),
    ("{trials: 2, space: {epochs: [1, 2]}, metric: [val/overall, 3], direction: [maximize, minimize]}",
     "metric: expected a metric name such as val/overall (or a list of them), got ['val/overall', 3]"),
])
def test_a_bad_search_section_is_refused_naming_the_field(tmp_path, search, message):
    text = (f"name: s\nvariants: [multitask]\nseeds: [0]\nset: {{validation_fraction: 0.1, max_length: 32}}\n"
            f"search: {search}\n")
    with pytest.raises(ConfigError, match="search.yaml: search: .*" + re.escape(message)):
        spec_of(tmp_path, text)


def search_of(tmp_path, text=SEARCH):
    spec = spec_of(tmp_path, text)
    return Search(spec, expand(spec), [])


def test_a_search_on_validation_needs_a_validation_split(tmp_path):
    text = SEARCH.replace("set: {validation_fraction: 0.25}\n", "")
    with pytest.raises(ConfigError, match="metric val/overall: the jobs need a validation split"):
        search_of(tmp_path, text)
    search_of(tmp_path, text.replace("  trials: 3\n", "  trials: 3\n  metric: dev/overall\n"))  # said outright


def test_a_validation_fraction_in_the_grid_is_a_validation_split_too(tmp_path):
    text = SEARCH.replace("set: {validation_fraction: 0.25}\n", "grid: {validation_fraction: [0.1, 0.2]}\n")
    assert search_of(tmp_path, text).search.metric == "val/overall"
    with pytest.raises(ConfigError, match="the jobs need a validation split"):
        search_of(tmp_path, text.replace("[0.1, 0.2]", "[0.0, 0.2]"))


@pytest.mark.parametrize("options", ["{startup: 4}", "{n_startup_trials: x}", "{n_ei_candidates: x}"])
def test_bad_sampler_options_are_refused_before_anything_runs(tmp_path, options):
    spec = spec_of(tmp_path, SEARCH.replace("  batch: 2\n", f"  batch: 2\n  sampler_options: {options}\n"))
    with pytest.raises(ConfigError, match="search sampler_options"):
        Search(spec, expand(spec), [])


@pytest.mark.parametrize("space, message", [
    ("batch_size: [0, 8]", r"search space \['batch_size'\], values batch_size=0: .*batch_size: expected a positive"),
    ("lr: {low: 0.0, high: 1.0e-3}", r"values lr=0.0: .*lr: expected a positive learning rate"),
    # each value valid alone, one combination not
    ("head_input: [cls, pooler]\n    pair_encoding: [joint, separate]",
     r"values head_input='pooler', pair_encoding='separate': .*head_input: 'pooler' reads"),
])
def test_every_value_of_the_space_is_checked_as_a_job_before_anything_runs(tmp_path, space, message):
    text = SEARCH.split("  space:\n")[0] + f"  space:\n    {space}\n"
    spec = spec_of(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        Search(spec, expand(spec), [])


def test_each_study_gets_batch_trials_a_round_within_its_space_until_it_has_trials(tmp_path):
    spec = spec_of(tmp_path)
    starts = expand(spec)
    assert len(starts) == 4  # a study per variant and seed; the searched settings are not in them
    search = Search(spec, starts, [])
    first = search.next_round({})
    assert len(first) == 8 and [j.index for j in first] == list(range(8))
    for job in first:
        lr, batch_size = job.settings["lr"], job.settings["batch_size"]
        assert 1e-5 <= lr <= 1e-2 and float(f"{lr:.3g}") == lr  # 3 significant digits: the label is the value
        assert batch_size in (4, 8)
        start = next(s for s in starts if study_of(s, spec.search.space) == study_of(job, spec.search.space))
        assert job.label == f"{start.label} lr={lr} batch_size={batch_size}"
        assert job.variant == start.variant and job.seed == start.seed and job.options == start.options
        assert job.settings["validation_fraction"] == 0.25
    assert {j.variant: j.options for j in first} == {"multitask": {}, "pals-top": {"pal_size": 12}}
    assert len({j.key for j in first}) == 8
    results = {job.key: 0.5 + i / 100 for i, job in enumerate(first)}
    second = search.next_round(results)
    assert len(second) == 4  # trials: 3 per study
    assert search.next_round({**results, **{j.key: 0.5 for j in second}}) == []
    # Rebuilt from the first round (as a later run of the sweep is, from jobs.json): the same next trials.
    again = Search(spec, starts, first)
    assert [j.key for j in again.next_round(results)] == [j.key for j in second]
    # A narrower space searches only the earlier trials inside it, and keeps the others (in jobs.json):
    # back to the first space, they are all trials again.
    cut = sorted(j.settings["lr"] for j in first)[3]
    narrower = spec_of(tmp_path, SEARCH.replace("high: 1.0e-2", f"high: {cut}"))
    narrow = Search(narrower, expand(narrower), first)
    assert [j.key for j in narrow.current()] == [j.key for j in first if j.settings["lr"] <= cut]
    assert 0 < len(narrow.current()) < len(first) and narrow.jobs == first
    assert [j.key for j in Search(spec, starts, narrow.jobs).current()] == [j.key for j in first]


def test_a_study_with_an_unfinished_trial_asks_for_no_more_until_it_has_run_again(tmp_path):
    spec = spec_of(tmp_path)
    search = Search(spec, expand(spec), [])
    first = search.next_round({})
    failed = first[0]
    results = {j.key: 0.6 for j in first if j is not failed}
    second = search.next_round(results)
    studies = {study_of(j, spec.search.space) for j in second}
    assert len(second) == 3 and study_of(failed, spec.search.space) not in studies
    # Its trial ran again and finished: now it asks; a NaN score (a constant predictor's) is the worst.
    third = search.next_round({**results, failed.key: float("nan"), **{j.key: 0.6 for j in second}})
    assert [study_of(j, spec.search.space) for j in third] == [study_of(failed, spec.search.space)]


ONE_STUDY = ("name: nan\nvariants: [multitask]\nseeds: [0]\nset: {validation_fraction: 0.1}\n"
             "search: {trials: 4, batch: 2, direction: DIRECTION,\n"
             "         space: {lr: {low: 1.0e-5, high: 1.0e-2, log: true}}}\n")


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_a_nan_score_is_told_to_the_sampler_as_the_worst_value_in_either_direction(tmp_path, monkeypatch, direction):
    """The study a round rebuilds holds a NaN trial as worse than every scored one, so the sampler
    never takes its values for the best."""
    import optuna

    spec = spec_of(tmp_path, ONE_STUDY.replace("DIRECTION", direction))
    search = Search(spec, expand(spec), [])
    nan_trial, scored = search.next_round({})
    studies = []
    create_study = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda *a, **k: studies.append(create_study(*a, **k)) or studies[-1])
    assert len(search.next_round({nan_trial.key: float("nan"), scored.key: 0.5})) == 2
    (study,) = studies
    told = {t.params["lr"]: t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE}
    assert told[scored.settings["lr"]] == 0.5
    worse = told[nan_trial.settings["lr"]] < 0.5 if direction == "maximize" else told[nan_trial.settings["lr"]] > 0.5
    assert worse, f"{direction}: the NaN trial was told as {told[nan_trial.settings['lr']]}"
    assert study.best_trial.params["lr"] == scored.settings["lr"]


@pytest.mark.parametrize("direction", ["maximize", "minimize"])
def test_the_summary_names_each_studys_best_scored_trial_never_a_nan_one(tmp_path, direction):
    """A NaN (a constant predictor's correlation) is the worst score: not the best, even as the
    study's first trial, and a study with only NaN scores has no best."""
    text = ONE_STUDY.replace("DIRECTION", direction).replace("seeds: [0]", "seeds: [0, 1]").replace(
        "trials: 4, batch: 2", "trials: 3, batch: 3")
    spec = spec_of(tmp_path, text)
    search = Search(spec, expand(spec), [])
    trials = search.next_round({})
    by_seed = {seed: [j for j in trials if j.seed == seed] for seed in (0, 1)}
    assert [len(jobs) for jobs in by_seed.values()] == [3, 3]
    scores = dict(zip((j.key for j in by_seed[0]), (float("nan"), 0.3, 0.7)))  # NaN first
    scores.update({j.key: float("nan") for j in by_seed[1]})
    best = by_seed[0][2] if direction == "maximize" else by_seed[0][1]
    summary = search.summary(scores)
    assert summary == [f"multitask_s0: best val/overall {scores[best.key]:.4f} at lr={best.settings['lr']} "
                       "(3 of 3 trials finished)",
                       "multitask_s1: no finished trial with a score (3 finished)"]


def test_a_study_of_a_small_choice_tries_every_value_then_says_it_is_used_up(tmp_path):
    text = SEARCH.replace("    lr: {low: 1.0e-5, high: 1.0e-2, log: true}\n", "").replace("trials: 3", "trials: 6")
    spec = spec_of(tmp_path, text + "  sampler: random\n")
    search = Search(spec, expand(spec), [])
    for _ in range(5):
        search.next_round({j.key: 0.5 for j in search.jobs})
    per_study = {}
    for job in search.jobs:
        per_study.setdefault(study_of(job, spec.search.space), []).append(job.settings["batch_size"])
    assert len(per_study) == 4 and all(sorted(values) == [4, 8] for values in per_study.values())
    assert search.used_up == set(per_study)
    summary = search.summary({j.key: 0.5 for j in search.jobs})
    assert all("(2 of 6 trials finished; the sampler proposed only values already tried)" in line for line in summary)


class ScriptedExecutor(Executor):
    """Records each job's run in a real MLflow store, its metrics `score(job)`, instead of training;
    a job in `fail` fails the first time it runs."""

    name = "scripted"
    description = "records a run per job"

    def __init__(self, score, fail: set = frozenset()):
        self.score, self.fail, self.rounds = score, set(fail), []

    def submit(self, jobs_file, jobs, report):
        meta = json.loads(jobs_file.read_text())
        assert [j["key"] for j in meta["jobs"]][jobs[0].index] == jobs[0].key  # runners find jobs by index
        client = MlflowClient(meta["env"]["MLFLOW_TRACKING_URI"])
        experiment = client.get_experiment_by_name(meta["experiment"]).experiment_id
        self.rounds.append([j.settings["lr"] for j in jobs])
        for job in jobs:
            run = client.create_run(experiment, tags={names.SWEEP_ID: meta["name"], names.SWEEP_JOB: job.key,
                                                      "mlflow.parentRunId": meta["parent_run_id"]})
            failed = job.key in self.fail
            self.fail.discard(job.key)
            if not failed:
                for metric, value in self.score(job).items():
                    client.log_metric(run.info.run_id, metric, value)
            client.set_terminated(run.info.run_id, "FAILED" if failed else "FINISHED")
        return f"recorded {len(jobs)}"

    def wait(self):
        pass


def in_a_project(tmp_path, monkeypatch):
    """Runs in tmp_path, with the launch config a sweep needs."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "single.yaml").write_text((REPO / "launch" / "single.yaml").read_text())


def test_the_rounds_stop_at_a_failed_trial_and_a_re_run_runs_it_again_before_asking_for_more(tmp_path, monkeypatch):
    """run_sweep's rounds with an executor that records each job's run in a real MLflow store
    (a score from its lr) instead of training, failing one trial the first time it runs."""
    from harness.sweeps import run_sweep

    in_a_project(tmp_path, monkeypatch)
    text = ("name: rounds\nvariants: [multitask]\nseeds: [0]\n"
            f"set: {{validation_fraction: 0.1, output_dir: {tmp_path / 'out'}, tracking_uri: sqlite:///{tmp_path}/m.db}}\n"
            "search: {trials: 5, batch: 2, space: {lr: {low: 1.0e-5, high: 1.0e-1, log: true}}}\n")
    spec = spec_of(tmp_path, text)
    first_two = Search(spec, expand(spec), []).next_round({})  # what the first round will ask
    executor = ScriptedExecutor(lambda job: {"val/overall": -abs(job.settings["lr"] - 1e-3)}, {first_two[1].key})
    lines = []
    run_sweep(spec, executor, out=lines.append)
    assert executor.rounds == [[j.settings["lr"] for j in first_two]]  # the failure ends the sweep
    assert lines[-1].startswith("sweep rounds: 1/2 jobs finished") and lines[-1].endswith("re-run the others")
    lines.clear()
    run_sweep(spec, executor, out=lines.append)
    assert executor.rounds[1] == [first_two[1].settings["lr"]]  # the failed trial alone, then new ones
    assert [len(r) for r in executor.rounds] == [2, 1, 2, 1] and len({lr for r in executor.rounds for lr in r}) == 5
    assert lines[-1].startswith("sweep rounds: 5/5 jobs finished")
    # jobs.json lost (an output folder deleted): the same proposals come back, found finished in
    # MLflow, and only the 2 trials beyond them run.
    (tmp_path / "out" / "sweeps" / "rounds" / "jobs.json").unlink()
    run_sweep(spec_of(tmp_path, text.replace("trials: 5", "trials: 7")), executor, out=lines.append)
    assert [len(r) for r in executor.rounds] == [2, 1, 2, 1, 1, 1]
    assert len({lr for r in executor.rounds for lr in r}) == 7
    assert lines[-1].startswith("sweep rounds: 7/7 jobs finished")
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    parent = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id],
                                "tags.`sweep.role` = 'sweep'")[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep.finished_jobs"] == "7"


@pytest.mark.slow
def test_a_search_sweep_runs_rounds_of_trials_as_child_runs_and_goes_on_where_it_stopped(
        tmp_path, tiny_bert, small_data, tracking_uri):
    """End to end on the local executor: 3 trials, 2 a round; the same sweep again runs nothing;
    a larger budget adds only the new trial; compare chooses among the trials on validation."""
    text = ("name: search\nvariants: [multitask]\nseeds: [0]\nset: {validation_fraction: 0.25}\n"
            "search:\n  trials: 3\n  batch: 2\n  space: {lr: {low: 1.0e-4, high: 1.0e-2, log: true}}\n")
    sweep_file = tmp_path / "search.yaml"
    sweep_file.write_text(text)
    result = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, str(sweep_file))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep search: 2 jobs, 0 finished or in progress, 2 to run" in result.stdout
    assert "sweep search: 3 jobs, 2 finished or in progress, 1 to run" in result.stdout
    assert "sweep search: 3/3 jobs finished" in result.stdout
    parents, children = child_runs(tracking_uri, "search")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 3
    parent = parents[0]
    assert parent.data.params["search.trials"] == "3" and parent.data.tags["sweep.jobs"] == "3"
    lrs = sorted(float(r.data.params["lr"]) for r in children)
    assert len(set(lrs)) == 3 and all(1e-4 <= lr <= 1e-2 for lr in lrs)
    for run in children:
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["sweep.label"] == f"multitask lr={float(run.data.params['lr'])}"
    best = max(children, key=lambda r: r.data.metrics["val/overall"])
    summary = f"multitask_s0: best val/overall {best.data.metrics['val/overall']:.4f} at lr={best.data.params['lr']}"
    assert summary in result.stdout
    client = MlflowClient(tracking_uri)
    local = client.download_artifacts(parent.info.run_id, "search.txt", str(tmp_path))
    assert summary in open(local).read()

    again = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, str(sweep_file))
    assert again.returncode == 0 and "to run" not in again.stdout and "3/3 jobs finished" in again.stdout
    sweep_file.write_text(text.replace("trials: 3", "trials: 4"))
    more = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, str(sweep_file))
    assert more.returncode == 0 and "sweep search: 4 jobs, 3 finished or in progress, 1 to run" in more.stdout
    _, children = child_runs(tracking_uri, "search")
    assert len(children) == 4 and len({r.data.params["lr"] for r in children}) == 4

    rows = compare(sweep="search", tracking_uri=tracking_uri, out_dir=str(tmp_path / "compare"), resamples=100,
                   out=lambda *_: None, select_best_by="validation", select_over=("lr",))
    best = max(children, key=lambda r: r.data.metrics["val/overall"])
    assert [r.variant for r in rows] == ["multitask"]
    assert rows[0].overall.mean == pytest.approx(best.data.metrics["dev/overall"])


OPTIONS = """name: options
variants: [lora]
seeds: [0]
set: {validation_fraction: 0.1}
search:
  trials: 4
  batch: 2
  sampler: random
  space:
    lr: {low: 1.0e-5, high: 1.0e-2, log: true}
    variant.rank: {low: 2, high: 32, log: true}
    variant.dropout: [0.0, 0.1]
"""


def test_a_search_over_variant_options_proposes_typed_values_into_the_jobs_options_and_labels(tmp_path):
    """`variant.rank: {low: 2, high: 32}` draws integers (LoRAConfig's rank is one), a choice is one
    of its values; both go into the job's options, and its label names them as a grid's does."""
    spec = spec_of(tmp_path, OPTIONS)
    assert spec.search.space["variant.rank"] == {"low": 2, "high": 32, "log": True}
    (start,) = expand(spec)
    search = Search(spec, [start], [])
    jobs = search.next_round({})
    jobs += search.next_round({j.key: 0.5 + i / 10 for i, j in enumerate(jobs)})  # told from the options
    assert len(jobs) == 4 and len({j.key for j in jobs}) == 4 and search.current() == jobs
    for job in jobs:
        rank, dropout = job.options["rank"], job.options["dropout"]
        assert type(rank) is int and 2 <= rank <= 32 and dropout in (0.0, 0.1)
        assert set(job.settings) == {"validation_fraction", "lr"}
        assert job.label == f"lora lr={job.settings['lr']} variant.rank={rank} variant.dropout={dropout}"
        assert study_of(job, spec.search.space) == study_of(start, spec.search.space)
    best = jobs[-1]
    assert f"variant.rank={best.options['rank']}, variant.dropout={best.options['dropout']} (4 of 4" in search.summary(
        {j.key: 0.9 if j is best else 0.5 for j in jobs})[0]
    # A search over a pals option with a choice of strings: the choice is typed by the variant.
    text = OPTIONS.replace("[lora]", "[pals-top]").replace(
        "    variant.rank: {low: 2, high: 32, log: true}\n    variant.dropout: [0.0, 0.1]\n",
        "    variant.top_mode: [bert-layer, pals-code]\n")
    search = search_of(tmp_path, text)
    assert {j.options["top_mode"] for j in search.next_round({})} <= {"bert-layer", "pals-code"}


@pytest.mark.parametrize("variants, space, message", [
    ("[multitask, lora]", "variant.rank: [4, 8]",
     "space 'variant.rank': the variant(s) ['multitask'] have no option 'rank'"),
    ("[lora]", "variant.rnak: [4, 8]", "space 'variant.rnak': variant 'lora' has no option 'rnak'; its options: "
                                        "tasks, rank, alpha, dropout, sites"),
    ("[lora]", "variant.rank: {low: 2.5, high: 8}",
     "space 'variant.rank': variant 'lora' option 'rank': expected an integer, got 2.5"),
    ("[lora]", "variant.rank: [4, four]", "variant 'lora' option 'rank': expected an integer, got 'four'"),
    ("[lora]", "variant.sites: [[query], [value]]", "space 'variant.sites': option 'sites' is a list"),
    ("[lora]", "rank: [4, 8]", "space 'rank': not a training setting but an option of ['lora']: vary it as "
                               "variant.rank"),
    ("[lora]", "variant.dropout: {low: 0.0, high: 0.2}\n  options: {dropout: 0.1}",
     "space 'variant.dropout' is also set or in the grid"),
])
def test_a_search_over_a_variant_option_it_cannot_take_is_refused(tmp_path, variants, space, message):
    text = f"name: s\nvariants: {variants}\nseeds: [0]\nset: {{validation_fraction: 0.1}}\nsearch:\n  trials: 2\n" \
           f"  space:\n    {space}\n"
    if "options:" in space:
        text = text.replace("  options: {dropout: 0.1}\n", "") + "options: {dropout: 0.1}\n"
    with pytest.raises(ConfigError) as error:
        spec_of(tmp_path, text)
    assert "search.yaml: search: " in str(error.value) and message in str(error.value)


def test_every_value_of_a_variant_options_space_is_checked_as_a_job_before_anything_runs(tmp_path):
    spec = spec_of(tmp_path, OPTIONS.replace("{low: 2, high: 32, log: true}", "[0, 8]"))
    with pytest.raises(ConfigError, match=r"values .*variant.rank=0.*: .*variant 'lora': rank: expected a positive"):
        Search(spec, expand(spec), [])


PARETO = """name: pareto
variants: [lora]
seeds: [0]
set: {validation_fraction: 0.1, freeze_encoder: true}
search:
  trials: 6
  batch: 6
  metric: [val/overall, params/trainable]
  direction: [maximize, minimize]
  space:
    lr: {low: 1.0e-5, high: 1.0e-2, log: true}
    variant.rank: [2, 4, 8, 16, 32]
"""


def test_a_two_objective_search_keeps_its_metrics_and_directions_in_order(tmp_path):
    search = spec_of(tmp_path, PARETO).search
    assert search.metrics == ["val/overall", "params/trainable"] and search.directions == ["maximize", "minimize"]
    single = spec_of(tmp_path, SEARCH).search  # a single metric: as before
    assert (single.metric, single.metrics, single.directions) == ("val/overall", ["val/overall"], ["maximize"])


def test_the_pareto_set_is_the_non_dominated_finished_trials_without_a_nan(tmp_path):
    """Six finished trials with hand-made (score, trainable parameters): the Pareto set is the
    three no other trial beats in both; a NaN in either metric keeps a trial out of it (treated
    as the worst, (0.95, NaN) would otherwise be in it)."""
    search = search_of(tmp_path, PARETO)
    jobs = search.next_round({})
    assert len(jobs) == 6
    nan = float("nan")
    values = [(0.70, 100.0), (0.80, 200.0), (0.95, nan), (nan, 50.0), (0.80, 250.0), (0.90, 400.0)]
    results = {j.key: v for j, v in zip(jobs, values)}
    front = [jobs[0], jobs[1], jobs[5]]  # jobs[4] is beaten by jobs[1]: the same score, more parameters
    (study,) = search.pareto(results).values()
    assert study["metrics"] == ["val/overall", "params/trainable"] and study["directions"] == ["maximize", "minimize"]
    assert [t["key"] for t in study["trials"]] == [j.key for j in front]
    for trial, job, (score, count) in zip(study["trials"], front, [values[0], values[1], values[5]]):
        assert trial["run_name"] == job.run_name
        assert trial["values"] == {"val/overall": score, "params/trainable": count}
        assert trial["space"] == {"lr": job.settings["lr"], "variant.rank": job.options["rank"]}
    assert search.summary(results) == [
        "lora_s0: Pareto set of val/overall (max), params/trainable (min): 3 trial(s) (6 of 6 trials finished)",
        *(f"  val/overall {v[0]:.6g}, params/trainable {v[1]:.6g} at lr={j.settings['lr']}, "
          f"variant.rank={j.options['rank']}" for j, v in zip(front, [values[0], values[1], values[5]]))]


def test_a_two_objective_round_tells_its_studies_each_value_a_nan_the_worst_for_its_direction(tmp_path, monkeypatch):
    import optuna

    search = search_of(tmp_path, PARETO.replace("trials: 6\n  batch: 6", "trials: 4\n  batch: 2"))
    first = search.next_round({})
    studies = []
    create_study = optuna.create_study
    monkeypatch.setattr(optuna, "create_study", lambda *a, **k: studies.append(create_study(*a, **k)) or studies[-1])
    second = search.next_round({first[0].key: (float("nan"), 100.0), first[1].key: (0.6, float("nan"))})
    assert len(second) == 2 and not {j.key for j in second} & {j.key for j in first}
    (study,) = studies
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    told = {(t.params["lr"], t.params["variant.rank"]): t.values for t in study.trials
            if t.state == optuna.trial.TrialState.COMPLETE}
    assert told == {(first[0].settings["lr"], first[0].options["rank"]): [-math.inf, 100.0],
                    (first[1].settings["lr"], first[1].options["rank"]): [0.6, math.inf]}


def pareto_of(runs: list) -> set[str]:
    """The runs no other run beats: at least as high a val/overall and as few trainable
    parameters, and better in one."""
    def score(run):
        return run.data.metrics["val/overall"], -run.data.metrics["params/trainable"]

    return {a.data.tags[names.SWEEP_JOB] for a in runs
            if not any(all(x >= y for x, y in zip(score(b), score(a))) and score(b) != score(a) for b in runs)}


def test_a_two_objective_sweep_records_each_studys_pareto_set_in_its_parent_run(tmp_path, monkeypatch):
    """run_sweep's rounds with runs in a real MLflow store that log val/overall and
    params/trainable (as training runs do, from the LoRA rank): the summary and the parent run's
    search.txt and search_pareto.json hold the Pareto set of the runs' own values."""
    from harness.sweeps import run_sweep

    in_a_project(tmp_path, monkeypatch)
    text = PARETO.replace("trials: 6\n  batch: 6", "trials: 6\n  batch: 3").replace(
        "freeze_encoder: true}", f"freeze_encoder: true, output_dir: {tmp_path / 'out'}, "
                                 f"tracking_uri: sqlite:///{tmp_path}/m.db}}")
    executor = ScriptedExecutor(lambda job: {"val/overall": 0.5 + math.log2(job.options["rank"]) / 20
                                             - abs(math.log10(job.settings["lr"]) + 3) / 10,
                                             "params/trainable": 1000 * job.options["rank"]})
    lines = []
    run_sweep(spec_of(tmp_path, text), executor, out=lines.append)
    assert [len(r) for r in executor.rounds] == [3, 3] and lines[-1].startswith("sweep pareto: 6/6 jobs finished")
    client = MlflowClient(f"sqlite:///{tmp_path}/m.db")
    experiment = client.get_experiment_by_name("bert-mtl-bench").experiment_id
    parent = client.search_runs([experiment], "tags.`sweep.role` = 'sweep'")[0]
    children = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    assert len(children) == 6
    recorded = json.loads(open(client.download_artifacts(parent.info.run_id, "search_pareto.json", str(tmp_path))).read())
    (study,) = recorded.values()
    assert {t["key"] for t in study["trials"]} == pareto_of(children) and len(study["trials"]) >= 2
    summary = open(client.download_artifacts(parent.info.run_id, "search.txt", str(tmp_path))).read().splitlines()
    assert summary[0].startswith(f"lora_s0: Pareto set of val/overall (max), params/trainable (min): "
                                 f"{len(study['trials'])} trial(s) (6 of 6 trials finished)")
    assert len(summary) == 1 + len(study["trials"]) and all(line in lines for line in summary)
    # A run without one of the metrics is an error naming it.
    executor.score = lambda job: {"val/overall": 0.5}
    with pytest.raises(ConfigError, match="finished without the search metric 'params/trainable'"):
        run_sweep(spec_of(tmp_path, text.replace("trials: 6", "trials: 7")), executor, out=lines.append)



@pytest.mark.slow
def test_a_real_two_objective_sweep_records_the_pareto_set_of_its_runs_logged_values(
        tmp_path, tiny_bert, small_data, tracking_uri):
    """Two real frozen-encoder LoRA trials, ranks 2 and 4: each run logs params/trainable itself,
    the larger rank trains more, and the parent run's Pareto set is that of the runs' values."""
    sweep_file = tmp_path / "pareto.yaml"
    sweep_file.write_text("name: pareto\nvariants: [lora]\nseeds: [0]\n"
                          "set: {validation_fraction: 0.25, freeze_encoder: true}\n"
                          "search: {trials: 2, batch: 2, metric: [val/overall, params/trainable],\n"
                          "         direction: [maximize, minimize], space: {variant.rank: [2, 4]}}\n")
    result = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, str(sweep_file))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep pareto: 2/2 jobs finished" in result.stdout
    (parent,), children = child_runs(tracking_uri, "pareto")
    trainable = {int(r.data.params["variant.rank"]): r.data.metrics["params/trainable"] for r in children}
    assert sorted(trainable) == [2, 4] and trainable[2] < trainable[4]
    client = MlflowClient(tracking_uri)
    (study,) = json.loads(open(client.download_artifacts(parent.info.run_id, "search_pareto.json",
                                                         str(tmp_path))).read()).values()
    assert {t["key"] for t in study["trials"]} == pareto_of(children)
    assert "lora_s0: Pareto set of val/overall (max), params/trainable (min): " in result.stdout
