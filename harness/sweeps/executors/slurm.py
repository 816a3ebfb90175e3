"""The SLURM executor: one array job per submission, one array task per sweep job.

Each array task runs `srun python -m harness.sweeps.job JOBS_FILE $SLURM_ARRAY_TASK_ID`, once per
node; the tasks are requeued when preempted and signalled 120 s before their time limit, so
they write a checkpoint that a re-run of the sweep (or SLURM's requeue) resumes.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.core.config import ConfigError
from harness.core.launch_config import is_distributed, processes_per_node, read_launch_config
from harness.sweeps.executors import Executor, Placement, Report, SweepError, register_executor
from harness.sweeps.spec import Job, SweepSpec


@dataclass
class SlurmOptions:
    partition: str = ""
    account: str = ""
    nodes: int = 1
    gpus_per_node: int = 0  # requested as --gpus-per-node=N
    gpus_per_job: int = 0  # over all the job's nodes, requested per node as gpu_request says
    gpu_request: str = "gres"  # how --gpus-per-job is asked for: gres (--gres=gpu:N) or gpus-per-node
    constraint: str = ""  # node features, e.g. a100|h100
    cpus_per_task: int = 0
    mem: str = ""
    time: str = "04:00:00"
    max_running: int = 0  # at most this many array tasks at once (the %N of --array); 0: no limit
    sbatch_args: list[str] = field(default_factory=list)  # anything else, passed to sbatch as is

    @property
    def node_gpus(self) -> int:
        """GPUs (and training processes) per node; 0: as the launch config says."""
        if self.gpus_per_job and self.gpus_per_node:
            raise ConfigError(f"--gpus-per-job {self.gpus_per_job} and --gpus-per-node {self.gpus_per_node}: give one")
        if self.gpus_per_job % max(1, self.nodes):
            raise ConfigError(f"--gpus-per-job {self.gpus_per_job} is not a whole number per node over --nodes "
                              f"{self.nodes}")
        if self.gpu_request not in GPU_REQUESTS:
            raise ConfigError(f"--gpu-request: expected one of {list(GPU_REQUESTS)}, got {self.gpu_request!r}")
        return self.gpus_per_node or self.gpus_per_job // max(1, self.nodes)


# How a job's GPUs are asked of SLURM: a generic resource (every SLURM with GPUs in gres.conf) or,
# on clusters that schedule GPUs as a trackable resource (SLURM 19.05+), --gpus-per-node.
GPU_REQUESTS = {"gres": "--gres=gpu:{}", "gpus-per-node": "--gpus-per-node={}"}


def sbatch_script(jobs_file: Path, indices: list[int], options: SlurmOptions, python: str = sys.executable,
                  name: str = "", setup: list[str] = ()) -> str:
    """The batch script of one array job; `name` and `setup` default to those of the jobs file."""
    if not name:
        meta = json.loads(jobs_file.read_text())
        name, setup = meta["name"], setup or meta.get("spec", {}).get("setup") or []
    array = ",".join(map(str, indices)) + (f"%{options.max_running}" if options.max_running else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name(name)}", f"#SBATCH --array={array}",
             f"#SBATCH --nodes={options.nodes}", "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --time={options.time}", f"#SBATCH --output={jobs_file.parent}/logs/slurm-%A_%a.out",
             "#SBATCH --requeue",  # preempted jobs go back to the queue and resume from their checkpoint
             # SIGTERM 120 s before the time limit: the job writes a checkpoint; a re-run resumes it.
             "#SBATCH --signal=TERM@120",
             "#SBATCH --open-mode=append"]
    if options.partition:
        lines.append(f"#SBATCH --partition={options.partition}")
    if options.account:
        lines.append(f"#SBATCH --account={options.account}")
    if options.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={options.gpus_per_node}")
    elif options.gpus_per_job:
        lines.append("#SBATCH " + GPU_REQUESTS[options.gpu_request].format(options.node_gpus))
    if options.constraint:
        lines.append(f"#SBATCH --constraint={options.constraint}")
    if options.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={options.cpus_per_task}")
    if options.mem:
        lines.append(f"#SBATCH --mem={options.mem}")
    lines += [f"#SBATCH {arg}" for arg in options.sbatch_args]
    # srun does not inherit --cpus-per-task from sbatch in SLURM 22.05-23.02: pass it on.
    cpus = f" --cpus-per-task={options.cpus_per_task}" if options.cpus_per_task else ""
    if setup:  # srun's tasks inherit what they set up (modules, an activated environment, exports)
        lines += ["", "# The sweep's setup lines; the job then runs the `python` they leave on PATH.", "set -e",
                  *setup]
        python = "python"
    lines += ["", "# One array task per sweep job; srun runs it once per node (accelerate launch rendezvous",
              "# across nodes from SLURM's environment).",
              f"srun --kill-on-bad-exit=1{cpus} {shlex.quote(python)} -m harness.sweeps.job "
              f"{shlex.quote(str(jobs_file))} \"$SLURM_ARRAY_TASK_ID\"", ""]
    return "\n".join(lines)


def _stamp() -> str:
    """Names a submission's files (script, jobs copy, launch config): its time, to the nanosecond."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}"


def _main_host() -> str:
    """The first node of this SLURM job: where the processes of all nodes meet."""
    out = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def job_name(sweep_name: str) -> str:
    return f"mtl-{sweep_name}"


def _slurm(*command: str) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SweepError(f"{command[0]} not found: --executor slurm needs SLURM's client tools on this machine") \
            from None
    if out.returncode != 0:
        raise SweepError(f"{shlex.join(command)} failed ({out.returncode}): {out.stderr.strip()}")
    return out.stdout


def slurm_launch_config(source: Path, options: SlurmOptions, target: Path | None = None) -> Path | None:
    """The launch config as the SLURM job will run it: --gpus-per-node N on --nodes M gives N x M
    processes on M machines. A single-process config cannot use more than one GPU or node."""
    import yaml

    if options.nodes < 1 or options.gpus_per_node < 0 or options.gpus_per_job < 0:
        raise ConfigError(f"--nodes must be >= 1 and --gpus-per-node, --gpus-per-job >= 0, got {options.nodes}, "
                          f"{options.gpus_per_node} and {options.gpus_per_job}")
    config = read_launch_config(source)
    per_node = options.node_gpus or processes_per_node(config)
    total = per_node * options.nodes
    if total > 1 and not is_distributed(config):
        raise ConfigError(f"launch config {source} runs one process (distributed_type NO), but --nodes "
                          f"{options.nodes} x {per_node} processes per node asks for {total}: use launch/ddp.yaml "
                          "or launch/zero*.yaml")
    config.update(num_processes=total, num_machines=options.nodes)
    if "deepspeed_config" in config and "deepspeed_config_file" in config["deepspeed_config"]:
        path = Path(config["deepspeed_config"]["deepspeed_config_file"])
        config["deepspeed_config"]["deepspeed_config_file"] = str(path.resolve())
    if target is None:  # only checked
        return None
    target.write_text(yaml.safe_dump(config, sort_keys=False))
    return target


@register_executor
class SlurmExecutor(Executor):
    name = "slurm"
    description = "a SLURM cluster: one array job per submission (sbatch), requeued when preempted"
    detaches = True

    def __init__(self, options: SlurmOptions | None = None, poll: float = 5.0):
        self.options = options or SlurmOptions()
        self.poll = poll
        self.job_id = ""

    @classmethod
    def add_arguments(cls, group: argparse._ArgumentGroup) -> None:
        group.add_argument("--partition", default="", help="the partition (default: the cluster's)")
        group.add_argument("--account", default="", help="the account to charge (default: yours)")
        group.add_argument("--nodes", type=int, default=1, help="nodes per job, for a multi-node accelerate "
                                                                "launch (default: 1)")
        group.add_argument("--gpus-per-job", type=int, default=0,
                           help="GPUs per job (over its --nodes), one training process each, asked for as "
                                "--gpu-request says (default: 0, the launch config's process count)")
        group.add_argument("--gpu-request", default="gres", choices=tuple(GPU_REQUESTS),
                           help="how --gpus-per-job is asked for: gres (--gres=gpu:N per node, any SLURM with GPUs "
                                "in gres.conf) or gpus-per-node (--gpus-per-node=N) (default: gres)")
        group.add_argument("--gpus-per-node", type=int, default=0,
                           help="GPUs per node, one process each, asked for as --gpus-per-node=N (default: 0, the "
                                "launch config's process count)")
        group.add_argument("--constraint", default="", help="node features the jobs need, e.g. a100 (sbatch "
                                                            "--constraint)")
        group.add_argument("--cpus-per-task", type=int, default=0, help="CPUs per node and job (default: the "
                                                                        "cluster's)")
        group.add_argument("--mem", default="", help="memory per node, e.g. 64G (default: the cluster's)")
        group.add_argument("--time", default="04:00:00", help="time limit per job (default: 04:00:00); a job "
                                                              "stopped by it resumes from its checkpoint on re-run")
        group.add_argument("--max-running", type=int, default=0, help="at most this many jobs at once "
                                                                      "(--array %%N; default: 0, no limit)")
        group.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                           help="an extra sbatch option, e.g. --sbatch-arg=--qos=high (repeatable)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SlurmExecutor:
        return cls(SlurmOptions(args.partition, args.account, args.nodes, args.gpus_per_node, args.gpus_per_job,
                                args.gpu_request, args.constraint, args.cpus_per_task, args.mem, args.time,
                                args.max_running, args.sbatch_arg))

    def check(self, spec: SweepSpec) -> None:
        slurm_launch_config(Path(spec.launch_config), self.options)  # fails now, not when the jobs start

    def active(self, folder: Path) -> set[str]:
        record = folder / "submissions.jsonl"
        if not record.exists():
            return set()
        submissions = {s["job_id"]: s for s in map(json.loads, record.read_text().splitlines())}
        # By name: `squeue -j ID` fails once SLURM has forgotten a finished job (MinJobAge).
        out = _slurm("squeue", "-h", "-r", "--name", job_name(folder.name), "-o", "%i")
        active = set()
        for task_id in out.split():
            array_id, _, index = task_id.partition("_")
            if array_id in submissions and index.isdigit():
                active.add(submissions[array_id]["keys"][index])
        return active

    def dry_run(self, folder: Path, spec: SweepSpec, jobs: list[Job]) -> str:
        """The batch script `submit` would write and submit for these jobs now."""
        stamp = _stamp()
        script = sbatch_script(folder / f"jobs-{stamp}.json", [j.index for j in jobs], self.options, name=spec.name,
                               setup=spec.setup)
        return f"--- {folder / f'sbatch-{stamp}.sh'} (sbatch --parsable)\n{script}---"

    def submit(self, jobs_file: Path, jobs: list[Job], report: Report) -> str:
        """One array job for `jobs`. It reads its own copy of jobs.json: a later re-run of the sweep
        rewrites jobs.json, and tasks still pending must keep the indices they were submitted with."""
        folder = jobs_file.parent
        (folder / "logs").mkdir(exist_ok=True)
        stamp = _stamp()
        meta = json.loads(jobs_file.read_text())
        meta["launch_config"] = str(slurm_launch_config(Path(meta["launch_config"]), self.options,
                                                        folder / f"launch-{stamp}.yaml"))
        own = folder / f"jobs-{stamp}.json"
        own.write_text(json.dumps(meta, indent=1))
        script = folder / f"sbatch-{stamp}.sh"
        script.write_text(sbatch_script(own, [j.index for j in jobs], self.options))
        self.job_id = _slurm("sbatch", "--parsable", str(script)).strip().split(";")[0]
        with open(folder / "submissions.jsonl", "a") as fp:
            fp.write(json.dumps({"job_id": self.job_id, "keys": {str(j.index): j.key for j in jobs},
                                 "script": str(script), "time": time.time()}) + "\n")
        return f"submitted SLURM array job {self.job_id} ({len(jobs)} tasks); logs in {folder / 'logs'}"

    @classmethod
    def placement(cls) -> Placement:
        """From SLURM's environment: srun runs the job runner once per node, each with its node id."""
        env = os.environ
        nodes = int(env.get("SLURM_NNODES", "1"))
        array = env.get("SLURM_ARRAY_JOB_ID")
        job_id = f"{array}_{env['SLURM_ARRAY_TASK_ID']}" if array else env.get("SLURM_JOB_ID", "")
        return Placement(machines=nodes, machine_rank=int(env.get("SLURM_NODEID", "0")),
                         main_host=_main_host() if nodes > 1 else "",
                         # The same on every node of the job, and different from other jobs sharing a node.
                         port=20000 + int(env["SLURM_JOB_ID"]) % 20000 if env.get("SLURM_JOB_ID") else 0,
                         cpus=int(env.get("SLURM_CPUS_ON_NODE") or 0),
                         tags={"slurm.job_id": job_id} if job_id else {})

    def wait(self, timeout: float | None = None) -> None:
        """Until no task of the submitted array job is pending, running or completing."""
        started = time.time()
        while any(t.partition("_")[0] == self.job_id for t in _slurm("squeue", "-h", "-r", "-o", "%i").split()):
            if timeout is not None and time.time() - started > timeout:
                raise SweepError(f"SLURM job {self.job_id} still queued or running after {timeout:.0f} s")
            time.sleep(self.poll)
