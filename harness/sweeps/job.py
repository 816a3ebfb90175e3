"""One job of a sweep, run where its executor put it: `python -m harness.sweeps.job JOBS_FILE INDEX`.

The job reads its training config from jobs/<key>/config.json (written by `mtl-bench sweep`),
launches the harness with `accelerate launch` where its executor's `placement` says (a multi-
machine job: once per machine, each with its rank), and resumes from the job's latest
checkpoint if it has one.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from harness.core import names
from harness.core.launch_config import is_distributed, processes_per_node, read_launch_config, world_size
from harness.sweeps.executors import Placement, get_executor
from harness.sweeps.files import job_config_path
from harness.sweeps.spec import Job


def job_command(jobs_file: Path, job: Job, meta: dict, resume: Path | None, place: Placement) -> list[str]:
    """`accelerate launch` of the harness for one job, on the machine `place` describes. The launch
    config holds the total process count (the executor may have rewritten it for its machines).

    A one-process job without DeepSpeed runs the harness directly: accelerate's one-process
    launcher kills its child 5 s after a SIGTERM (at once on a second one), too soon for a
    preempted job to write its checkpoint and end its run, and there is nothing to launch."""
    config = read_launch_config(meta["launch_config"])
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file",
              meta["launch_config"]]
    if world_size(config) == 1 and place.machines == 1 and not is_distributed(config):
        launch = [sys.executable]
    elif world_size(config) > 1 or place.machines > 1:
        # A port of this job's own: jobs sharing a machine must not meet on accelerate's default 29500.
        launch += ["--main_process_port", str(place.port or 29500 + 1 + job.index % 1000)]
    if place.machines > 1:  # every machine runs this, each with its rank; all meet on the main host
        launch += ["--num_machines", str(place.machines), "--machine_rank", str(place.machine_rank),
                   "--main_process_ip", place.main_host]
    # The launch config is the executor's choice (SLURM rewrites it per submission), so it is
    # given here rather than in the job's config file; so is the checkpoint to resume.
    train = ["-m", "harness.cli", "train", "--config", str(job_config_path(jobs_file, job)),
             "--launch-config", meta["launch_config"]]
    if resume:
        train += ["--resume", str(resume)]
    return launch + train


def job_environment(meta: dict, place: Placement, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment the job's `accelerate launch` runs in: this process's (`environ`), the
    sweep's (its tracking URI), the placement's tags for the run, and OMP_NUM_THREADS."""
    env = {**(os.environ if environ is None else environ), **meta.get("env", {}),
           names.RUN_TAGS_ENV: json.dumps(place.tags)}
    if "OMP_NUM_THREADS" not in env:
        # `accelerate launch` sets OMP_NUM_THREADS=1 when it is unset: on CPUs that halves a 2-core
        # machine's speed. Give each training process of this machine its share of the job's CPUs
        # (the placement's, else all this process may use) instead.
        local = processes_per_node(read_launch_config(meta["launch_config"]))
        cpus = place.cpus or len(os.sched_getaffinity(0))
        env["OMP_NUM_THREADS"] = str(max(1, cpus // local))
    return env


def latest_checkpoint(job_dir: Path) -> Path | None:
    """The run folder under a job's folder holding the newest complete checkpoint, if any."""
    from harness.training.checkpoint import CHECKPOINT_PREFIX

    found = [(p.stat().st_mtime, p.parents[2]) for p in
             job_dir.glob(f"*/checkpoints/{CHECKPOINT_PREFIX}*/loop_state.json")]
    return max(found)[1] if found else None


def run_job(jobs_file: str | os.PathLike, index: int) -> int:
    """Runs job `index` of a sweep to the end (resuming if it has a checkpoint); its exit status.

    The job's training is a grandchild (accelerate launch starts it), so this process becomes a
    child subreaper and waits for every descendant: when the scheduler sends SIGTERM, the
    training writes its checkpoint before the job step ends.
    """
    jobs_file = Path(jobs_file).resolve()
    meta = json.loads(jobs_file.read_text())
    job = Job(**meta["jobs"][index])
    resume = latest_checkpoint(jobs_file.parent / "jobs" / job.key)
    place = get_executor(meta.get("executor", "local")).placement()
    command = job_command(jobs_file, job, meta, resume, place)
    print(f"sweep {meta['name']} job {index} ({job.run_name}, key {job.key})"
          + (f", resuming {resume}" if resume else ""), flush=True)
    print(shlex.join(command), flush=True)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    child = subprocess.Popen(command, cwd=meta["cwd"], env=job_environment(meta, place))

    def forward(signum, frame):  # SLURM signals every process of the step; Ctrl-C reaches the group
        try:
            child.send_signal(signum)
        except ProcessLookupError:
            pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    code = child.wait()
    while True:  # orphaned descendants (training processes whose launcher died first)
        try:
            os.wait()
        except ChildProcessError:
            break
    return 128 - code if code < 0 else code  # killed by a signal: the shell's convention


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[1].isdigit():
        return run_job(argv[0], int(argv[1]))
    print("usage: python -m harness.sweeps.job JOBS_FILE INDEX (used by `mtl-bench sweep`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
