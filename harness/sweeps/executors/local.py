"""The local executor: the jobs run on this machine, `--parallel` at a time.

On a machine with GPUs each job gets GPUs of its own: as many as its launch config starts
processes, given to it through CUDA_VISIBLE_DEVICES while it runs and taken back when it ends
(finished, failed or interrupted), so the jobs running at once never share a GPU; at most as
many jobs run at once as disjoint sets exist. Without GPUs the jobs share the CPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from harness.core.config import ConfigError
from harness.core.launch_config import processes_per_node, read_launch_config
from harness.sweeps.executors import Executor, Placement, Report, SweepError, job_shell_command, register_executor
from harness.sweeps.spec import Job, SweepSpec

# The CPUs of this machine one job may use (its --parallel share), for the job runner's placement.
JOB_CPUS_ENV = "MTL_BENCH_LOCAL_JOB_CPUS"
# The GPUs given to a job (also its CUDA_VISIBLE_DEVICES), recorded on its run as the tag `local.gpus`.
JOB_GPUS_ENV = "MTL_BENCH_LOCAL_JOB_GPUS"


def visible_gpus() -> list[str]:
    """This machine's GPUs as CUDA_VISIBLE_DEVICES names them (ids or UUIDs), else as torch counts them."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and d.strip() != "-1"]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def gpus_per_job(launch_config: str) -> int:
    """A job's GPUs: one per training process its launch config starts on this machine (none if it
    asks for the CPU)."""
    config = read_launch_config(launch_config)
    return 0 if config.get("use_cpu") else processes_per_node(config)


class GpuPool:
    """Disjoint GPU sets for the jobs running at once: a job takes `count` free GPUs (waiting until
    there are) and gives them back when it ends."""

    def __init__(self, gpus: list[str]):
        self._order = {g: i for i, g in enumerate(gpus)}
        self._free = list(gpus)
        self._changed = threading.Condition()

    def take(self, count: int) -> list[str]:
        with self._changed:
            self._changed.wait_for(lambda: len(self._free) >= count)
            taken, self._free = self._free[:count], self._free[count:]
            return taken

    def give_back(self, gpus: list[str]) -> None:
        with self._changed:
            self._free = sorted(self._free + gpus, key=self._order.__getitem__)
            self._changed.notify_all()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or a scheduler's cpuset), not the host's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@register_executor
class LocalExecutor(Executor):
    name = "local"
    description = "this machine, --parallel jobs at a time, each with its share of the CPU threads"

    def __init__(self, parallel: int = 1, gpus: list[str] | None = None, out=print):
        if parallel < 1:
            raise ConfigError(f"--parallel: expected a positive number of jobs at a time, got {parallel}")
        self.parallel = parallel
        self.gpus = visible_gpus() if gpus is None else gpus
        self.gpus_per_job = 0
        self._out = out
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._report: Report | None = None

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--parallel", type=int, default=1, help="jobs at a time (default: 1); with GPUs, at "
                                                                   "most as many as disjoint GPU sets exist")
        group.add_argument("--gpus", default=None, metavar="IDS",
                           help="the GPUs the jobs share out, comma-separated (e.g. 0,1,2,3), or 'none' for CPU "
                                "jobs; each job gets as many as its launch config starts processes, through "
                                "CUDA_VISIBLE_DEVICES (default: every visible GPU: CUDA_VISIBLE_DEVICES, else "
                                "torch.cuda.device_count())")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LocalExecutor:
        gpus = None
        if args.gpus is not None:
            gpus = [] if args.gpus.strip().lower() in ("", "none") else [g.strip() for g in args.gpus.split(",")]
            if len(set(gpus)) != len(gpus) or not all(gpus):
                raise ConfigError(f"--gpus {args.gpus}: expected distinct comma-separated GPU ids, e.g. 0,1,2,3")
        return cls(args.parallel, gpus)

    def check(self, spec: SweepSpec) -> None:
        if not self.gpus:
            return
        self.gpus_per_job = gpus_per_job(spec.launch_config)
        if not self.gpus_per_job:
            return
        if self.gpus_per_job > len(self.gpus):
            raise SweepError(f"each job needs {self.gpus_per_job} GPUs ({spec.launch_config} starts "
                             f"{self.gpus_per_job} processes), and {len(self.gpus)} are given ({','.join(self.gpus)}); "
                             "give more with --gpus, or a launch config of fewer processes")
        sets = len(self.gpus) // self.gpus_per_job
        if self.parallel > sets:
            self._out(f"--parallel {self.parallel} capped at {sets}: {len(self.gpus)} GPU(s) "
                      f"({','.join(self.gpus)}) make {sets} disjoint set(s) of {self.gpus_per_job}")
            self.parallel = sets

    def submit(self, jobs_file: Path, jobs: list[Job], report: Report) -> str:
        logs = jobs_file.parent / "logs"
        logs.mkdir(exist_ok=True)
        # Each job's share of the CPUs; the job runner splits it among the job's training processes
        # (OMP_NUM_THREADS, harness/sweeps/job.py), so a job of several processes does not oversubscribe.
        env = {**os.environ, JOB_CPUS_ENV: str(max(1, usable_cpus() // self.parallel))}
        gpus = GpuPool(self.gpus) if self.gpus_per_job else None
        setup = json.loads(jobs_file.read_text())["spec"].get("setup") or []

        def one(index: int) -> tuple[int, int, float]:
            taken = gpus.take(self.gpus_per_job) if gpus else []
            try:
                job_env = {**env, "CUDA_VISIBLE_DEVICES": ",".join(taken), JOB_GPUS_ENV: ",".join(taken)} \
                    if taken else env
                started = time.time()
                log = logs / f"job-{index:03d}-{time.strftime('%Y%m%d-%H%M%S')}.log"
                with open(log, "w") as fp:
                    code = subprocess.run(job_shell_command(jobs_file, str(index), setup, sys.executable),
                                          stdout=fp, stderr=subprocess.STDOUT, env=job_env).returncode
                return index, code, time.time() - started
            finally:  # also when the job failed or the sweep was interrupted
                if taken:
                    gpus.give_back(taken)

        self._report = report
        self._pool = ThreadPoolExecutor(max_workers=self.parallel)
        self._futures = [self._pool.submit(one, job.index) for job in jobs]
        where = (f", each on {self.gpus_per_job} of GPUs {','.join(self.gpus)}" if self.gpus_per_job else "")
        return f"running {len(jobs)} job(s) here, {self.parallel} at a time{where}; logs in {logs}"

    @classmethod
    def placement(cls) -> Placement:
        """This machine, with the job's share of its CPUs (set by `submit`; without it, all of them) and
        the GPUs it was given (recorded as the run's tag `local.gpus`)."""
        gpus = os.environ.get(JOB_GPUS_ENV, "")
        return Placement(cpus=int(os.environ.get(JOB_CPUS_ENV) or 0), tags={"local.gpus": gpus} if gpus else {})

    def wait(self) -> None:
        try:
            for future in self._futures:
                self._report(*future.result())
        except KeyboardInterrupt:
            # Ctrl-C reached the running jobs too: they write a checkpoint and stop. Start no more.
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise
        self._pool.shutdown()
