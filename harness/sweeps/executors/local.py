"""The local executor: the jobs run on this machine, `--parallel` at a time."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from harness.config import ConfigError
from harness.sweeps.executors import Executor, Placement, Report, register_executor
from harness.sweeps.spec import Job

# The CPUs of this machine one job may use (its --parallel share), for the job runner's placement.
JOB_CPUS_ENV = "MTL_BENCH_LOCAL_JOB_CPUS"


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity: a container's or a scheduler's cpuset), not the host's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@register_executor
class LocalExecutor(Executor):
    name = "local"
    description = "this machine, --parallel jobs at a time, each with its share of the CPU threads"

    def __init__(self, parallel: int = 1):
        if parallel < 1:
            raise ConfigError(f"--parallel: expected a positive number of jobs at a time, got {parallel}")
        self.parallel = parallel
        self._pool: ThreadPoolExecutor | None = None
        self._futures: list[Future] = []
        self._report: Report | None = None

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--parallel", type=int, default=1, help="jobs at a time (default: 1)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> LocalExecutor:
        return cls(args.parallel)

    def submit(self, jobs_file: Path, jobs: list[Job], report: Report) -> str:
        logs = jobs_file.parent / "logs"
        logs.mkdir(exist_ok=True)
        # Each job's share of the CPUs; the job runner splits it among the job's training processes
        # (OMP_NUM_THREADS, harness/sweeps/job.py), so a job of several processes does not oversubscribe.
        env = {**os.environ, JOB_CPUS_ENV: str(max(1, usable_cpus() // self.parallel))}

        def one(index: int) -> tuple[int, int, float]:
            started = time.time()
            log = logs / f"job-{index:03d}-{time.strftime('%Y%m%d-%H%M%S')}.log"
            with open(log, "w") as fp:
                code = subprocess.run([sys.executable, "-m", "harness.sweeps.job", str(jobs_file), str(index)],
                                      stdout=fp, stderr=subprocess.STDOUT, env=env).returncode
            return index, code, time.time() - started

        self._report = report
        self._pool = ThreadPoolExecutor(max_workers=self.parallel)
        self._futures = [self._pool.submit(one, job.index) for job in jobs]
        return f"running {len(jobs)} job(s) here, {self.parallel} at a time; logs in {logs}"

    @classmethod
    def placement(cls) -> Placement:
        """This machine, with the job's share of its CPUs (set by `submit`; without it, all of them)."""
        return Placement(cpus=int(os.environ.get(JOB_CPUS_ENV) or 0))

    def wait(self) -> None:
        try:
            for future in self._futures:
                self._report(*future.result())
        except KeyboardInterrupt:
            # Ctrl-C reached the running jobs too: they write a checkpoint and stop. Start no more.
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise
        self._pool.shutdown()
