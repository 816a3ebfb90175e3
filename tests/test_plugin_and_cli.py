"""The command line, and a user's variant installed from its own package like any plugin."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import testing
from harness.cli import main

HERE = Path(__file__).resolve().parent


def run_cli(*args, env=None, timeout=300):
    return testing.run_cli(*args, env=env, timeout=timeout, one_thread=False)


def test_variants_lists_every_variant_with_a_description(capsys):
    assert main(["variants"]) == 0
    out = capsys.readouterr().out
    for name in ("multitask", "single-task", "embert", "pals-top", "combined"):
        assert name in out
    assert "Two PALs per task" in out


@pytest.mark.parametrize("args,message", [
    # Closed sets are argparse choices (listed by --help): the flag, and the closest valid value or all of them.
    (["--variant", "palz"], "argument --variant: invalid choice: 'palz'; did you mean 'pals-top'?"),
    (["--variant", "zzzz"], "argument --variant: invalid choice: 'zzzz'; choose from combined, embert,"),
    (["--profile", "fast"], "argument --profile: invalid choice: 'fast'; choose from paper, quick"),
    (["--sampling", "random"], "argument --sampling: invalid choice: 'random'; choose from annealed,"),
    (["--epochs", "two"], "argument --epochs: expected an integer, got 'two'"),
    (["--lr", "0"], "lr: expected a positive learning rate, got 0.0"),
    (["--scheduler", "polynomial", "--lr", "1e-8"], "'polynomial' schedule decays to transformers' lr_end 1e-7"),
    (["--batch-size", "-2"], "batch_size: expected a positive integer, got -2"),
    (["--grad-accum", "0"], "grad_accum: expected a positive integer, got 0"),
    (["--epochs", "0"], "epochs: expected a positive integer"),
    (["--system-metrics-interval", "-1"],
     "system_metrics_interval: expected seconds >= 0 (0 disables system metrics), got -1.0"),
    (["--system-metrics-interval", "nan"], "system_metrics_interval: expected seconds >= 0"),
    (["--variant", "pals-top", "-o", "pal_size=big"], "option 'pal_size': expected an integer, got 'big'"),
    (["-o", "novalue"], "expected NAME=VALUE"),
    (["--data-dir", "/nonexistent"], "--data-dir /nonexistent: not a directory"),
    (["--model", "/nonexistent/bert"], "--model /nonexistent/bert: no such folder"),
])
def test_bad_settings_fail_fast_naming_the_field(args, message, capsys):
    # In-process: main() is what the command runs (the subprocess test below covers the process).
    try:
        code = main(["train", *args, "--progress", "--tracking-uri", "sqlite:////nonexistent-should-not-be-used.db"])
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert message in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv,message", [
    (["train", "--variant", "pals-tpo"], "mtl-bench train: error: argument --variant: invalid choice: 'pals-tpo'; "
                                         "did you mean 'pals-top'? (see `mtl-bench train --help`)"),
    (["train", "--profile", "quik"], "argument --profile: invalid choice: 'quik'; did you mean 'quick'?"),
    # No prefix matching: an abbreviation is a typo, named with the option it resembles.
    (["train", "--epoch", "1"], "mtl-bench train: error: unrecognized arguments: --epoch (did you mean --epochs?) 1"),
    (["train", "--batch", "4"], "unrecognized arguments: --batch (did you mean --batch-size?) 4"),
    (["trian"], "mtl-bench: error: argument command: invalid choice: 'trian'; did you mean 'train'?"),
    (["compare", "--sweep", "s", "--test", "seed"], "argument --test: invalid choice: 'seed'; did you mean 'seeds'?"),
    (["sweep", "--name", "s", "--executor", "slrum"], "invalid choice: 'slrum'; did you mean 'slurm'?"),
])
def test_a_mistyped_choice_or_option_is_one_line_naming_the_closest_valid_one(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1, err  # no usage dump


def test_every_train_setting_has_help_saying_what_it_does_its_valid_values_and_its_default():
    import argparse
    import dataclasses

    from harness.cli import build_parser
    from harness.core.config import TrainConfig
    from variants import list_variants

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    by_dest = {a.dest: a for a in train._actions}
    formatter = train._get_formatter()
    for f in dataclasses.fields(TrainConfig):
        assert len(f.metadata.get("help", "")) >= 15, f"TrainConfig.{f.name} has no help text"
        action = by_dest["option" if f.name == "variant_options" else f.name]
        text = formatter._expand_help(action)
        assert text.startswith(f.metadata["help"])
        if f.name != "variant_options":
            assert "(default: " in text, f.name
        if f.metadata["choices"]:
            assert tuple(action.choices) == f.metadata["choices"]
            assert "one of: " + ", ".join(f.metadata["choices"]) in text
    variant = by_dest["variant"]
    assert list(variant.choices) == [v.name for v in list_variants()]  # registered variants, plugins included
    assert "one of: " + ", ".join(v.name for v in list_variants()) in formatter._expand_help(variant)
    assert isinstance(by_dest["freeze_encoder"], argparse.BooleanOptionalAction)
    assert all(a.help for a in train._actions), [a.dest for a in train._actions if not a.help]


def test_a_bad_setting_exits_2_with_one_line_and_no_traceback():
    # A generous timeout only guards against a hang: failing fast means before any model or data loads.
    result = run_cli("train", "--batch-size", "-2", "--tracking-uri", "sqlite:////nonexistent-should-not-be-used.db",
                     timeout=120)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "mtl-bench: error: batch_size: expected a positive integer, got -2"


@pytest.mark.parametrize("args, buffered", [(("variants", "--options"), False), (("variants", "--options"), True),
                                           (("tasks",), True), (("--help",), True)])
def test_output_into_a_pipe_its_reader_closed_ends_quietly(args, buffered):
    """`mtl-bench variants --options | head`, the reader gone before the command writes: no traceback
    and no "Exception ignored" from the flush at exit, whether each print is written at once or at exit."""
    read, write = os.pipe()
    os.close(read)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"} | ({} if buffered else
                                                                               {"PYTHONUNBUFFERED": "1"})
    result = subprocess.run([sys.executable, "-m", "harness.cli", *args], stdout=write, stderr=subprocess.PIPE,
                            text=True, env=env, timeout=300)
    os.close(write)
    assert result.stderr == "" and result.returncode == 1, (result.returncode, result.stderr)


def test_a_command_piped_into_head_exits_quietly_when_head_has_its_line():
    """`mtl-bench sweep ... --dry-run | head -1`: the job list (about 20 KB) is more than the pipe holds
    (one page) and the reader takes one read, so the command is still writing when the pipe closes."""
    import fcntl

    read, write = os.pipe()
    fcntl.fcntl(write, getattr(fcntl, "F_SETPIPE_SZ", 1031), 4096)
    seeds = ",".join(str(seed) for seed in range(600))
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", "sweep", "--name", "s", "--variants",
                                "multitask", "--seeds", seeds, "--dry-run"], stdout=write, stderr=subprocess.PIPE,
                               text=True, env={k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"})
    os.close(write)
    first = os.read(read, 4096)
    os.close(read)
    stderr = process.communicate(timeout=300)[1]
    assert b"\n" in first  # head has its line
    assert stderr == "" and process.returncode == 1, (process.returncode, stderr)


def test_a_folder_that_is_not_a_bert_checkpoint_is_refused(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    result = run_cli("train", "--model", str(tmp_path))
    assert result.returncode == 2
    assert "model_type 'gpt2' is not an encoder" in result.stderr


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
    trained = run_cli("train", "--variant", "lowrank", "-o", "rank=4", "--tasks", "sst,sts", "--model", str(tiny_bert),
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
