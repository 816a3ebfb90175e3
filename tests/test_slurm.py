"""Sweeps on a real SLURM: a single-node cluster (slurmctld, slurmd, slurmdbd + MariaDB, munge) on
this machine, started by launch/slurm/start-local-cluster.sh. Needs Debian's slurm-wlm, munge, slurmdbd and
mariadb-server, which the start script installs (launch/slurm/install-packages.sh) when they are
missing and it runs as root; elsewhere these tests fail with its message saying what to install
and how to leave them out (-m "not slurm"), instead of being skipped.
"""
import os
import subprocess
import time

import pytest
from conftest import REPO
from mlflow.tracking import MlflowClient

from harness.sweeps import load_spec, run_sweep
from harness.sweeps.executors.slurm import SlurmExecutor, SlurmOptions

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.xdist_group("slurm")]  # one cluster per machine


@pytest.fixture(scope="module")
def slurm_cluster():
    import shutil
    import tempfile
    from pathlib import Path

    from filelock import FileLock

    # One test cluster per machine (fixed ports): a second instance of this fixture, on another
    # worker or in another test run, waits until the first has stopped its cluster.
    machine_lock = FileLock(os.path.join(tempfile.gettempdir(), "mtl-bench-slurm-cluster.lock"))
    machine_lock.acquire(timeout=1800)
    # Not under pytest's tmp folder: that is private to root, and MariaDB runs as user mysql.
    folder = Path(tempfile.mkdtemp(prefix="mtl-bench-slurm-"))
    folder.chmod(0o755)
    env = {**os.environ, "SLURM_CI_DIR": str(folder)}
    started = subprocess.run(["bash", str(REPO / "launch/slurm/start-local-cluster.sh")], env=env,
                             capture_output=True, text=True, timeout=600)
    if started.returncode != 0:
        machine_lock.release()
    assert started.returncode == 0, f"the test SLURM cluster did not start:\n{started.stdout}\n{started.stderr}"
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(folder / "slurm.conf")
    yield folder
    subprocess.run(["bash", str(REPO / "launch/slurm/stop-local-cluster.sh")], env=env, timeout=120)
    shutil.rmtree(folder, ignore_errors=True)
    machine_lock.release()
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def spec(tmp_path, tiny_bert, small_data, tracking_uri, name, variants, seeds, steps=3, checkpoint_every=0,
         setup=()):
    return load_spec(None, name, variants, seeds, setup=list(setup), settings=[
        f"model={tiny_bert}", f"data_dir={small_data}", f"tracking_uri={tracking_uri}",
        f"output_dir={tmp_path / 'outputs'}", "epochs=2", f"batches_per_epoch={steps}", "batch_size=4",
        "max_length=32", f"checkpoint_every={checkpoint_every}"],
        options=["pal_size=12"] if "pals-top" in variants else [],
        launch_config=str(REPO / "launch/single.yaml"))


def sweep_runs(tracking_uri, name):
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`sweep.id` = '{name}'")
    children = [r for r in runs if r.data.tags.get("sweep.role") != "sweep"]
    by_job = {r.data.tags["sweep.job"]: r for r in children}
    assert len(by_job) == len(children), "a job has more than one MLflow run"
    return [r for r in runs if r.data.tags.get("sweep.role") == "sweep"], by_job


def sacct_states(job_id: str) -> dict[str, str]:
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "JobID,State"], capture_output=True,
                         text=True, check=True).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if line)


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def running_task(tmp_path, name):
    """The array task id (e.g. 12_0) of a running job that has written a checkpoint."""
    checkpoints = list((tmp_path / "outputs" / "sweeps" / name / "jobs").glob("*/*/checkpoints/*/loop_state.json"))
    out = subprocess.run(["squeue", "-h", "-r", "-t", "R", "-o", "%i"], capture_output=True, text=True).stdout.split()
    return out[0] if checkpoints and out else None


def test_a_sweep_on_slurm_finishes_every_job_as_a_child_run_with_metrics(slurm_cluster, tmp_path, tiny_bert,
                                                                          small_data, tracking_uri):
    # A setup line, run before each job in its batch script: the training records what it exported
    # (its torch_threads tag; otherwise the job gives it the CPUs SLURM allotted, 1 here).
    sweep = spec(tmp_path, tiny_bert, small_data, tracking_uri, "slurm-sweep", ["multitask", "pals-top"], [0, 1],
                 setup=["export OMP_NUM_THREADS=2"])
    states = run_sweep(sweep, SlurmExecutor(SlurmOptions(time="00:20:00", max_running=2)), wait=True,
                       out=lambda *_: None)
    assert list(states.values()) == ["FINISHED"] * 4
    parents, children = sweep_runs(tracking_uri, "slurm-sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert {(r.data.tags["variant"], r.data.tags["seed"]) for r in children.values()} == {
        (v, s) for v in ("multitask", "pals-top") for s in ("0", "1")}
    array_ids = set()
    for run in children.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert {"dev/overall", "dev/sts/pearson", "time/train_seconds", "params/total"} <= set(run.data.metrics)
        array_ids.add(run.data.tags["slurm.job_id"].split("_")[0])  # ran as a SLURM array task
        assert run.data.tags["torch_threads"] == "2"
    assert len(array_ids) == 1
    assert set(sacct_states(array_ids.pop()).values()) == {"COMPLETED"}
    script = next((tmp_path / "outputs" / "sweeps" / "slurm-sweep").glob("sbatch-*.sh")).read_text()
    assert "#SBATCH --array=0,1,2,3%2" in script and "#SBATCH --requeue" in script


def test_a_cancelled_job_is_completed_by_re_running_the_sweep_from_its_checkpoint(slurm_cluster, tmp_path, tiny_bert,
                                                                                 small_data, tracking_uri):
    sweep = spec(tmp_path, tiny_bert, small_data, tracking_uri, "slurm-cancel", ["multitask"], [0, 1], steps=80,
                 checkpoint_every=5)
    options = SlurmOptions(time="00:20:00", max_running=1)
    run_sweep(sweep, SlurmExecutor(options), wait=False, out=lambda *_: None)
    task = wait_for(lambda: running_task(tmp_path, "slurm-cancel"), 240, "a running job with a checkpoint")
    subprocess.run(["scancel", task], check=True)
    array_id = task.split("_")[0]
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-r", "-j", array_id], capture_output=True,
                                        text=True).stdout.strip(), 300, "the first submission to leave the queue")
    assert sacct_states(array_id)[task].startswith("CANCELLED")
    _, children = sweep_runs(tracking_uri, "slurm-cancel")
    cancelled = [r for r in children.values() if r.data.tags["slurm.job_id"] == task]
    assert len(cancelled) == 1 and cancelled[0].info.status == "KILLED"  # SIGTERM: checkpoint, then stop
    assert cancelled[0].data.tags["stopped/signal"] == "SIGTERM"

    states = run_sweep(sweep, SlurmExecutor(options), wait=True, out=lambda *_: None)
    assert list(states.values()) == ["FINISHED", "FINISHED"]
    parents, after = sweep_runs(tracking_uri, "slurm-cancel")
    assert len(after) == 2 and parents[0].info.status == "FINISHED"
    resumed = after[cancelled[0].data.tags["sweep.job"]]
    assert resumed.info.run_id == cancelled[0].info.run_id  # the same MLflow run, continued
    assert int(resumed.data.tags["resumed_from_step"]) > 0
    assert resumed.data.tags["slurm.job_id"].split("_")[0] != array_id  # by the re-run's submission
    assert "dev/overall" in resumed.data.metrics


def test_a_preempted_job_is_requeued_by_slurm_and_resumes_from_its_checkpoint(slurm_cluster, tmp_path, tiny_bert,
                                                                             small_data, tracking_uri):
    sweep = spec(tmp_path, tiny_bert, small_data, tracking_uri, "slurm-preempt", ["multitask"], [0], steps=80,
                 checkpoint_every=5)
    run_sweep(sweep, SlurmExecutor(SlurmOptions(time="00:20:00")), wait=False, out=lambda *_: None)
    task = wait_for(lambda: running_task(tmp_path, "slurm-preempt"), 240, "a running job with a checkpoint")
    # What a preempting scheduler does with PreemptMode=REQUEUE: stop the job and queue it again.
    subprocess.run(["scontrol", "requeue", task], check=True)
    wait_for(lambda: "PENDING" in subprocess.run(["squeue", "-h", "-r", "-j", task, "-o", "%T"], capture_output=True,
                                                 text=True).stdout, 120, "the requeued job to be pending")
    # A requeued job waits about two minutes before it is eligible; let it start now.
    subprocess.run(["scontrol", "update", f"jobid={task}", "starttime=now"], check=True)
    wait_for(lambda: not subprocess.run(["squeue", "-h", "-r", "-j", task], capture_output=True,
                                        text=True).stdout.strip(), 300, "the requeued job to finish")
    # slurmdbd records the end a moment after squeue forgets the job (seen: RUNNING just after).
    def ended():
        state = sacct_states(task.split("_")[0]).get(task)
        return state if state not in (None, "PENDING", "RUNNING") else None

    state = wait_for(ended, 60, "accounting to record the job's end")
    assert state == "COMPLETED"
    _, children = sweep_runs(tracking_uri, "slurm-preempt")
    (run,) = children.values()  # one run, stopped and continued: not a second one
    assert run.info.status == "FINISHED"
    assert int(run.data.tags["resumed_from_step"]) > 0
    assert "dev/overall" in run.data.metrics
    history = MlflowClient(tracking_uri).get_metric_history(run.info.run_id, "train/lr")
    steps = [m.step for m in history]
    assert sorted(steps) == list(range(1, 161))  # every optimizer step recorded exactly once
