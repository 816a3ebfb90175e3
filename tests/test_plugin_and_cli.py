"""The command line, and a user's variant installed from its own package like any plugin."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

HERE = Path(__file__).resolve().parent


def run_cli(*args, env=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_variants_lists_every_variant_with_a_description(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    for name in ("multitask", "single-task", "embert", "pals-top", "combined"):
        assert name in out
    assert "Two PALs per task" in out


@pytest.mark.parametrize("args,message", [
    (["--variant", "palz"], "unknown variant 'palz'; known variants:"),
    (["--profile", "fast"], "profile: unknown profile 'fast'; known profiles: paper, quick"),
    (["--lr", "0"], "lr: expected a positive learning rate, got 0.0"),
    (["--batch-size", "-2"], "batch_size: expected a positive integer, got -2"),
    (["--grad-accum", "0"], "grad_accum: expected a positive integer, got 0"),
    (["--epochs", "0"], "epochs: expected a positive integer"),
    (["--system-metrics-interval", "-1"],
     "system_metrics_interval: expected seconds >= 0 (0 disables system metrics), got -1.0"),
    (["--system-metrics-interval", "nan"], "system_metrics_interval: expected seconds >= 0"),
    (["--variant", "pals-top", "-o", "pal_size=big"], "option 'pal_size': 'big' is not an integer"),
    (["-o", "novalue"], "expected NAME=VALUE"),
    (["--data-dir", "/nonexistent"], "--data-dir /nonexistent: not a directory"),
    (["--model", "/nonexistent/bert"], "--model /nonexistent/bert: no such folder"),
])
def test_bad_settings_fail_fast_naming_the_field(args, message, capsys):
    # In-process: main() is what the command runs (the subprocess test below covers the process).
    code = main(["train", *args, "--progress", "--tracking-uri", "sqlite:////nonexistent-should-not-be-used.db"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err


def test_a_bad_setting_exits_2_with_one_line_and_no_traceback():
    # A generous timeout only guards against a hang: failing fast means before any model or data loads.
    result = run_cli("train", "--batch-size", "-2", "--tracking-uri", "sqlite:////nonexistent-should-not-be-used.db",
                     timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "mtl-bench: error: batch_size: expected a positive integer, got -2"


def test_a_folder_that_is_not_a_bert_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    result = run_cli("train", "--model", str(tmp_path))
    assert result.returncode == 2
    assert "has model_type 'gpt2' (expected 'bert')" in result.stderr


@pytest.mark.slow
def test_params_prints_every_variant_for_a_random_bert():
    result = run_cli("params", "--random-config", "64,2,4")
    assert result.returncode == 0, result.stderr
    assert "| pals-top-parallel-same |" in result.stdout and "ratio to encoder" in result.stdout


@pytest.mark.slow
def test_out_of_tree_variant_installs_registers_and_trains(tmp_path, tiny_bert, small_data, tracking_uri):
    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                              "--target", str(target), str(HERE / "plugin_example")],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    env = {"PYTHONPATH": os.pathsep.join([str(target), os.environ.get("PYTHONPATH", "")])}
    listed = run_cli("variants", env=env)
    assert "lowrank" in listed.stdout and "rank-r adapter per task" in listed.stdout
    trained = run_cli("train", "--variant", "lowrank", "-o", "rank=4", "-o", "tasks=sst,sts", "--model", str(tiny_bert),
                      "--data-dir", str(small_data), "--epochs", "1", "--batches-per-epoch", "3", "--batch-size", "4",
                      "--max-length", "32", "--no-progress", "--tracking-uri", tracking_uri,
                      "--output-dir", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache"), env=env)
    assert trained.returncode == 0, trained.stderr
    assert "dev/sts/pearson" in trained.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    assert run.data.params["variant"] == "lowrank" and run.data.params["variant.rank"] == "4"
    assert run.data.metrics["params/task_specific/sst"] == 2 * (32 * 4 + 4 + 4 * 32 + 32)
