"""Sweeps on a real Ray cluster: a head node of 2 CPUs and 2 GPUs (declared: Ray hands out their ids,
the CPU build of torch never sees them) started on this machine by `ray start --head` for this
module and stopped after it. The sweeps run as `mtl-bench sweep --executor ray --ray-address ...`,
as on a cluster of one's own; the tests at the end need no cluster.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO, free_port
from mlflow.tracking import MlflowClient

from harness.core.config import ConfigError
from harness.sweeps import SweepError, load_spec
from harness.sweeps.executors.ray import JOB_CPUS_ENV, JOB_TAGS_ENV, RayExecutor, job_environment, job_resources

TINY = ["--set", "epochs=1", "--set", "batches_per_epoch=3", "--set", "batch_size=4", "--set", "max_length=32"]


def on_the_cluster(test):
    """Slow, needs Ray, and shares the module's cluster: one xdist worker runs every such test."""
    for mark in (pytest.mark.slow, pytest.mark.ray, pytest.mark.xdist_group("ray")):
        test = mark(test)
    return test


def processes_naming(text: str) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(text in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


@pytest.fixture(scope="module")
def ray_cluster():
    """The head node's address, and the environment that reaches it: a token of the cluster's own
    (Ray's token authentication, as any cluster should have). Its own temp folder (short: Ray's
    socket paths must fit in 107 characters) and ports: it neither meets nor disturbs another Ray."""
    import secrets

    folder = Path(tempfile.mkdtemp(prefix="ray-"))
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    command = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--node-ip-address",
               "127.0.0.1", "--port", str(port), "--num-cpus", "2", "--num-gpus", "2", "--temp-dir", str(folder),
               "--object-store-memory", str(100 * 2**20), "--include-dashboard", "false",
               "--dashboard-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
               "--disable-usage-stats"]
    log = open(folder.with_suffix(".log"), "w")
    # --block: the command lives as long as the cluster and stops every process of it on SIGTERM.
    # SIGINT ignored, as in a cluster started from a background shell (`ray start ... &`): its tasks
    # inherit that, and a sweep must still be able to stop them.
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        deadline = time.time() + 120
        while not (folder / "ray_current_cluster").exists():  # written once the head is up
            assert head.poll() is None and time.time() < deadline, \
                f"ray start did not start:\n{folder.with_suffix('.log').read_text()[-3000:]}"
            time.sleep(0.5)
        yield {"address": f"127.0.0.1:{port}", "env": env}
    finally:
        head.terminate()
        try:
            head.wait(timeout=60)
        finally:
            try:
                os.killpg(head.pid, signal.SIGKILL)  # whatever of its session is still there
            except ProcessLookupError:
                pass
            log.close()
        left = processes_naming(str(folder))
        shutil.rmtree(folder, ignore_errors=True)
        folder.with_suffix(".log").unlink(missing_ok=True)
        assert not left, f"Ray processes left running: {[p.info['cmdline'] for p in left]}"


def sweep_command(tmp_path, tiny_bert, small_data, tracking_uri, cluster, *args) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "sweep", "--set", f"model={tiny_bert}",
            "--set", f"data_dir={small_data}", "--set", f"tracking_uri={tracking_uri}",
            "--set", f"output_dir={tmp_path / 'outputs'}", "--launch-config", str(REPO / "launch/single.yaml"),
            "--executor", "ray", "--ray-address", cluster["address"], *args]


def sweep(tmp_path, tiny_bert, small_data, tracking_uri, cluster, *args, by_environment=False, timeout=600):
    """`mtl-bench sweep --executor ray` on the cluster: --ray-address, or RAY_ADDRESS `by_environment`."""
    command = sweep_command(tmp_path, tiny_bert, small_data, tracking_uri, cluster, *args)
    env = cluster["env"]
    if by_environment:
        command.remove("--ray-address")
        command.remove(cluster["address"])
        env = {**env, "RAY_ADDRESS": cluster["address"]}
    return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def sweep_runs(tracking_uri, name):
    """The sweep's parent runs and its job runs (by job key: a list, a job may have had several)."""
    client = MlflowClient(tracking_uri)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], f"tags.`sweep.id` = '{name}'")
    jobs = {}
    for run in runs:
        if run.data.tags.get("sweep.role") != "sweep":
            jobs.setdefault(run.data.tags["sweep.job"], []).append(run)
    return [r for r in runs if r.data.tags.get("sweep.role") == "sweep"], jobs


@on_the_cluster
def test_each_job_is_a_ray_task_holding_a_gpu_recorded_under_the_sweep_and_a_re_run_runs_nothing(
        ray_cluster, tmp_path, tiny_bert, small_data, tracking_uri):
    args = ["--name", "ray-sweep", "--variants", "multitask,pals-top", "--seeds", "0", "-o", "pal_size=12", *TINY,
            "--setup", "export OMP_NUM_THREADS=2"]  # run before each job: its training records 2 threads, not 1
    result = sweep(tmp_path, tiny_bert, small_data, tracking_uri, ray_cluster, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "submitted 2 job(s) to Ray at " in result.stdout and "each holding 1 CPU(s) and 1 GPU(s)" in result.stdout
    assert "sweep ray-sweep: 2/2 jobs finished" in result.stdout
    parents, jobs = sweep_runs(tracking_uri, "ray-sweep")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert parents[0].data.params["executor"] == "ray"
    assert len(jobs) == 2 and all(len(runs) == 1 for runs in jobs.values())
    runs = [r for (r,) in jobs.values()]
    assert {r.data.tags["variant"] for r in runs} == {"multitask", "pals-top"}
    for run in runs:
        tags = run.data.tags
        assert run.info.status == "FINISHED"
        assert tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert tags["sweep.label"] == tags["variant"] and tags["sweep.id"] == "ray-sweep"
        assert tags["torch_threads"] == "2"  # the setup line's, not the one CPU the job holds
        assert "dev/overall" in run.data.metrics
    # Each job ran as a task of its own on the cluster's node, holding one of its two GPUs.
    assert len({r.data.tags["ray.task_id"] for r in runs}) == 2
    assert len({r.data.tags["ray.node_id"] for r in runs}) == 1
    assert sorted(r.data.tags["ray.gpu_ids"] for r in runs) == ["0", "1"]
    assert all(r.data.tags["cuda.visible_devices"] == r.data.tags["ray.gpu_ids"] for r in runs)  # what training saw
    assert len(list((tmp_path / "outputs" / "sweeps" / "ray-sweep" / "logs").glob("job-*.log"))) == 2

    again = sweep(tmp_path, tiny_bert, small_data, tracking_uri, ray_cluster, *args)
    assert again.returncode == 0 and "2 finished or in progress, 0 to run" in again.stdout
    assert "submitted" not in again.stdout
    _, after = sweep_runs(tracking_uri, "ray-sweep")
    assert {r.info.run_id for (r,) in after.values()} == {r.info.run_id for r in runs}


@on_the_cluster
def test_a_failed_job_is_reported_and_a_re_run_runs_it_alone(ray_cluster, tmp_path, tiny_bert, small_data,
                                                             tracking_uri):
    # lr 1e30 overflows after the first step: that job fails (non-finite loss) once started. Each
    # job holds both CPUs of the cluster, so Ray runs them one after the other. The cluster is
    # named by RAY_ADDRESS here.
    args = ["--name", "ray-fail", "--variants", "multitask", "--seeds", "0", "--grid", "lr=3e-4,1e30",
            "--set", "scheduler=constant", "--ray-cpus-per-job", "2", "--ray-gpus-per-job", "0", *TINY]
    result = sweep(tmp_path, tiny_bert, small_data, tracking_uri, ray_cluster, *args, by_environment=True)
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep ray-fail: 1/2 jobs finished" in result.stdout
    assert re.search(r"multitask_lr=1e\+30_s0: FAILED \(exit [1-9]", result.stdout)  # accelerate launch's exit 1
    parents, jobs = sweep_runs(tracking_uri, "ray-fail")
    assert parents[0].info.status == "FAILED"
    by_lr = {float(runs[0].data.params["lr"]): runs for runs in jobs.values()}
    (good,), (bad,) = by_lr[3e-4], by_lr[1e30]
    assert good.info.status == "FINISHED" and bad.info.status == "FAILED"
    assert bad.data.tags["failure/reason"] == "non-finite loss"
    assert good.data.tags["torch_threads"] == "2" and good.data.tags["ray.gpu_ids"] == ""
    first, second = sorted([good, bad], key=lambda r: r.info.start_time)
    assert first.info.end_time <= second.info.start_time  # never both at once: each held the 2 CPUs

    again = sweep(tmp_path, tiny_bert, small_data, tracking_uri, ray_cluster, *args, by_environment=True)
    assert again.returncode == 1
    assert "1 finished or in progress, 1 to run" in again.stdout
    assert "[1/1] multitask_lr=1e+30_s0: FAILED" in again.stdout
    _, after = sweep_runs(tracking_uri, "ray-fail")
    (still,) = after[good.data.tags["sweep.job"]]
    assert still.info.run_id == good.info.run_id and still.info.end_time == good.info.end_time  # not run again
    assert max(r.info.end_time for r in after[bad.data.tags["sweep.job"]]) > bad.info.end_time  # ran again


@on_the_cluster
def test_a_job_too_big_for_every_node_is_refused_before_anything_is_recorded(ray_cluster, tmp_path, tiny_bert,
                                                                             small_data, tracking_uri):
    result = sweep(tmp_path, tiny_bert, small_data, tracking_uri, ray_cluster, "--name", "ray-big", "--variants",
                   "multitask", "--seeds", "0", "--ray-gpus-per-job", "4", *TINY, timeout=120)  # Ray would wait forever
    assert result.returncode == 2
    assert ("has the 1 CPU(s) and 4 GPU(s) a job needs (its nodes: 2 CPUs and 2 GPUs)" in result.stderr
            and "no node of the Ray cluster at " in result.stderr), result.stderr[-3000:]
    assert not (tmp_path / "outputs" / "sweeps" / "ray-big").exists()


@on_the_cluster
def test_an_interrupted_sweep_stops_its_job_at_a_checkpoint_and_a_re_run_resumes_it(
        ray_cluster, tmp_path, tiny_bert, small_data, tracking_uri):
    args = ["--name", "ray-stop", "--variants", "multitask", "--seeds", "0", "--set", "epochs=2",
            "--set", "batches_per_epoch=150", "--set", "batch_size=4", "--set", "max_length=32",
            "--set", "checkpoint_every=5"]
    process = subprocess.Popen(sweep_command(tmp_path, tiny_bert, small_data, tracking_uri, ray_cluster, *args),
                               cwd=tmp_path, env=ray_cluster["env"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    folder = tmp_path / "outputs" / "sweeps" / "ray-stop"
    deadline = time.time() + 300
    while not list(folder.glob("jobs/*/*/checkpoints/*/loop_state.json")):
        assert process.poll() is None and time.time() < deadline, f"no checkpoint:\n{process.stdout.read()[-3000:]}"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # Ctrl-C: to the sweep's process alone, the job runs in Ray's
    output, _ = process.communicate(timeout=180)
    assert process.returncode != 0
    assert "sweep ray-stop: interrupted; running jobs wrote a checkpoint" in output, output[-3000:]
    assert not processes_naming(str(folder))  # the job and its training ended with the sweep
    parents, jobs = sweep_runs(tracking_uri, "ray-stop")
    assert parents[0].info.status == "KILLED"
    ((stopped,),) = jobs.values()
    assert stopped.info.status == "KILLED"
    assert stopped.data.tags["stopped/signal"] == "SIGTERM"
    step = int(stopped.data.tags["stopped/step"])
    assert 0 < step < 300

    result = sweep(tmp_path, tiny_bert, small_data, tracking_uri, ray_cluster, *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "sweep ray-stop: 1/1 jobs finished" in result.stdout
    parents, jobs = sweep_runs(tracking_uri, "ray-stop")
    ((resumed,),) = jobs.values()
    assert resumed.info.run_id == stopped.info.run_id and resumed.info.status == "FINISHED"
    assert resumed.data.tags["resumed_from_step"] == str(step)  # from the checkpoint written when it stopped
    assert resumed.data.tags["ray.task_id"] != stopped.data.tags["ray.task_id"]
    history = MlflowClient(tracking_uri).get_metric_history(resumed.info.run_id, "train/lr")
    assert sorted(m.step for m in history) == list(range(1, 301))  # every step recorded once
    assert parents[0].info.status == "FINISHED"


@pytest.mark.parametrize("config, cpus, gpus, cluster_gpus, expected", [
    ("single.yaml", 0, -1, 0, (1, 0)),  # no GPUs in the cluster: the harness trains on the CPU
    ("single.yaml", 0, -1, 8, (1, 1)),
    ("ddp.yaml", 0, -1, 8, (8, 8)),  # one CPU and one GPU per process
    ("zero3.yaml", 0, -1, 8, (8, 8)),
    ("cpu-ddp.yaml", 0, -1, 8, (2, 0)),  # a CPU config: no GPUs even where there are some
    ("ddp.yaml", 16, 2, 8, (16, 2)),  # given: as given
    ("single.yaml", 4, 0, 8, (4, 0)),
])
def test_a_job_asks_ray_for_the_cpus_and_gpus_of_its_launch_config(config, cpus, gpus, cluster_gpus, expected):
    assert job_resources(REPO / "launch" / config, cpus, gpus, cluster_gpus) == expected


def test_the_task_gives_each_training_process_its_share_of_the_cpus_not_rays_omp_num_threads():
    tags = {"ray.task_id": "t", "ray.gpu_ids": "0"}
    env = job_environment({"OMP_NUM_THREADS": "4", "PATH": "/bin", "CUDA_VISIBLE_DEVICES": "3"}, 4, tags)
    assert "OMP_NUM_THREADS" not in env  # set by Ray to the task's CPUs: the job runner splits them instead
    assert env["PATH"] == "/bin" and env["CUDA_VISIBLE_DEVICES"] == "3"  # Ray's choice of GPU reaches the job
    assert env[JOB_CPUS_ENV] == "4" and json.loads(env[JOB_TAGS_ENV]) == tags
    assert job_environment({"OMP_NUM_THREADS": "4"}, 4, tags, omp="2")["OMP_NUM_THREADS"] == "2"  # the sweep's own


def test_the_job_runner_reads_its_cpus_and_ray_tags_from_the_task(monkeypatch):
    tags = {"ray.task_id": "t1", "ray.node_id": "n1", "ray.gpu_ids": "0,1"}
    for name, value in job_environment({}, 3, tags).items():
        monkeypatch.setenv(name, value)
    place = RayExecutor.placement()
    assert place.cpus == 3 and place.tags == tags and place.machines == 1


def test_without_ray_installed_the_executor_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(SweepError, match=r"--executor ray needs Ray: pip install -e '\.\[ray\]'"):
        RayExecutor().check(load_spec(None, "s", ["multitask"], [0]))


def test_a_multi_machine_launch_config_is_refused(tmp_path):
    config = tmp_path / "two-machines.yaml"
    config.write_text((REPO / "launch" / "ddp.yaml").read_text().replace("num_machines: 1", "num_machines: 2"))
    with pytest.raises(SweepError, match="a Ray job runs on one node"):
        RayExecutor().check(load_spec(None, "s", ["multitask"], [0], launch_config=str(config)))
    with pytest.raises(ConfigError):
        RayExecutor(cpus_per_job=-1)


def test_an_address_where_no_ray_answers_is_refused_at_once():
    address = f"127.0.0.1:{free_port()}"
    started = time.time()
    with pytest.raises(SweepError, match=rf"Ray at {address}: cannot be reached \(.*refused"):
        RayExecutor(address).check(load_spec(None, "s", ["multitask"], [0]))
    assert time.time() - started < 30  # not Ray's own retries, many minutes long
