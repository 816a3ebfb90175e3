"""GPUs in local sweeps: each job its own disjoint set through CUDA_VISIBLE_DEVICES. Tested on this
CPU machine with real job processes and a device list given by --gpus (the jobs train on the CPU)."""
import itertools
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO
from harness.core.config import ConfigError
from harness.sweeps import load_spec
from harness.sweeps.executors import SweepError
from harness.sweeps.executors.local import GpuPool, LocalExecutor, gpus_per_job
from test_sweep import child_runs, sweep_cli


def test_a_job_needs_one_gpu_per_process_its_launch_config_starts():
    assert gpus_per_job(str(REPO / "launch/single.yaml")) == 1
    assert gpus_per_job(str(REPO / "launch/ddp.yaml")) == 8
    assert gpus_per_job(str(REPO / "launch/cpu-ddp.yaml")) == 2


def test_parallel_is_capped_at_the_disjoint_gpu_sets_and_a_job_larger_than_the_gpus_is_refused():
    said = []
    executor = LocalExecutor(parallel=4, gpus=["0", "1", "2"], out=said.append)
    executor.check(load_spec(None, "s", ["multitask"], [0], launch_config=str(REPO / "launch/cpu-ddp.yaml")))
    assert executor.parallel == 1 and executor.gpus_per_job == 2
    assert said == ["--parallel 4 capped at 1: 3 GPU(s) (0,1,2) make 1 disjoint set(s) of 2"]
    with pytest.raises(SweepError, match="each job needs 8 GPUs .* and 3 are given"):
        LocalExecutor(parallel=1, gpus=["0", "1", "2"]).check(
            load_spec(None, "s", ["multitask"], [0], launch_config=str(REPO / "launch/ddp.yaml")))
    cpu = LocalExecutor(parallel=3, gpus=[])  # no GPUs: nothing changes
    cpu.check(load_spec(None, "s", ["multitask"], [0], launch_config=str(REPO / "launch/cpu-ddp.yaml")))
    assert cpu.parallel == 3 and cpu.gpus_per_job == 0


@pytest.mark.parametrize("text", ["0,0", "0,,1"])
def test_a_malformed_gpu_list_is_refused(text):
    import argparse

    with pytest.raises(ConfigError, match="--gpus"):
        LocalExecutor.from_args(argparse.Namespace(parallel=1, gpus=text))


def test_the_pool_never_gives_one_gpu_to_two_holders_at_once():
    pool, held, clashes = GpuPool(["0", "1", "2", "3", "4"]), set(), []
    lock = threading.Lock()

    def job(i):
        taken = pool.take(2)
        with lock:
            clashes.extend(set(taken) & held)
            held.update(taken)
        time.sleep(0.001 * (i % 3))
        with lock:
            held.difference_update(taken)
        pool.give_back(taken)

    threads = [threading.Thread(target=job, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not clashes and not any(t.is_alive() for t in threads)
    assert sorted(pool.take(5)) == ["0", "1", "2", "3", "4"]  # every GPU came back


@pytest.mark.slow
def test_jobs_running_at_once_train_on_disjoint_gpu_sets_given_through_cuda_visible_devices(
        tmp_path, tiny_bert, small_data, tracking_uri):
    result = sweep_cli(tmp_path, tiny_bert, small_data, tracking_uri, "--name", "gpus", "--variants", "multitask",
                       "--seeds", "0,1,2,3", "--gpus", "0,1,2", "--parallel", "5",
                       "--set", "batches_per_epoch=60",  # long enough for the runs to overlap
                       "--setup", "export OMP_NUM_THREADS=2")  # before each job: its training records it (a
                       # third of the 2 cores, 1 thread, otherwise)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "--parallel 5 capped at 3: 3 GPU(s) (0,1,2) make 3 disjoint set(s) of 1" in result.stdout
    _, runs = child_runs(tracking_uri, "gpus")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    for run in runs:
        # The set the executor gave is the one the training process saw.
        assert run.data.tags["local.gpus"] in {"0", "1", "2"}
        assert run.data.tags["cuda.visible_devices"] == run.data.tags["local.gpus"]
        assert run.data.tags["torch_threads"] == "2"
    overlapping = 0
    for a, b in itertools.combinations(runs, 2):
        if a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time:  # ran at the same time
            overlapping += 1
            assert a.data.tags["local.gpus"] != b.data.tags["local.gpus"], (a.info.run_name, b.info.run_name)
    assert overlapping, "no two jobs ran at the same time: the test shows nothing"
    # A fourth job ran after one of the first three ended, on the GPU that job gave back.
    assert len({r.data.tags["local.gpus"] for r in runs}) == 3
    assert MlflowClient(tracking_uri).get_run(runs[0].info.run_id).data.tags["local.gpus"]
