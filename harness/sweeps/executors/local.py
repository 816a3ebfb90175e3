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
from harness.sweeps.executors import Executor, Report, register_executor
from harness.sweeps.spec import Job


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
        threads = max(1, (os.cpu_count() or 1) // self.parallel)

        def one(index: int) -> tuple[int, int, float]:
            started = time.time()
            log = logs / f"job-{index:03d}-{time.strftime('%Y%m%d-%H%M%S')}.log"
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if self.parallel > 1 else None
            with open(log, "w") as fp:
                code = subprocess.run([sys.executable, "-m", "harness.sweeps.job", str(jobs_file), str(index)],
                                      stdout=fp, stderr=subprocess.STDOUT, env=env).returncode
            return index, code, time.time() - started

        self._report = report
        self._pool = ThreadPoolExecutor(max_workers=self.parallel)
        self._futures = [self._pool.submit(one, job.index) for job in jobs]
        return f"running {len(jobs)} job(s) here, {self.parallel} at a time; logs in {logs}"

    def wait(self) -> None:
        try:
            for future in self._futures:
                self._report(*future.result())
        except KeyboardInterrupt:
            # Ctrl-C reached the running jobs too: they write a checkpoint and stop. Start no more.
            self._pool.shutdown(wait=True, cancel_futures=True)
            raise
        self._pool.shutdown()
