"""The Ray executor: each job a Ray task holding the job's CPUs and GPUs, placed by Ray.

The task runs `python -m harness.sweeps.job JOBS_FILE INDEX` (after the sweep's setup lines) on the
node Ray chose, with the GPUs Ray gave it (CUDA_VISIBLE_DEVICES), and returns its exit status. The
sweep connects to the cluster at `--ray-address`, else at $RAY_ADDRESS, else starts a Ray instance
of its own on this machine (stopped with the sweep). Needs the `ray` extra: pip install -e '.[ray]'.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from harness.core.config import ConfigError
from harness.core.launch_config import read_launch_config, world_size
from harness.sweeps.executors import Executor, Placement, Report, SweepError, job_shell_command, register_executor
from harness.sweeps.spec import Job, SweepSpec

# What the task tells the job runner's `placement` (in the job's process): its CPUs and run tags.
JOB_CPUS_ENV = "MTL_BENCH_RAY_JOB_CPUS"
JOB_TAGS_ENV = "MTL_BENCH_RAY_JOB_TAGS"


def uses_gpus(launch_config: str | os.PathLike, config: dict) -> bool:
    """A launch config meant for GPUs: not a CPU one (use_cpu, or launch/cpu-*.yaml, whose MULTI_GPU
    type only makes accelerate start several processes on a machine without GPUs)."""
    return not config.get("use_cpu") and not Path(launch_config).name.startswith("cpu-")


def job_resources(launch_config: str | os.PathLike, cpus: int = 0, gpus: int = -1,
                  cluster_gpus: float = 0) -> tuple[int, int]:
    """(CPUs, GPUs) one job asks Ray for: the given ones, else one CPU per process of the launch
    config, and one GPU per process for a GPU config on a cluster that has GPUs (the harness
    trains on the CPU where it finds none)."""
    config = read_launch_config(launch_config)
    processes = world_size(config)
    if gpus < 0:
        gpus = processes if cluster_gpus and uses_gpus(launch_config, config) else 0
    return cpus or max(1, processes), gpus


def job_environment(environ: dict[str, str], cpus: int, tags: dict[str, str], omp: str = "") -> dict[str, str]:
    """The job runner's environment inside the task. Ray sets OMP_NUM_THREADS to the task's CPUs;
    the job runner gives each training process its share instead (unless the sweep's own
    environment set it: `omp`)."""
    env = {k: v for k, v in environ.items() if k != "OMP_NUM_THREADS"}
    env.update({JOB_CPUS_ENV: str(cpus), JOB_TAGS_ENV: json.dumps(tags)})
    if omp:
        env["OMP_NUM_THREADS"] = omp
    return env


def reachable(address: str, timeout: float = 10.0) -> None:
    """Raises unless the head's port answers: Ray itself retries a dead address for many minutes."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as exc:
        raise SweepError(f"Ray at {address}: cannot be reached ({exc}); is the cluster's head up (`ray start --head` "
                         "prints its address) and the address HOST:PORT?") from None


def run_job_task(jobs_file: str, index: int, log: str, omp: str) -> tuple[int, int, float]:
    """The Ray task: one job, on the node and GPUs Ray gave it; (index, exit code, seconds)."""
    import ray

    # ray.cancel() stops a running task by raising KeyboardInterrupt in it (a simulated SIGINT),
    # which does nothing where SIGINT is ignored, as in a cluster started from a background shell.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.time()
    context = ray.get_runtime_context()
    tags = {"ray.task_id": context.get_task_id(), "ray.node_id": context.get_node_id(),
            "ray.gpu_ids": ",".join(map(str, ray.get_gpu_ids()))}
    env = job_environment(dict(os.environ), int(context.get_assigned_resources().get("CPU", 1)), tags, omp)
    meta = json.loads(Path(jobs_file).read_text())
    command = job_shell_command(jobs_file, str(index), meta["spec"].get("setup") or [], sys.executable)
    with open(log, "w") as fp:
        job = subprocess.Popen(command, cwd=meta["cwd"], stdout=fp, stderr=subprocess.STDOUT, env=env)
        try:
            while job.poll() is None:
                time.sleep(0.5)  # not job.wait(): the cancel's interrupt lands only between Python instructions
        except KeyboardInterrupt:
            # Stop the job as a scheduler does: SIGTERM, which the job runner passes on to the training;
            # the training writes a checkpoint and exits, and a re-run of the sweep resumes it. (Not to
            # every process of the job: `accelerate launch` signalled twice kills the training at once.)
            job.terminate()
            job.wait()
    code = job.returncode
    return index, 128 - code if code < 0 else code, time.time() - started


@register_executor
class RayExecutor(Executor):
    name = "ray"
    description = "a Ray cluster (--ray-address; default: a local Ray instance), one Ray task per job"

    def __init__(self, address: str = "", cpus_per_job: int = 0, gpus_per_job: int = -1):
        if cpus_per_job < 0:
            raise ConfigError(f"--ray-cpus-per-job: expected a positive number of CPUs, got {cpus_per_job}")
        self.address = address
        self.cpus_per_job = cpus_per_job
        self.gpus_per_job = gpus_per_job
        self.resources = (1, 0)
        self._tasks: dict = {}  # Ray object ref -> job index
        self._report: Report | None = None
        self._submitted = 0.0

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--ray-address", default="", metavar="HOST:PORT",
                           help="the Ray cluster's head, as `ray start --head` prints it; `auto`: the one started "
                                "on this machine (default: $RAY_ADDRESS if set, else a Ray instance of the sweep's "
                                "own on this machine, stopped when it ends)")
        group.add_argument("--ray-cpus-per-job", type=int, default=0, metavar="N",
                           help="CPUs each job holds (default: 1 per process of the launch config)")
        group.add_argument("--ray-gpus-per-job", type=int, default=-1, metavar="N",
                           help="GPUs each job holds (default: 1 per process of the launch config if the cluster "
                                "has GPUs and the config is not a CPU one, launch/cpu-*.yaml or use_cpu; else 0)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RayExecutor:
        return cls(args.ray_address, args.ray_cpus_per_job, args.ray_gpus_per_job)

    def check(self, spec: SweepSpec) -> None:
        """Connects to the cluster and refuses jobs that no node of it can hold."""
        try:
            import ray
        except ImportError:
            raise SweepError("--executor ray needs Ray: pip install -e '.[ray]'") from None
        if int(read_launch_config(spec.launch_config).get("num_machines", 1)) > 1:
            raise SweepError(f"launch config {spec.launch_config}: a Ray job runs on one node; use a one-machine "
                             "config (num_machines: 1)")
        if not ray.is_initialized():
            # "local": a new instance, even where a stale `ray start` left its address in /tmp/ray.
            address = self.address or os.environ.get("RAY_ADDRESS") or "local"
            if address not in ("auto", "local"):
                reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
            except (ConnectionError, ValueError) as exc:
                raise SweepError(f"cannot connect to Ray at {address}: {exc} (a cluster with token authentication "
                                 "also needs RAY_AUTH_MODE=token and its token)") from None
        nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
        self.resources = cpus, gpus = job_resources(spec.launch_config, self.cpus_per_job, self.gpus_per_job,
                                                    max((n.get("GPU", 0) for n in nodes), default=0))
        if not any(n.get("CPU", 0) >= cpus and n.get("GPU", 0) >= gpus for n in nodes):
            have = ", ".join(f"{n.get('CPU', 0):g} CPUs and {n.get('GPU', 0):g} GPUs" for n in nodes)
            raise SweepError(f"no node of the Ray cluster at {ray.get_runtime_context().gcs_address} has the {cpus} "
                             f"CPU(s) and {gpus} GPU(s) a job needs (its nodes: {have}); see --ray-cpus-per-job "
                             "and --ray-gpus-per-job")

    def submit(self, jobs_file: Path, jobs: list[Job], report: Report) -> str:
        import ray

        logs = jobs_file.parent / "logs"
        logs.mkdir(exist_ok=True)
        cpus, gpus = self.resources
        task = ray.remote(run_job_task)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        self._report, self._submitted = report, time.time()
        # No retries: a job whose task died is reported, and re-running the sweep resumes it from its checkpoint.
        self._tasks = {task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0, name=job.run_name).remote(
            str(jobs_file.resolve()), job.index, str((logs / f"job-{job.index:03d}-{stamp}.log").resolve()),
            os.environ.get("OMP_NUM_THREADS", "")): job.index for job in jobs}
        return (f"submitted {len(jobs)} job(s) to Ray at {ray.get_runtime_context().gcs_address}, each holding "
                f"{cpus} CPU(s) and {gpus} GPU(s); logs in {logs}")

    @classmethod
    def placement(cls) -> Placement:
        """The node Ray chose, with the task's CPUs; its task, node and GPU ids as run tags."""
        env = os.environ
        return Placement(cpus=int(env.get(JOB_CPUS_ENV) or 0), tags=json.loads(env.get(JOB_TAGS_ENV) or "{}"))

    def wait(self) -> None:
        import ray

        pending = dict(self._tasks)
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    index = pending.pop(ref)
                    try:
                        self._report(*ray.get(ref))
                    except ray.exceptions.RayError as exc:  # the task itself died (its worker or node), not the job
                        print(f"job {index}: its Ray task failed: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
                        self._report(index, -1, time.time() - self._submitted)
        except KeyboardInterrupt:
            # Ctrl-C reaches this process only (Ray's processes block SIGINT). Cancelling interrupts
            # the running tasks, which stop their jobs at a checkpoint; queued ones never start.
            for ref in pending:
                ray.cancel(ref)
            if pending:
                ray.wait(list(pending), num_returns=len(pending))  # until their checkpoints are written
            raise
