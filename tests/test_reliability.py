"""Failures stop cleanly and lose nothing: real signals, a real MLflow server stopped mid-run, real processes."""
import glob
import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, MlflowServer, free_port
from harness.testing import launch_command, run_cli
from harness.testing import start_cli as harness_cli

pytestmark = pytest.mark.slow


def train_args(tiny_bert, small_data, out: Path, tracking_uri: str, *extra: str) -> list[str]:
    return ["train", "--model", str(tiny_bert), "--data-dir", str(small_data), "--max-length", "32", "--batch-size",
            "4", "--no-progress", "--output-dir", str(out / "out"), "--cache-dir", str(out / "cache"),
            "--tracking-uri", tracking_uri, *extra]


def cli(*args, timeout=600):
    return run_cli(*args, timeout=timeout, one_thread=False)


def start_cli(*args):
    return harness_cli(*args, one_thread=False)


def wait_for(pattern: str, process, timeout: float = 300) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = glob.glob(pattern)
        if found:
            return found[0]
        assert process.poll() is None, f"the run ended early:\n{process.stdout.read()[-3000:]}"
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {pattern}")


def the_run(tracking_uri: str):
    client = MlflowClient(tracking_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    return client, run


def recorded_steps(client, run_id) -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, "train/lr"))


def test_an_unreachable_tracking_server_is_reported_before_training(tmp_path, tiny_bert, small_data):
    result = cli(*train_args(tiny_bert, small_data, tmp_path, f"http://127.0.0.1:{free_port()}"), timeout=120)
    assert result.returncode == 2
    assert "MLflow tracking server http://127.0.0.1:" in result.stderr and "cannot be reached" in result.stderr
    assert not (tmp_path / "out").exists()


def test_a_non_finite_loss_stops_the_run_with_a_checkpoint_and_a_failed_mlflow_run(tmp_path, tiny_bert, small_data,
                                                                                   tracking_uri):
    # An absurd learning rate makes the parameters overflow after the first step.
    result = cli(*train_args(tiny_bert, small_data, tmp_path, tracking_uri, "--lr", "1e30", "--epochs", "1",
                             "--batches-per-epoch", "50", "--scheduler", "constant"))
    assert result.returncode == 3, result.stderr[-3000:]
    assert "non-finite loss on task" in result.stderr
    client, run = the_run(tracking_uri)
    assert run.info.status == "FAILED"
    tags = run.data.tags
    assert tags["failure/reason"] == "non-finite loss"
    assert tags["failure/task"] in ("sst", "cfimdb", "quora", "sts")
    step = int(tags["failure/step"])
    assert 1 < step < 50
    state = json.loads((Path(tags["failure/checkpoint"]) / "loop_state.json").read_text())
    assert state["step"] == step - 1
    assert recorded_steps(client, run.info.run_id) == list(range(1, step))


def losses_by_step(client, run_id) -> dict[int, float]:
    return {m.step: m.value for task in ("sst", "cfimdb", "quora", "sts")
            for m in client.get_metric_history(run_id, f"train/loss/{task}")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_bert, small_data):
    """The run the interrupted ones must equal: same settings, never stopped."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    uri = f"sqlite:///{folder / 'mlruns' / 'mlflow.db'}"
    result = cli(*train_args(tiny_bert, small_data, folder, uri, *SIGNAL_RUN))
    assert result.returncode == 0, result.stderr[-3000:]
    client, run = the_run(uri)
    return run, losses_by_step(client, run.info.run_id)


SIGNAL_RUN = ("--epochs", "2", "--batches-per-epoch", "40", "--checkpoint-every", "10", "--lr", "3e-4",
              "--system-metrics-interval", "0")


@pytest.mark.parametrize("sig, resume_flags", [
    (signal.SIGINT, ()),  # the printed command as it is: every setting from the checkpoint
    (signal.SIGTERM, ("--checkpoint-every", "7", "--keep-checkpoint")),  # settings that cannot change the result
])
def test_a_signal_checkpoints_marks_the_run_killed_and_its_resume_trains_what_the_run_started_with(
        sig, resume_flags, tmp_path, tiny_bert, small_data, tracking_uri, uninterrupted):
    args = train_args(tiny_bert, small_data, tmp_path, tracking_uri, *SIGNAL_RUN)
    process = start_cli(*args)
    wait_for(str(tmp_path / "out" / "*" / "checkpoints" / "step-*" / "loop_state.json"), process)
    process.send_signal(sig)
    output, _ = process.communicate(timeout=120)  # stops at the next step boundary; the timeout guards a hang
    assert process.returncode == 128 + sig, output[-3000:]
    client, run = the_run(tracking_uri)
    assert run.info.status == "KILLED"
    stopped = int(run.data.tags["stopped/step"])
    assert stopped < 80
    assert recorded_steps(client, run.info.run_id) == list(range(1, stopped + 1))
    # The user is told the run, its folder and the exact command that continues it.
    (run_dir,) = glob.glob(str(tmp_path / "out" / "*"))
    assert f"stopped by {sig.name} at optimizer step {stopped}" in output
    assert f"MLflow run {run.info.run_id}, output folder {run_dir}." in output
    command = output.split("Resume it with: ")[1].splitlines()[0]
    assert command == f"mtl-bench train --resume {run_dir}"

    # A flag that would change what is trained is refused, and the run is left as it was.
    refused = cli("train", "--resume", run_dir, "--max-length", "64", "--epochs", "3")
    assert refused.returncode == 2
    assert "max_length: 32 when started, 64 now (--max-length)" in refused.stderr
    assert "epochs: 2 when started, 3 now (--epochs)" in refused.stderr
    assert the_run(tracking_uri)[1].info.status == "KILLED"

    resumed = cli(*command.split()[1:], *resume_flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    client, run = the_run(tracking_uri)  # the same, single run
    assert run.info.status == "FINISHED"
    assert recorded_steps(client, run.info.run_id) == list(range(1, 81))
    # What the uninterrupted run trained, step for step.
    whole, whole_losses = uninterrupted
    assert losses_by_step(client, run.info.run_id) == pytest.approx(whole_losses, abs=1e-6)
    for name, value in whole.data.metrics.items():
        if name.startswith("dev/"):
            assert run.data.metrics[name] == pytest.approx(value, abs=1e-6), name
    assert run.data.params["epochs"] == "2" and run.data.params["max_length"] == "32"
    # The artifact config.json is the configuration the run started with.
    (artifact,) = [a for a in client.list_artifacts(run.info.run_id) if a.path == "config.json"]
    saved = json.loads(Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))).read_text())
    assert saved["train"]["epochs"] == 2 and saved["train"]["checkpoint_every"] == 10
    # The stop is in the run's history; the finished run does not look stopped.
    tags = run.data.tags
    assert not [k for k in tags if k.startswith("stopped/")]
    assert tags[f"history/step-{stopped:08d}/stopped"].startswith(sig.name)
    changed = tags[f"history/step-{stopped:08d}/resumed"]
    if resume_flags:
        assert changed == "settings changed: checkpoint_every: 10 -> 7; keep_checkpoint: False -> True"
        assert glob.glob(str(Path(run_dir) / "checkpoints" / "step-*"))  # --keep-checkpoint took effect
    else:
        assert changed == "no setting changed"


@pytest.mark.distributed
def test_a_rank_that_dies_makes_the_other_exit_instead_of_hanging(tmp_path, tiny_bert, small_data, tracking_uri):
    config = "launch/cpu-ddp.yaml"
    command = launch_command(config, train_args(tiny_bert, small_data, tmp_path, tracking_uri, "--epochs", "1",
                                                "--batches-per-epoch", "2000", "--checkpoint-every", "10",
                                                "--dist-timeout", "60")[1:])
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(str(tmp_path / "out" / "*" / "checkpoints" / "step-*" / "loop_state.json"), process)
    ranks = [p for p in psutil.Process(process.pid).children(recursive=True) if "harness.cli" in " ".join(p.cmdline())]
    victim = next(p for p in ranks if p.environ().get("RANK") == "1")
    victim.send_signal(signal.SIGKILL)
    output, _ = process.communicate(timeout=180)  # --dist-timeout 60: a hang would run into this
    assert process.returncode != 0
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks)


def start_run_then_stop_server(server, tmp_path, tiny_bert, small_data, steps: int):
    """Starts a training that records to `server`, and stops the server once its first checkpoint
    is made (at step 10). The run is paused (SIGSTOP) while the server stops, so that it cannot
    finish first whatever the machine's speed."""
    process = start_cli(*train_args(tiny_bert, small_data, tmp_path, server.uri, "--epochs", "1",
                                    "--batches-per-epoch", str(steps), "--checkpoint-every", "10"))
    wait_for(str(tmp_path / "out" / "*" / "checkpoints" / "step-*" / "loop_state.json"), process)
    process.send_signal(signal.SIGSTOP)
    server.stop()
    process.send_signal(signal.SIGCONT)
    return process


def test_a_tracking_server_outage_loses_nothing(tmp_path, tiny_bert, small_data):
    server = MlflowServer(tmp_path / "server").start()
    try:
        # The server stays away until the run has ended.
        process = start_run_then_stop_server(server, tmp_path, tiny_bert, small_data, 30)
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]  # training went on
        assert "unavailable" in output
        (fallback,) = glob.glob(str(tmp_path / "out" / "*" / "tracking-fallback-*.json"))
        server.start()
        replayed = cli("replay", fallback)
        assert replayed.returncode == 0, replayed.stderr[-2000:]
        client, run = the_run(server.uri)
        assert run.info.status == "FINISHED"
        assert recorded_steps(client, run.info.run_id) == list(range(1, 31))
        assert "dev/overall" in run.data.metrics
        assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"config.json", "predictions"}
    finally:
        server.stop()


def test_a_tracking_server_that_comes_back_mid_run_gets_everything(tmp_path, tiny_bert, small_data):
    server = MlflowServer(tmp_path / "server").start()
    try:
        process = start_run_then_stop_server(server, tmp_path, tiny_bert, small_data, 100)
        # Once the run has met the outage (its step-20 checkpoint could not send its records),
        # pause it while the server comes back, so that it comes back mid-run.
        wait_for(str(tmp_path / "out" / "*" / "checkpoints" / "step-00000020" / "loop_state.json"), process)
        process.send_signal(signal.SIGSTOP)
        server.start()
        process.send_signal(signal.SIGCONT)
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        assert "unavailable" in output and "is back" in output
        assert not glob.glob(str(tmp_path / "out" / "*" / "tracking-fallback-*.json"))
        client, run = the_run(server.uri)
        assert run.info.status == "FINISHED"
        assert recorded_steps(client, run.info.run_id) == list(range(1, 101))
    finally:
        server.stop()


def test_concurrent_runs_on_one_local_store_lose_no_run_and_no_metric(tmp_path, tiny_bert, small_data):
    tracking_uri = f"sqlite:///{tmp_path / 'shared' / 'mlflow.db'}"
    processes = [start_cli(*train_args(tiny_bert, small_data, tmp_path / f"job{i}", tracking_uri, "--seed", str(i),
                                       "--epochs", "2", "--batches-per-epoch", "10", "--checkpoint-every", "5"))
                 for i in range(4)]
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    assert sorted(r.data.params["seed"] for r in runs) == ["0", "1", "2", "3"]
    for run in runs:
        assert run.info.status == "FINISHED"
        assert recorded_steps(client, run.info.run_id) == list(range(1, 21))
        assert "dev/overall" in run.data.metrics
