"""Sweeps on the local executor, and `mtl-bench compare` on their runs (real MLflow store)."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from harness.testing import run_cli
from mlflow.tracking import MlflowClient

from harness.analysis import compare
from harness.core.config import ConfigError
from harness.sweeps import expand, load_spec
from harness.sweeps.labels import parse_label

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


def test_a_sweep_can_choose_the_task_set():
    jobs = expand(load_spec(None, "s", ["multitask", "single-task"], [0], settings=["tasks=sst,sts"]))
    assert {j.settings["tasks"] for j in jobs} == {"sst,sts"}
    default = expand(load_spec(None, "s", ["multitask", "single-task"], [0]))
    assert not {j.key for j in jobs} & {j.key for j in default}  # another task set is another job
    with pytest.raises(ConfigError, match="tasks: unknown task 'imdb'"):
        expand(load_spec(None, "s", ["multitask"], [0], settings=["tasks=sst,imdb"]))


@pytest.mark.parametrize("kwargs, message", [
    (dict(settings=["epochs=two"]), "sweep setting epochs: expected an integer, got 'two'"),
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
    with pytest.raises(ConfigError, match=rf"sweep file {path}: seeds: expected an integer, got .zero."):
        load_spec(path)
    path.write_text("variants: [no-such-variant]\nseeds: [0]\n")
    from variants import VariantError

    with pytest.raises(VariantError, match="no-such-variant"):
        expand(load_spec(path))


def test_the_study_sweep_files_expand_to_nine_variants_by_three_seeds():
    for name in ("study-quick", "study-paper"):
        jobs = expand(load_spec(REPO / "launch" / "sweeps" / f"{name}.yaml"))
        assert len(jobs) == 27
        assert len({j.variant for j in jobs}) == 9


@pytest.mark.slow
def test_a_local_sweep_records_child_runs_skips_finished_jobs_and_compare_builds_the_table(
        tmp_path, tiny_bert, small_data, tracking_uri):
    args = ["--name", "local-test", "--variants", "multitask,pals-top", "--seeds", "0", "-o", "pal_size=12"]
    result = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep local-test: 2/2 jobs finished" in result.stdout
    parents, children = child_runs(tracking_uri, "local-test")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    assert len(children) == 2
    assert {(r.data.tags["variant"], r.data.tags["seed"]) for r in children} == {("multitask", "0"), ("pals-top", "0")}
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parent_id
        assert run.data.tags["sweep.label"] == run.data.tags["variant"]
        # `accelerate launch` alone would set OMP_NUM_THREADS=1; a job gets the machine's CPUs.
        assert run.data.tags["torch_threads"] == str(len(os.sched_getaffinity(0)))
        assert {"dev/overall", "dev/sst/accuracy", "params/task_specific_total"} <= set(run.data.metrics)
    assert parents[0].data.params["variants"] == "multitask,pals-top"

    # Same sweep again: nothing runs; one more seed: only its two jobs run.
    again = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, *args)
    assert again.returncode == 0 and "2 finished or in progress, 0 to run" in again.stdout
    args[args.index("0")] = "0,1"
    more = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, *args)
    assert more.returncode == 0 and "2 finished or in progress, 2 to run" in more.stdout
    _, children = child_runs(tracking_uri, "local-test")
    assert len(children) == 4

    out = tmp_path / "compare"
    rows = compare(sweep="local-test", tracking_uri=tracking_uri, out_dir=str(out), resamples=200, out=lambda *_: None)
    by_variant = {r.variant: r for r in rows}
    assert set(by_variant) == {"multitask", "pals-top"}
    client = MlflowClient(tracking_uri)
    for variant, row in by_variant.items():
        runs = [r for r in children if r.data.tags["variant"] == variant]
        overall = [r.data.metrics["dev/overall"] for r in runs]
        assert row.n == 2
        assert row.overall.mean == pytest.approx(np.mean(overall))
        assert row.overall.std == pytest.approx(np.std(overall, ddof=1))
    pals, stats = by_variant["pals-top"], by_variant["pals-top"].stats
    assert pals.task_specific_params > 0 and by_variant["multitask"].task_specific_params == 0
    assert stats["paired_seeds"] == 2 and not np.isnan(stats["p_seeds"]) and stats["ci"].low < stats["ci"].high
    assert stats["p_seeds_holm"] == pytest.approx(stats["p_seeds"])  # one comparison: Holm changes nothing
    noise = stats["ci"].low <= 0 <= stats["ci"].high or stats["p_seeds_holm"] >= 0.05
    assert (stats["verdict"] == "within noise") == noise
    sst = [np.mean([r.data.metrics["dev/sst/accuracy"] for r in children if r.data.tags["variant"] == v])
           for v in ("pals-top", "multitask")]
    sst_difference = stats["task_differences"]["sst"]
    assert sst_difference.delta == pytest.approx(sst[0] - sst[1])
    # Two seeds of a tiny model may predict SST identically (an interval of width 0): the interval
    # must still hold the measured difference.
    assert sst_difference.ci.low <= sst_difference.delta <= sst_difference.ci.high
    with open(out / "compare.csv") as fp:
        assert [r["variant"] for r in csv.DictReader(fp)] == ["multitask", "pals-top"]
    assert "| pals-top | 2 |" in (out / "compare.md").read_text()
    assert "Holm (step-down) is applied to the t-test p-values across the 1 comparison(s)" in (
        out / "compare.md").read_text()
    assert "| variant | Δ sst | Δ cfimdb | Δ quora | Δ sts |" in (out / "compare.md").read_text()
    for name in ("overall.png", "score_vs_params.png", "per_task.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = {a.path for a in client.list_artifacts(parent_id, "compare")}
    assert {"compare/compare.md", "compare/compare.csv", "compare/overall.png", "compare/score_vs_params.png",
            "compare/per_task.png"} <= logged
    jobs = json.loads((tmp_path / "outputs" / "sweeps" / "local-test" / "jobs.json").read_text())
    assert len(jobs["jobs"]) == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(seeds=[0, 0]), "'seeds' lists a value twice"),
    (dict(settings=["lr=1e-4"], grid=["lr=1e-4,3e-5"]), "['lr'] both set for every job and varied in the grid"),
])
def test_ambiguous_sweeps_are_refused(kwargs, message):
    args = dict(name="s", variants=["multitask"], seeds=[0])
    args.update(kwargs)
    with pytest.raises(ConfigError) as error:
        load_spec(None, **args)
    assert message in str(error.value)


@pytest.mark.parametrize("text, message", [
    ("seeds: [1, 1.0]", r"seeds: expected an integer, got 1.0"),  # not silently 1
    ("seeds: [1, true]", r"seeds: expected an integer, got True"),
    ("seeds: [0, '0']", r"'seeds' lists a value twice: \[0, 0\]"),
    ("seeds: [0]\ngrid: {lr: [1e-4, 0.0001]}", r"grid 'lr' lists a value twice: \[0.0001, 0.0001\]"),
    ("seeds: [0]\nvariants: [multitask, multitask]", r"'variants' lists a value twice"),
])
def test_a_sweep_that_would_run_one_job_twice_is_refused_on_the_typed_values(tmp_path, text, message):
    path = tmp_path / "twice.yaml"
    path.write_text("variants: [multitask]\n" * ("variants" not in text) + text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def test_a_sweep_file_with_a_string_for_a_list_is_refused(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("variants: multitask\nseeds: [0]\n")
    with pytest.raises(ConfigError, match=r"'variants' must be a list, e.g. \[multitask, pals-top\]"):
        load_spec(path)
    path.write_text("variants: [multitask]\nseeds: [0]\nset: [epochs, 2]\n")
    with pytest.raises(ConfigError, match="'set' must be a mapping"):
        load_spec(path)


def test_a_typed_option_in_a_file_and_a_string_option_on_the_command_line_are_the_same_job(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("variants: [pals-top]\nseeds: [0]\noptions: {pal_size: 12}\n")
    from_file = expand(load_spec(path))
    from_cli = expand(load_spec(None, "s", ["pals-top"], [0], options=["pal_size=12"]))
    assert [j.key for j in from_file] == [j.key for j in from_cli]


def test_the_sbatch_script_carries_every_slurm_option(tmp_path):
    from harness.sweeps.executors.slurm import SlurmOptions, sbatch_script

    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps({"name": "study"}))
    script = sbatch_script(jobs_file, [0, 3, 4], SlurmOptions(
        partition="gpu", account="lab", nodes=2, gpus_per_node=4, cpus_per_task=8, mem="64G", time="02:00:00",
        max_running=2, sbatch_args=["--qos=high", "--constraint=a100"]), python="/venv/bin/python")
    for line in ("#SBATCH --job-name=mtl-study", "#SBATCH --array=0,3,4%2", "#SBATCH --nodes=2",
                 "#SBATCH --ntasks-per-node=1", "#SBATCH --partition=gpu", "#SBATCH --account=lab",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64G",
                 "#SBATCH --time=02:00:00", "#SBATCH --requeue", "#SBATCH --signal=TERM@120",
                 "#SBATCH --qos=high", "#SBATCH --constraint=a100"):
        assert line in script.splitlines()
    assert (f'srun --kill-on-bad-exit=1 --cpus-per-task=8 /venv/bin/python -m harness.sweeps.job {jobs_file} '
            '"$SLURM_ARRAY_TASK_ID"') in script


@pytest.mark.parametrize("request_as, line", [("gres", "#SBATCH --gres=gpu:2"),
                                               ("gpus-per-node", "#SBATCH --gpus-per-node=2")])
def test_gpus_per_job_are_asked_per_node_with_the_constraint_and_the_setup_lines_run_before_the_job(
        tmp_path, request_as, line):
    import yaml

    from harness.sweeps.executors.slurm import SlurmOptions, sbatch_script, slurm_launch_config

    options = SlurmOptions(nodes=2, gpus_per_job=4, gpu_request=request_as, constraint="a100|h100")
    script = sbatch_script(tmp_path / "jobs.json", [0], options, python="/venv/bin/python", name="study",
                           setup=["module load cuda/12.4", "source ~/envs/mtl/bin/activate"]).splitlines()
    assert line in script and "#SBATCH --constraint=a100|h100" in script
    srun = next(i for i, text in enumerate(script) if text.startswith("srun "))
    assert script.index("module load cuda/12.4") < script.index("source ~/envs/mtl/bin/activate") < srun
    assert script.index("set -e") < script.index("module load cuda/12.4")
    # After the setup lines, the python they put on PATH runs the job, not the submitting one.
    assert script[srun].startswith("srun --kill-on-bad-exit=1 python -m harness.sweeps.job ")
    launch = yaml.safe_load(slurm_launch_config(REPO / "launch/ddp.yaml", options, tmp_path / "l.yaml").read_text())
    assert (launch["num_processes"], launch["num_machines"]) == (4, 2)  # one process per GPU
    for bad, message in ((SlurmOptions(gpus_per_job=4, gpus_per_node=2), "give one"),
                         (SlurmOptions(nodes=2, gpus_per_job=3), "not a whole number per node")):
        with pytest.raises(ConfigError, match=message):
            slurm_launch_config(REPO / "launch/ddp.yaml", bad)


def test_a_dry_run_prints_the_batch_script_it_would_submit(tmp_path):
    sweep = tmp_path / "gpu.yaml"
    sweep.write_text("name: gpu-study\nvariants: [multitask, pals-top]\nseeds: [0, 1]\n"
                     "setup: ['module load cuda/12.4']\nlaunch_config: " + str(REPO / "launch/ddp.yaml") + "\n")
    result = run_cli("sweep", str(sweep), "--executor", "slurm", "--gpus-per-job", "4", "--partition", "gpu",
                     "--constraint", "a100", "--setup", "export NCCL_DEBUG=WARN", "--dry-run", cwd=tmp_path,
                     timeout=120, one_thread=False)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout.splitlines()
    start = next(i for i, text in enumerate(out) if text.startswith("--- ") and text.endswith("(sbatch --parsable)"))
    script = out[start + 1:out.index("---", start)]
    assert script[0] == "#!/bin/bash"
    for line in ("#SBATCH --job-name=mtl-gpu-study", "#SBATCH --array=0,1,2,3", "#SBATCH --partition=gpu",
                 "#SBATCH --gres=gpu:4", "#SBATCH --constraint=a100", "module load cuda/12.4",
                 "export NCCL_DEBUG=WARN"):
        assert line in script
    assert not (tmp_path / "outputs").exists()  # nothing written, nothing submitted


def test_a_multi_node_job_launches_nodes_x_gpus_processes_with_its_rank_from_slurm(tmp_path, monkeypatch):
    import yaml

    from harness.sweeps import job as job_runner
    from harness.sweeps.executors.slurm import SlurmOptions, slurm_launch_config
    from harness.sweeps.spec import Job

    launch = slurm_launch_config(REPO / "launch/ddp.yaml", SlurmOptions(nodes=2, gpus_per_node=4),
                                 tmp_path / "launch.yaml")
    config = yaml.safe_load(launch.read_text())
    assert (config["num_processes"], config["num_machines"], config["distributed_type"]) == (8, 2, "MULTI_GPU")
    zero = yaml.safe_load(slurm_launch_config(REPO / "launch/zero2.yaml", SlurmOptions(gpus_per_node=2),
                                              tmp_path / "zero.yaml").read_text())
    assert Path(zero["deepspeed_config"]["deepspeed_config_file"]) == REPO / "launch/ds_zero2.json"
    with pytest.raises(ConfigError, match="runs one process .* asks for 8: use launch/ddp.yaml"):
        slurm_launch_config(REPO / "launch/single.yaml", SlurmOptions(nodes=2, gpus_per_node=4))

    from harness.sweeps.executors import slurm

    monkeypatch.setenv("SLURM_NNODES", "2")
    monkeypatch.setenv("SLURM_NODEID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "123450")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "6")
    monkeypatch.setenv("SLURM_CPUS_ON_NODE", "8")
    monkeypatch.setattr(slurm, "_main_host", lambda: "node017")
    place = slurm.SlurmExecutor.placement()
    assert (place.cpus, place.tags) == (8, {"slurm.job_id": "123450_6"})  # recorded on the run as a tag
    job = Job(0, "abc", "multitask", "multitask", 0, {"epochs": 2, "length_grouping": False}, {})
    meta = {"launch_config": str(launch), "parent_run_id": "p", "name": "study"}
    command = job_runner.job_command(tmp_path / "jobs.json", job, meta, tmp_path / "run", place)
    text = " ".join(command)
    assert f"--config_file {launch}" in text and f"--launch-config {launch}" in text
    assert "--num_machines 2 --machine_rank 1 --main_process_ip node017" in text
    assert "--main_process_port 23456" in text  # 20000 + job id % 20000: the same on every node of the job
    assert f"--config {tmp_path / 'jobs' / 'abc' / 'config.json'}" in text and f"--resume {tmp_path / 'run'}" in text


def test_each_job_of_several_processes_gets_a_rendezvous_port_of_its_own(tmp_path):
    """Jobs run side by side on one machine (--parallel) must not meet on accelerate's default port
    29500: a multi-process job gets 29501 + its index (Placement.port's default), unless its executor
    gives one; a one-process job needs none. --resume only where the job has a checkpoint."""
    from harness.sweeps import job as job_runner
    from harness.sweeps.executors import Placement
    from harness.sweeps.spec import Job

    def command(launch, index, place=Placement(), resume=None):
        job = Job(index, f"key{index}", "multitask", "multitask", 0, {}, {})
        return job_runner.job_command(tmp_path / "jobs.json", job, {"launch_config": str(REPO / launch)}, resume,
                                      place)

    def port(launch, index, place=Placement()):
        line = command(launch, index, place)
        return line[line.index("--main_process_port") + 1] if "--main_process_port" in line else None

    assert [port("launch/cpu-ddp.yaml", i) for i in (0, 1, 2)] == ["29501", "29502", "29503"]
    assert port("launch/cpu-ddp.yaml", 1, Placement(port=23456)) == "23456"
    assert port("launch/single.yaml", 0) is None  # one process: no rendezvous
    # One process runs the harness itself: accelerate's one-process launcher would kill it 5 s after a
    # SIGTERM (a SLURM preemption reaches every process of the job), before its checkpoint is written.
    assert command("launch/single.yaml", 0)[:4] == [sys.executable, "-m", "harness.cli", "train"]
    assert command("launch/cpu-ddp.yaml", 0)[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    assert "accelerate.commands.launch" in command("launch/single.yaml", 0, Placement(machines=2, main_host="h"))
    assert "--resume" not in command("launch/single.yaml", 0)
    assert command("launch/single.yaml", 0, resume=tmp_path / "run")[-2:] == ["--resume", str(tmp_path / "run")]


@pytest.mark.parametrize("parallel", [1, 2])
def test_parallel_local_jobs_share_the_cpus_among_all_their_training_processes(tmp_path, monkeypatch, parallel):
    """--parallel N on a machine of which this process may use 16 CPUs (of a host's 64): each job
    gets 16 / N of them, split among its training processes (OMP_NUM_THREADS), so that N jobs of
    2 processes each do not run 2 x 16 threads; a user's own OMP_NUM_THREADS is kept."""
    from harness.sweeps import job as job_runner
    from harness.sweeps.executors import local
    from harness.sweeps.spec import Job

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    envs = []

    def run(command, **kwargs):  # the job runner's process, as the executor starts it
        envs.append(dict(kwargs.get("env") or os.environ))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(local.subprocess, "run", run)
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps({"spec": {}}))
    jobs = [Job(i, f"key{i}", "multitask", "multitask", 0, {}, {}) for i in range(2)]
    executor = local.LocalExecutor(parallel)
    executor.submit(jobs_file, jobs, lambda *_: None)
    executor.wait()
    assert len(envs) == 2
    for env in envs:
        for launch, processes in (("launch/single.yaml", 1), ("launch/cpu-ddp.yaml", 2)):
            with monkeypatch.context() as inside:  # in the job runner's process
                for name, value in env.items():
                    inside.setenv(name, value)
                place = local.LocalExecutor.placement()
                threads = job_runner.job_environment({"launch_config": str(REPO / launch)}, place, env)
            assert threads["OMP_NUM_THREADS"] == str(16 // parallel // processes), (parallel, launch)
            kept = job_runner.job_environment({"launch_config": str(REPO / launch)}, place,
                                              {**env, "OMP_NUM_THREADS": "3"})
            assert kept["OMP_NUM_THREADS"] == "3"


def test_a_job_runs_from_its_config_file_which_holds_its_settings_options_and_place_in_the_sweep(tmp_path):
    """The job's resolved config travels as JSON, read back by `train --config` into the same config."""
    import argparse

    from harness.cli import _add_config_flags, config_from_args
    from harness.core.config import read_config, resolve_config
    from harness.sweeps.files import job_config_path, write_jobs_file

    spec = load_spec(None, "s", ["pals-top"], [3], settings=["epochs=2", "length_grouping=false", "lr=3e-5"],
                     options=["pal_size=12"])
    (job,) = expand(spec)
    jobs_file = write_jobs_file(tmp_path, spec, [job], "parent-id", "sqlite:///x.db", "exp")
    saved = json.loads(job_config_path(jobs_file, job).read_text())
    assert (saved["epochs"], saved["length_grouping"], saved["lr"], saved["seed"]) == (2, False, 3e-5, 3)
    assert saved["variant_options"] == {"pal_size": "12"}
    assert (saved["parent_run_id"], saved["sweep_id"], saved["sweep_job"], saved["sweep_label"]) == (
        "parent-id", "s", job.key, "pals-top")
    assert saved["output_dir"] == str(tmp_path / "jobs" / job.key) and saved["progress"] is False

    parser = argparse.ArgumentParser()
    _add_config_flags(parser)
    from_file = config_from_args(parser.parse_args(["--config", str(job_config_path(jobs_file, job))]))
    assert from_file == resolve_config(read_config(job_config_path(jobs_file, job)))
    assert (from_file.variant, from_file.epochs, from_file.variant_options) == ("pals-top", 2, {"pal_size": "12"})
    # A flag beside the file replaces the file's value; the rest stays.
    flagged = config_from_args(parser.parse_args(["--config", str(job_config_path(jobs_file, job)), "--epochs", "5",
                                                  "-o", "pal_heads=2"]))
    assert (flagged.epochs, flagged.lr, flagged.variant_options) == (5, 3e-5, {"pal_size": "12", "pal_heads": "2"})

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"epochs": "many"}))
    with pytest.raises(ConfigError, match=f"config file {bad}: epochs: expected an integer, got 'many'"):
        read_config(bad)
    bad.write_text(json.dumps({"epoch": 2}))
    with pytest.raises(ConfigError, match=f"config file {bad}: 'epoch': not a setting"):
        read_config(bad)


def test_an_executor_is_one_class_the_sweep_command_and_run_sweep_use_without_knowing_it(tmp_path, monkeypatch):
    """A new executor needs no change elsewhere: registered, it is an --executor choice with its own
    options, and run_sweep drives it through check, active, submit and wait."""
    from harness.cli import build_parser
    from harness.sweeps import Executor, executors, run_sweep
    from harness.sweeps.executors import register_executor

    monkeypatch.setattr(executors, "_EXECUTORS", dict(executors._EXECUTORS))  # registered for this test only
    calls = []

    @register_executor
    class RecordingExecutor(Executor):
        name = "recording"
        description = "records what it is asked to do"
        detaches = True

        @classmethod
        def add_arguments(cls, group):
            group.add_argument("--queue-name", default="q1")

        @classmethod
        def from_args(cls, args):
            return cls(args.queue_name)

        def __init__(self, queue_name: str = "q1"):
            self.queue_name = queue_name

        def check(self, spec):
            calls.append(("check", spec.name))

        def active(self, folder):
            calls.append(("active", folder.name))
            return set()

        def submit(self, jobs_file, jobs, report):
            calls.append(("submit", self.queue_name, [j.run_name for j in jobs], jobs_file.is_file()))
            return f"queued {len(jobs)} on {self.queue_name}"

        def wait(self):
            calls.append(("wait",))

    sweep = build_parser()._subparsers._group_actions[0].choices["sweep"]
    args = sweep.parse_args(["--name", "x", "--variants", "multitask", "--seeds", "0", "--executor", "recording",
                             "--queue-name", "gpu-long"])
    assert args.executor == "recording" and RecordingExecutor.from_args(args).queue_name == "gpu-long"

    monkeypatch.chdir(tmp_path)
    (tmp_path / "launch").mkdir()
    (tmp_path / "launch" / "single.yaml").write_text((REPO / "launch" / "single.yaml").read_text())
    spec = load_spec(None, "x", ["multitask", "pals-top"], [0], settings=[f"output_dir={tmp_path / 'out'}"])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'm.db'}")
    lines = []
    states = run_sweep(spec, RecordingExecutor("gpu-long"), wait=False, out=lines.append)
    assert calls == [("check", "x"), ("active", "x"), ("submit", "gpu-long", ["multitask_s0", "pals-top_s0"], True)]
    assert "queued 2 on gpu-long" in lines and set(states.values()) == {"MISSING"}  # queued, not run: no wait
    jobs = json.loads((tmp_path / "out" / "sweeps" / "x" / "jobs.json").read_text())
    assert jobs["executor"] == "recording"  # what the job runner asks for the job's placement


def test_a_variant_can_have_its_own_grid(tmp_path):
    path = tmp_path / "grids.yaml"
    path.write_text("variants: [multitask, pals-top]\nseeds: [0, 1]\ngrid: {lr: [1e-5, 3e-5]}\n"
                    "variant_grid: {pals-top: {lr: [1e-4, 3e-4, 1e-3]}}\n")
    jobs = expand(load_spec(path))
    points = {(j.variant, j.settings["lr"]) for j in jobs}
    assert points == {("multitask", 1e-5), ("multitask", 3e-5), ("pals-top", 1e-4), ("pals-top", 3e-4),
                      ("pals-top", 1e-3)}
    assert len(jobs) == 10 and len({j.key for j in jobs}) == 10
    assert {j.label for j in jobs if j.variant == "pals-top"} == {"pals-top lr=0.0001", "pals-top lr=0.0003",
                                                                  "pals-top lr=0.001"}
    for text, message in [
        ("variants: [multitask]\nseeds: [0]\nvariant_grid: {lora: {lr: [1e-3]}}",
         "variant_grid names 'lora', which is not one of the sweep's variants"),
        ("variants: [multitask]\nseeds: [0]\nset: {lr: 1e-4}\nvariant_grid: {multitask: {lr: [1e-3]}}",
         r"\['lr'\] both set for every job and varied in the grid"),
        ("variants: [multitask]\nseeds: [0]\nvariant_grid: {multitask: {lr: [1e-3, 0.001]}}",
         "variant_grid 'multitask' 'lr' lists a value twice"),
        ("variants: [multitask]\nseeds: [0]\nvariant_grid: {multitask: [1e-3]}",
         "variant_grid 'multitask' must be a mapping"),
    ]:
        path.write_text(text + "\n")
        with pytest.raises(ConfigError, match=message):
            load_spec(path)


def test_a_variant_grid_replaces_only_the_settings_it_names_and_keeps_the_rest_of_the_grid(tmp_path):
    """The shared grid and the variant's own name different settings: the variant gets both (its
    own values for what it names, the shared values for the rest), so its labels still carry the
    shared settings and pair with the other variants' at the same values."""
    path = tmp_path / "merge.yaml"
    path.write_text("variants: [multitask, lora]\nseeds: [0]\ngrid: {lr: [1e-5, 3e-5], batch_size: [8, 16]}\n"
                    "variant_grid: {lora: {lr: [1e-4], freeze_encoder: [true, false]}}\n")
    jobs = expand(load_spec(path))
    lora = {(j.settings.get("lr"), j.settings.get("batch_size"), j.settings.get("freeze_encoder")) for j in jobs
            if j.variant == "lora"}
    assert lora == {(1e-4, b, f) for b in (8, 16) for f in (True, False)}  # its lr, the grid's batch_size
    assert {(j.settings["lr"], j.settings["batch_size"]) for j in jobs if j.variant == "multitask"} == {
        (lr, b) for lr in (1e-5, 3e-5) for b in (8, 16)}
    assert all("freeze_encoder" not in j.label for j in jobs if j.variant == "multitask")
    assert "lora batch_size=16 freeze_encoder=True lr=0.0001" in {j.label for j in jobs}

    # The shipped confirmation sweep: lora's grid adds freeze_encoder to the shared lr, which every
    # job (lora's too) trains at and carries in its label, as the baseline's does.
    confirm = expand(load_spec(REPO / "launch" / "sweeps" / "peft-quick-confirm.yaml"))
    assert {j.settings.get("lr") for j in confirm} == {1e-4}
    labels = {j.variant: j.label for j in confirm}
    assert labels["multitask"] == "multitask lr=0.0001"
    assert labels["lora"] == "lora freeze_encoder=False lr=0.0001"
    assert all(j.settings.get("freeze_encoder") is False for j in confirm if j.variant == "lora")


@pytest.mark.slow
def test_a_grid_sweep_with_a_validation_split_is_compared_at_each_variants_best_point(
        tmp_path, tiny_bert, small_data, tracking_uri):
    """End to end: a sweep file with a per-variant grid, trained with --validation-fraction, then
    `compare --select-best-by validation`: one row per variant, dev of the point validation chose."""
    sweep_file = tmp_path / "fair.yaml"
    sweep_file.write_text("name: fair\nvariants: [multitask, pals-top]\nseeds: [0]\n"
                          "set: {validation_fraction: 0.25}\ngrid: {lr: [1e-4, 1e-3]}\n"
                          "variant_grid: {pals-top: {lr: [3e-4, 3e-3]}}\noptions: {pal_size: 12}\n")
    result = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, str(sweep_file))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    _, children = child_runs(tracking_uri, "fair")
    assert sorted(r.data.tags["sweep.label"] for r in children) == [
        "multitask lr=0.0001", "multitask lr=0.001", "pals-top lr=0.0003", "pals-top lr=0.003"]
    out = tmp_path / "compare"
    rows = compare(sweep="fair", tracking_uri=tracking_uri, out_dir=str(out), resamples=100, out=lambda *_: None,
                   select_best_by="validation")
    assert [r.variant for r in rows] == ["multitask", "pals-top"]
    for row in rows:
        runs = [r for r in children if r.data.tags["variant"] == row.variant]
        best = max(runs, key=lambda r: r.data.metrics["val/overall"])
        assert row.overall.mean == pytest.approx(best.data.metrics["dev/overall"])
        (point,) = parse_label(best.data.tags["sweep.label"]).tokens
        assert f"| {row.variant} | 0 | {point} | {best.data.metrics['val/overall']:.4f} | 2 |" in (
            out / "compare.md").read_text()


def test_a_variant_option_in_the_grid_varies_the_jobs_of_the_variants_that_have_it(tmp_path):
    """`--grid variant.rank=4,8,16`: lora's jobs vary its rank (typed as LoRAConfig types it, in the
    job's options and its label); multitask has no rank, so its jobs do not vary it."""
    spec = load_spec(None, "s", ["multitask", "lora"], [0, 1], grid=["variant.rank=4,8,16", "lr=1e-4"])
    assert spec.grid["variant.rank"] == [4, 8, 16]
    jobs = expand(spec)
    assert len(jobs) == (1 + 3) * 2 and len({j.key for j in jobs}) == len(jobs)
    assert {j.label for j in jobs} == {"multitask lr=0.0001", "lora lr=0.0001 variant.rank=4",
                                       "lora lr=0.0001 variant.rank=8", "lora lr=0.0001 variant.rank=16"}
    for job in jobs:
        assert job.settings == {"lr": 1e-4}  # an option is not a training setting
        if job.variant == "lora":
            assert type(job.options["rank"]) is int and f"variant.rank={job.options['rank']}" in job.label
        else:
            assert job.options == {}
    # Typed: rank 8 from a file (an int) and from the command line (a string) is the same job.
    path = tmp_path / "rank.yaml"
    path.write_text("name: s\nvariants: [lora]\nseeds: [0, 1]\ngrid: {lr: [1e-4], variant.rank: [8]}\n")
    assert {j.key for j in jobs if j.label.endswith("rank=8")} == {j.key for j in expand(load_spec(path))}


def test_a_variant_grid_varies_its_variants_options_next_to_the_shared_grid(tmp_path):
    path = tmp_path / "options.yaml"
    path.write_text("variants: [multitask, pals-top, lora]\nseeds: [0]\noptions: {pal_size: 12, pal_heads: 2}\n"
                    "grid: {lr: [1e-4, 1e-3]}\nvariant_grid:\n"
                    "  pals-top: {variant.top_mode: [bert-layer, pals-code], variant.top_heads: [2]}\n"
                    "  lora: {variant.sites: [[query, value], [query, key, value]]}\n")
    jobs = expand(load_spec(path))
    pals = [j for j in jobs if j.variant == "pals-top"]
    assert {j.label for j in pals} == {f"pals-top lr={lr} variant.top_heads=2 variant.top_mode={mode}"
                                       for lr in (0.0001, 0.001) for mode in ("bert-layer", "pals-code")}
    assert all(j.options == {"pal_size": 12, "pal_heads": 2, "top_heads": 2,
                             "top_mode": parse_label(j.label).values["variant.top_mode"]} for j in pals)
    lora = [j for j in jobs if j.variant == "lora"]  # a list option: one label token, its items joined
    assert {j.label for j in lora} == {f"lora lr={lr} variant.sites={sites}" for lr in (0.0001, 0.001)
                                       for sites in ("query,value", "query,key,value")}
    assert {j.options["sites"] for j in lora} == {("query", "value"), ("query", "key", "value")}
    assert {j.label for j in jobs if j.variant == "multitask"} == {"multitask lr=0.0001", "multitask lr=0.001"}
    assert len({j.key for j in jobs}) == len(jobs) == 2 + 4 + 4


@pytest.mark.parametrize("text, message", [
    ("variants: [lora]\nvariant_grid: {lora: {variant.rnak: [4]}}",
     "variant_grid 'lora' 'variant.rnak': variant 'lora' has no option 'rnak'; its options: tasks, rank, alpha, "
     "dropout, sites"),
    ("variants: [multitask, lora]\nvariant_grid: {multitask: {variant.rank: [4]}}",
     "variant_grid 'multitask' 'variant.rank': variant 'multitask' has no option 'rank'; its options: tasks"),
    ("variants: [multitask, lora]\ngrid: {variant.pal_size: [12]}",
     "grid 'variant.pal_size': none of the variants ['multitask', 'lora'] has an option 'pal_size'; their "
     "options: multitask: tasks; lora: tasks, rank, alpha, dropout, sites"),
    ("variants: [multitask, lora]\ngrid: {variant.rank: [4, x]}",
     "grid 'variant.rank': variant 'lora' option 'rank': expected an integer, got 'x'"),
    ("variants: [lora]\nvariant_grid: {lora: {variant.rank: [4.5]}}",
     "variant_grid 'lora' 'variant.rank': variant 'lora' option 'rank': expected an integer, got 4.5"),
    ("variants: [pals-top, combined]\ngrid: {variant.top: [true, maybe]}",
     "grid 'variant.top': variants ['pals-top', 'combined'] option 'top': expected true or false, got 'maybe'"),
    ("variants: [lora]\ngrid: {variant.rank: [8, '8']}", "grid 'variant.rank' lists a value twice: [8, 8]"),
    ("variants: [lora]\noptions: {rank: 8}\ngrid: {variant.rank: [4, 16]}",
     "['variant.rank'] both set for every job and varied in the grid"),
    ("variants: [multitask, lora]\ngrid: {rank: [4, 16]}",
     "grid 'rank': not a training setting but an option of ['lora']: vary it as variant.rank"),
])
def test_a_variant_option_a_sweep_cannot_vary_is_refused_naming_the_variant_option_and_what_was_expected(
        tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"seeds: [0]\n{text}\n")
    with pytest.raises(ConfigError) as error:
        load_spec(path)
    assert message in str(error.value)
    assert f"sweep file {path}: " in str(error.value)


def test_a_variant_options_value_its_variant_refuses_is_refused_before_anything_runs():
    with pytest.raises(ConfigError) as error:
        expand(load_spec(None, "s", ["pals-top"], [0], grid=["variant.top_mode=bert-layer,pals-cod"]))
    assert ("job pals-top variant.top_mode=pals-cod seed 0: variant 'pals-top': top_mode: 'pals-cod' is not one of "
            "['bert-layer', 'pals-code',") in str(error.value)


def test_the_sweeps_parent_run_records_its_grid_of_variant_options(tmp_path, tracking_uri):
    from harness.sweeps.records import parent_run

    path = tmp_path / "options.yaml"
    path.write_text("variants: [lora, pals-top]\nseeds: [0]\ngrid: {variant.rank: [4, 8]}\n"
                    "variant_grid: {pals-top: {variant.top_mode: [bert-layer, pals-code]}}\n")
    spec = load_spec(path)
    client = MlflowClient(tracking_uri)
    run_id = parent_run(client, client.create_experiment("options"), spec, len(expand(spec)), "local")
    params = client.get_run(run_id).data.params
    assert params["grid.variant.rank"] == "4,8"
    assert params["grid.pals-top.variant.top_mode"] == "bert-layer,pals-code"


def test_every_shipped_sweep_file_expands_and_lora_rank_varies_the_rank():
    from harness.sweeps.search import Search

    files = sorted((REPO / "launch" / "sweeps").glob("*.yaml"))
    assert REPO / "launch" / "sweeps" / "lora-rank.yaml" in files
    for path in files:
        spec = load_spec(path)
        jobs = expand(spec)
        assert jobs, path
        if spec.search:
            Search(spec, jobs, [])  # its space checked as jobs
    jobs = expand(load_spec(REPO / "launch" / "sweeps" / "lora-rank.yaml"))
    assert [(j.label, j.options, j.settings["freeze_encoder"], j.settings["validation_fraction"]) for j in jobs] == [
        (f"lora variant.rank={r}", {"rank": r}, True, 0.1) for r in (4, 8, 16)]


def test_an_option_the_variants_type_differently_or_a_mapping_option_is_refused_in_the_shared_grid(monkeypatch):
    """No in-tree variants disagree on an option's type, so the types are stood in for here."""
    from harness.sweeps import spec as spec_module

    types = {"multitask": {"tasks": tuple[str, ...], "size": int, "extra": dict},
             "lora": {"tasks": tuple[str, ...], "size": str}}
    monkeypatch.setattr(spec_module, "_option_types", lambda variants: {v: types[v] for v in variants})
    with pytest.raises(ConfigError, match=r"grid 'variant.size': the variants give option 'size' different "
                                          r"types \(multitask: <class 'int'>, lora: <class 'str'>\); vary it in "
                                          "variant_grid"):
        load_spec(None, "s", ["multitask", "lora"], [0], grid=["variant.size=1,2"])
    assert load_spec(None, "s", ["lora"], [0], grid=["variant.size=1,2"]).grid["variant.size"] == ["1", "2"]
    with pytest.raises(ConfigError, match="grid 'variant.extra': option 'extra' is a mapping, not a value a sweep"):
        load_spec(None, "s", ["multitask"], [0], grid=["variant.extra=1"])


def test_a_label_is_built_and_read_back_in_one_place():
    """harness/sweeps/labels.py: the variant, then setting=value tokens (a list joined by commas);
    the parser gives back the variant and the values as the label shows them."""
    from harness.sweeps.labels import extend_label, make_label

    label = make_label("lora", {"freeze_encoder": True, "lr": 0.001, "variant.sites": ["query", "value"]})
    assert label == "lora freeze_encoder=True lr=0.001 variant.sites=query,value"
    parsed = parse_label(label)
    assert parsed.variant == "lora" and str(parsed) == label
    assert parsed.values == {"freeze_encoder": "True", "lr": "0.001", "variant.sites": "query,value"}
    assert str(parsed.keeping({"lr"})) == "lora lr=0.001"
    assert extend_label("lora lr=0.001", {"variant.rank": 12}) == "lora lr=0.001 variant.rank=12"
    assert make_label("multitask") == "multitask" and parse_label("multitask").grid == []
    assert {j.label for j in expand(load_spec(None, "s", ["multitask"], [0], grid=["lr=1e-4,1e-3"]))} == {
        make_label("multitask", {"lr": 0.0001}), make_label("multitask", {"lr": 0.001})}
