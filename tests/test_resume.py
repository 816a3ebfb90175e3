"""A resume trains the configuration its run was started with; the commands that read a tracking
store check it first. Fast: no model is loaded (the end-to-end resume is in test_reliability.py)."""
import dataclasses
import json
from pathlib import Path

import pytest

from conftest import free_port
from harness.testing import run_cli
from harness.training.checkpoint import LoopState, resume_changes
from harness.cli import build_parser, config_from_args, main
from harness.core.config import ConfigError, TrainConfig

STARTED = TrainConfig(epochs=2, batches_per_epoch=100, max_length=32, checkpoint_every=10, lr=3e-5,
                      variant="pals-top", variant_options={"pal_size": 48}, tracking_uri="sqlite:////a/mlflow.db")


def a_checkpoint(tmp_path: Path, config: TrainConfig = STARTED) -> Path:
    """A run output folder with a checkpoint's loop_state.json recording `config` as its run's settings."""
    run_dir = tmp_path / "outputs" / "0123abcd"
    folder = run_dir / "checkpoints" / "step-00000010"
    folder.mkdir(parents=True)
    state = LoopState(step=10, run_id="0123abcd", config=dataclasses.asdict(config))
    (folder / "loop_state.json").write_text(json.dumps(dataclasses.asdict(state)))
    return run_dir


def test_a_resume_with_no_flags_takes_every_setting_from_the_checkpoint(tmp_path):
    run_dir = a_checkpoint(tmp_path)
    config = config_from_args(build_parser().parse_args(["train", "--resume", str(run_dir)]))
    assert config == dataclasses.replace(STARTED, resume=str(run_dir))  # not the quick profile's 4 x 150 at 64


def test_a_resume_keeps_the_recorded_variant_options_beside_one_given_again(tmp_path):
    run_dir = a_checkpoint(tmp_path, dataclasses.replace(STARTED, variant_options={"pal_size": 48,
                                                                                   "top_mode": "residual"}))
    config = config_from_args(build_parser().parse_args(["train", "--resume", str(run_dir), "-o", "pal_size=48"]))
    assert config.variant_options == {"pal_size": "48", "top_mode": "residual"}
    recorded = dataclasses.asdict(STARTED) | {"variant_options": {"pal_size": 48, "top_mode": "residual"}}
    assert resume_changes(recorded, dataclasses.asdict(config), run_dir) == {}  # '48' now is the 48 recorded


def test_a_resume_flag_that_would_change_what_is_trained_is_refused_naming_each_setting_and_both_values(
        tmp_path, capsys):
    run_dir = a_checkpoint(tmp_path)
    code = main(["train", "--resume", str(run_dir), "--epochs", "4", "--max-length", "64", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "epochs: 2 when started, 4 now (--epochs)" in err
    assert "max_length: 32 when started, 64 now (--max-length)" in err
    assert "progress" not in err  # a harmless difference is not refused
    # Every refused kind: a budget, the learning rate, a variant option, the variant, the profile.
    for flags, named in ((["--lr", "1e-4"], "lr: 3e-05 when started, 0.0001 now"),
                         (["-o", "pal_size=96"], "variant option pal_size: 48 when started, 96 now (-o pal_size=...)"),
                         (["--variant", "embert"], "variant: 'pals-top' when started, 'embert' now"),
                         (["--profile", "paper"], "profile: 'quick' when started, 'paper' now")):
        assert main(["train", "--resume", str(run_dir), *flags]) == 2
        assert named in capsys.readouterr().err


def test_settings_that_cannot_change_the_result_may_differ_on_resume_and_are_returned_for_the_record(tmp_path):
    recorded = dataclasses.asdict(STARTED)
    given = {**recorded, "resume": "x", "progress": False, "tracking_uri": "http://127.0.0.1:5000",
             "system_metrics_interval": 0.0, "checkpoint_every": 5, "dist_timeout": 60, "keep_checkpoint": True}
    changes = resume_changes(recorded, given, tmp_path)
    assert changes == {"progress": (True, False), "tracking_uri": ("sqlite:////a/mlflow.db", "http://127.0.0.1:5000"),
                       "system_metrics_interval": (10.0, 0.0), "checkpoint_every": (10, 5),
                       "dist_timeout": (600, 60), "keep_checkpoint": (False, True)}
    # The process layout may change (check_resume_layout keeps the examples per step); it is recorded too.
    assert resume_changes(recorded, {**recorded, "batch_size": 8, "launch_config": "launch/cpu-ddp.yaml"},
                          tmp_path) == {"batch_size": (16, 8), "launch_config": ("", "launch/cpu-ddp.yaml")}
    for name, value in (("seed", 1), ("mixed_precision", "bf16"), ("freeze_encoder", True), ("data_dir", "mine"),
                        ("eval_batch_size", 8), ("output_dir", "elsewhere"), ("experiment", "other")):
        with pytest.raises(ConfigError, match=f"{name}: "):
            resume_changes(recorded, {**recorded, name: value}, tmp_path)


def test_train_itself_refuses_a_conflicting_resume_before_loading_anything(tmp_path):
    """`train(config)` called from Python (benchmarks, notebooks) gets the same check as the command."""
    from harness.runs.train import preflight

    run_dir = a_checkpoint(tmp_path)
    with pytest.raises(ConfigError, match="batches_per_epoch: 100 when started, 150 now"):
        preflight(dataclasses.replace(STARTED, resume=str(run_dir), batches_per_epoch=150))


@pytest.mark.parametrize("command", [
    ["evaluate", "0123abcd"],
    ["predict", "0123abcd", "--task", "sst", "a sentence"],
    ["compare", "--experiment", "bert-mtl-bench"],
])
@pytest.mark.parametrize("how", ["flag", "environment"])
def test_commands_that_read_a_tracking_store_say_at_once_that_a_server_is_unreachable(command, how, tmp_path):
    uri = f"http://127.0.0.1:{free_port()}"
    env = {"MLFLOW_TRACKING_URI": None}  # left out of the environment
    if how == "flag":
        command = [*command, "--tracking-uri", uri]
    else:
        env["MLFLOW_TRACKING_URI"] = uri
    # Before, these waited on MLflow's HTTP retries for minutes: the timeout turns a hang into a failure.
    result = run_cli(*command, cwd=tmp_path, env=env, timeout=60, one_thread=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"MLflow tracking server {uri} cannot be reached" in result.stderr
    assert "Traceback" not in result.stderr


def test_replay_checks_the_store_it_sends_to(tmp_path):
    fallback = tmp_path / "tracking-fallback-0123abcd.json"
    uri = f"http://127.0.0.1:{free_port()}"
    fallback.write_text(json.dumps({"tracking_uri": uri, "run_id": "0123abcd", "records": []}))
    result = run_cli("replay", str(fallback), timeout=60, one_thread=False)
    assert result.returncode == 2 and f"MLflow tracking server {uri} cannot be reached" in result.stderr


def test_the_resume_command_repeats_how_the_run_was_launched():
    """After a stop the run prints the command that continues it: the plain command for one process,
    else `accelerate launch` with the launch config and the launcher's flags given over it."""
    from types import SimpleNamespace

    from harness.runs.loop import resume_command

    run = SimpleNamespace(accelerator=SimpleNamespace(num_processes=1), config=SimpleNamespace(launch_config=""),
                          out_dir="outputs/0123abcd", launch_overrides={})
    assert resume_command(run) == "mtl-bench train --resume outputs/0123abcd"
    run.accelerator.num_processes, run.config.launch_config = 2, "launch/ddp.yaml"
    run.launch_overrides = {"world_size": (2, "accelerate launch --num_processes")}
    assert resume_command(run) == ("accelerate launch --config_file launch/ddp.yaml --num_processes 2 -m harness.cli "
                                   "train --resume outputs/0123abcd")
