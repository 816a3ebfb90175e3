"""Sweeps on the local executor, and `mtl-bench compare` on their runs (real MLflow store)."""
import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from harness.compare import bootstrap_difference, compare
from harness.config import ConfigError
from harness.sweep import expand, load_spec

TINY = ["--set", "epochs=1", "--set", "batches_per_epoch=3", "--set", "batch_size=4", "--set", "max_length=32"]


def sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, *args):
    command = [sys.executable, "-m", "harness.cli", "sweep", "--set", f"model={tiny_bert}",
               "--set", f"data_dir={small_data}", "--set", f"tracking_uri={tracking_uri}",
               "--set", f"output_dir={tmp_path / 'outputs'}", "--launch-config", str(REPO / "launch/single.yaml"),
               *TINY, *args]
    return subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)


def child_runs(tracking_uri, sweep_id):
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              f"tags.`sweep.id` = '{sweep_id}'")
    parents = [r for r in runs if r.data.tags.get("sweep.role") == "sweep"]
    return parents, [r for r in runs if r.data.tags.get("sweep.role") != "sweep"]


def test_a_sweep_expands_every_variant_grid_value_and_seed_with_stable_keys():
    spec = load_spec(None, "s", ["multitask", "pals-top"], [0, 1], settings=["epochs=2"], grid=["lr=1e-4,3e-5"],
                     options=["pal_size=12"])
    jobs = expand(spec)
    assert len(jobs) == 2 * 2 * 2
    assert {(j.variant, j.seed, j.settings["lr"]) for j in jobs} == {
        (v, s, lr) for v in ("multitask", "pals-top") for s in (0, 1) for lr in (1e-4, 3e-5)}
    assert all(j.settings["epochs"] == 2 for j in jobs)
    # The option goes only to the variants that have it.
    assert all(j.options == ({"pal_size": "12"} if j.variant == "pals-top" else {}) for j in jobs)
    assert len({j.key for j in jobs}) == len(jobs)
    # Adding a seed keeps the keys of the jobs that were there: a re-run finds their runs.
    more = expand(load_spec(None, "s", ["multitask", "pals-top"], [0, 1, 2], settings=["epochs=2"],
                            grid=["lr=1e-4,3e-5"], options=["pal_size=12"]))
    assert {j.key for j in jobs} < {j.key for j in more}


@pytest.mark.parametrize("kwargs, message", [
    (dict(settings=["epochs=two"]), "sweep setting epochs: expected int, got 'two'"),
    (dict(settings=["bogus=1"]), "sweep setting 'bogus': not a setting a sweep can vary"),
    (dict(settings=["epochs"]), "--set 'epochs': expected NAME=VALUE"),
    (dict(options=["no_such_option=3"]), "sweep option 'no_such_option': none of the variants"),
    (dict(settings=["lr=-1"]), "job multitask seed 0: lr: expected a positive learning rate"),
])
def test_bad_sweep_settings_are_refused_naming_the_field(kwargs, message):
    with pytest.raises(ConfigError, match=None) as error:
        expand(load_spec(None, "s", ["multitask"], [0], **kwargs))
    assert message in str(error.value)


def test_a_bad_sweep_file_is_refused_naming_the_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("variants: [multitask]\nseeds: [0]\nsetting: {epochs: 2}\n")
    with pytest.raises(ConfigError, match=rf"sweep file {path}: unknown key\(s\) \['setting'\]"):
        load_spec(path)
    path.write_text("variants: [multitask]\nseeds: [zero]\n")
    with pytest.raises(ConfigError, match=rf"sweep file {path}: seeds must be integers"):
        load_spec(path)
    path.write_text("variants: [no-such-variant]\nseeds: [0]\n")
    with pytest.raises(Exception, match="no-such-variant"):
        expand(load_spec(path))


def test_the_study_sweep_files_expand_to_nine_variants_by_three_seeds():
    for name in ("study-quick", "study-paper"):
        jobs = expand(load_spec(REPO / "launch" / "sweeps" / f"{name}.yaml"))
        assert len(jobs) == 27
        assert len({j.variant for j in jobs}) == 9


def _predictions(labels, correct_fraction, rng):
    labels = np.asarray(labels, dtype=float)
    pred = labels.copy()
    wrong = rng.random(len(labels)) > correct_fraction
    pred[wrong] = (labels[wrong] + 1) % 5
    return {"ids": [str(i) for i in range(len(labels))], "pred": pred, "label": labels}


def _sts(labels, noise, rng):
    labels = np.asarray(labels, dtype=float)
    return {"ids": [str(i) for i in range(len(labels))], "pred": labels + rng.normal(0, noise, len(labels)),
            "label": labels}


def test_the_paired_bootstrap_separates_a_real_difference_from_noise():
    rng = np.random.default_rng(0)
    n = 800
    sst, quora, sts = rng.integers(0, 5, n), rng.integers(0, 2, n), rng.uniform(0, 5, n)

    def model(accuracy, noise):
        return {"sst": _predictions(sst, accuracy, rng), "quora": _predictions(quora, accuracy, rng),
                "sts": _sts(sts, noise, rng)}

    same = model(0.6, 1.5)
    observed, low, high = bootstrap_difference([(same, same)], ["sst", "quora", "sts"], resamples=200)
    assert observed == 0 and low == 0 and high == 0
    # Two models of the same quality, different mistakes: the interval straddles 0.
    observed, low, high = bootstrap_difference([(model(0.6, 1.5), model(0.6, 1.5)) for _ in range(2)],
                                               ["sst", "quora", "sts"], resamples=300)
    assert low < 0 < high
    # A clearly better model: the whole interval is above 0, around the observed difference.
    observed, low, high = bootstrap_difference([(model(0.8, 0.5), model(0.6, 1.5))], ["sst", "quora", "sts"],
                                               resamples=300)
    assert 0 < low < observed < high


@pytest.mark.slow
def test_a_local_sweep_records_child_runs_skips_finished_jobs_and_compare_builds_the_table(
        tmp_path, tiny_bert, small_data, tracking_uri):
    args = ["--name", "local-test", "--variants", "multitask,pals-top", "--seeds", "0,1", "-o", "pal_size=12"]
    result = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep local-test: 4/4 jobs finished" in result.stdout
    parents, children = child_runs(tracking_uri, "local-test")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    assert len(children) == 4
    assert {(r.data.tags["variant"], r.data.tags["seed"]) for r in children} == {
        (v, s) for v in ("multitask", "pals-top") for s in ("0", "1")}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["sweep.label"] == run.data.tags["variant"]
        assert {"dev/overall", "dev/sst/accuracy", "params/task_specific_total"} <= set(run.data.metrics)
    assert parents[0].data.params["variants"] == "multitask,pals-top"

    # Same sweep again: nothing runs; one more seed: only its two jobs run.
    again = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, *args)
    assert again.returncode == 0 and "4 finished or in progress, 0 to run" in again.stdout
    args[args.index("0,1")] = "0,1,2"
    more = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, *args)
    assert more.returncode == 0 and "4 finished or in progress, 2 to run" in more.stdout
    _, children = child_runs(tracking_uri, "local-test")
    assert len(children) == 6

    out = tmp_path / "compare"
    rows = compare(sweep="local-test", tracking_uri=tracking_uri, out_dir=str(out), resamples=200, out=lambda *_: None)
    by_variant = {r["variant"]: r for r in rows}
    assert set(by_variant) == {"multitask", "pals-top"}
    client = MlflowClient(tracking_uri)
    for variant, row in by_variant.items():
        runs = [r for r in children if r.data.tags["variant"] == variant]
        overall = [r.data.metrics["dev/overall"] for r in runs]
        assert row["n"] == 3
        assert row["overall_mean"] == pytest.approx(np.mean(overall))
        assert row["overall_std"] == pytest.approx(np.std(overall, ddof=1))
    pals = by_variant["pals-top"]
    assert pals["task_specific_params"] > 0 and by_variant["multitask"]["task_specific_params"] == 0
    assert pals["paired_seeds"] == 3 and not np.isnan(pals["p_seeds"]) and pals["ci_low"] <= pals["ci_high"]
    assert pals["verdict"] in ("better", "worse", "within noise")
    sst = [np.mean([r.data.metrics["dev/sst/accuracy"] for r in children if r.data.tags["variant"] == v])
           for v in ("pals-top", "multitask")]
    assert pals["delta_sst"] == pytest.approx(sst[0] - sst[1])
    assert pals["ci_low_sst"] <= pals["ci_high_sst"]
    with open(out / "compare.csv") as fp:
        assert [r["variant"] for r in csv.DictReader(fp)] == ["multitask", "pals-top"]
    assert "| pals-top | 3 |" in (out / "compare.md").read_text()
    assert "| variant | Δ sst | Δ cfimdb | Δ quora | Δ sts |" in (out / "compare.md").read_text()
    for name in ("overall.png", "score_vs_params.png", "per_task.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {a.path for a in client.list_artifacts(parent_id, "compare")}
    assert {"compare/compare.md", "compare/compare.csv", "compare/overall.png", "compare/score_vs_params.png",
            "compare/per_task.png"} <= logged
    jobs = json.loads((tmp_path / "outputs" / "sweeps" / "local-test" / "jobs.json").read_text())
    assert len(jobs["jobs"]) == 6


def test_compare_names_a_sweep_that_is_not_in_the_store(tracking_uri):
    from harness.compare import CompareError

    MlflowClient(tracking_uri).search_experiments()  # creates the store
    with pytest.raises(CompareError, match="no sweep 'nope'"):
        compare(sweep="nope", tracking_uri=tracking_uri, out=lambda *_: None)
