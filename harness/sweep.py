"""Sweeps: variants x seeds x config overrides, queued locally or on SLURM, tracked as one MLflow
parent run with a child run per job.

Read `run_sweep` first. A sweep has a name (its id); running the same sweep again skips jobs
whose MLflow run FINISHED and queues the others again. Every job runs `run_job` (through
`python -m harness.sweep job FILE INDEX`), which launches the harness with `accelerate launch`
and resumes from the job's latest checkpoint if there is one: a job that was preempted,
cancelled or timed out continues where it stopped, in the same MLflow run.

Files of a sweep live in <output_dir>/sweeps/<name>/: jobs.json (the expanded jobs),
jobs/<key>/ (each job's output folders), logs/ (one log per job and attempt), and for SLURM
the generated sbatch scripts and submissions.jsonl (the array job ids).
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import ConfigError, TrainConfig, resolve_config

PARENT_ROLE = "sweep"  # tag sweep.role of the parent run
_NOT_OVERRIDABLE = {"variant", "seed", "variant_options", "parent_run_id", "sweep_id", "sweep_job", "sweep_label",
                    "resume", "run_name", "launch_config", "progress"}


@dataclass
class SweepSpec:
    """What a sweep file (YAML, see launch/sweeps/) or the command line describes."""

    name: str
    variants: list[str]
    seeds: list[int]
    set: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every job
    grid: dict[str, list] = field(default_factory=dict)  # TrainConfig fields to vary: every combination
    options: dict[str, Any] = field(default_factory=dict)  # variant options, for the variants that have them
    launch_config: str = "launch/single.yaml"


@dataclass
class Job:
    index: int
    key: str  # stable: the same variant, seed and settings give the same key in every re-run
    label: str  # the variant and any grid values; `mtl-bench compare` groups seeds by it
    variant: str
    seed: int
    settings: dict[str, Any]  # TrainConfig fields (set + grid values)
    options: dict[str, Any]  # variant options

    @property
    def run_name(self) -> str:
        return f"{self.label} s{self.seed}".replace(" ", "_")


class SweepError(RuntimeError):
    """A sweep cannot be expanded, submitted or followed; the message says why."""


# ---------------------------------------------------------------------------------------------
# Expanding a sweep into jobs


def _convert(name: str, value: Any) -> Any:
    """A TrainConfig field's value from a string (command line) or YAML value, checked for type."""
    hints = typing.get_type_hints(TrainConfig)
    if name not in hints or name in _NOT_OVERRIDABLE:
        allowed = sorted(set(hints) - _NOT_OVERRIDABLE)
        raise ConfigError(f"sweep setting {name!r}: not a setting a sweep can vary; known: {allowed}")
    hint = hints[name]
    if not isinstance(value, str):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
            return value
        raise ConfigError(f"sweep setting {name}: expected {hint.__name__}, got {value!r}")
    try:
        if hint is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return value.lower() in ("true", "1", "yes")
        return hint(value)
    except ValueError:
        raise ConfigError(f"sweep setting {name}: expected {hint.__name__}, got {value!r}") from None


def load_spec(path: str | os.PathLike | None, name: str = "", variants: list[str] | None = None,
              seeds: list[int] | None = None, settings: list[str] = (), grid: list[str] = (),
              options: list[str] = (), launch_config: str = "") -> SweepSpec:
    """A sweep file's spec, with command-line values replacing or adding to it."""
    data: dict[str, Any] = {}
    if path:
        import yaml

        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"sweep file {path}: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"sweep file {path}: expected a mapping of name, variants, seeds, set, grid, options")
        known = {f.name for f in dataclasses.fields(SweepSpec)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"sweep file {path}: unknown key(s) {unknown}; known: {sorted(known)}")
        data.setdefault("name", path.stem)
    where = f"sweep file {path}" if path else "sweep"
    if name:
        data["name"] = name
    if variants:
        data["variants"] = variants
    if seeds:
        data["seeds"] = seeds
    if launch_config:
        data["launch_config"] = launch_config
    for key in ("set", "grid", "options"):
        if not isinstance(data.get(key) or {}, dict):
            raise ConfigError(f"{where}: {key!r} must be a mapping of NAME: VALUE, got {data[key]!r}")
        data[key] = dict(data.get(key) or {})
    for pair in settings:
        key, value = _pair(pair, "--set")
        data["set"][key] = value
    for pair in grid:
        key, value = _pair(pair, "--grid")
        data["grid"][key] = value.split(",")
    for pair in options:
        key, value = _pair(pair, "--option")
        data["options"][key] = value
    for required in ("name", "variants", "seeds"):
        if not data.get(required):
            raise ConfigError(f"{where}: {required!r} is missing (give it in the file or as --{required})")
    if not str(data["name"]).replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise ConfigError(f"{where}: name {data['name']!r} may hold only letters, digits, '-', '_' and '.'")
    for key in ("variants", "seeds"):
        if not isinstance(data[key], list):
            example = "[multitask, pals-top]" if key == "variants" else "[0, 1, 2]"
            raise ConfigError(f"{where}: {key!r} must be a list, e.g. {example}, got {data[key]!r}")
        if len(set(map(str, data[key]))) != len(data[key]):
            raise ConfigError(f"{where}: {key!r} lists a value twice: {data[key]!r}")
    try:
        data["seeds"] = [int(s) for s in data["seeds"]]
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: seeds must be integers, got {data['seeds']!r}") from None
    both = sorted(set(data["set"]) & set(data["grid"]))
    if both:
        raise ConfigError(f"{where}: {both} both set for every job and varied in the grid; give each in one place")
    data["set"] = {k: _convert(k, v) for k, v in data["set"].items()}
    for key, values in data["grid"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid {key!r} must be a non-empty list of values, got {values!r}")
        data["grid"][key] = [_convert(key, v) for v in values]
    data["variants"] = [str(v) for v in data["variants"]]
    data["name"] = str(data["name"])
    return SweepSpec(**data)


def _pair(pair: str, flag: str) -> tuple[str, str]:
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{flag} {pair!r}: expected NAME=VALUE")
    return key.strip().replace("-", "_"), value


def expand(spec: SweepSpec) -> list[Job]:
    """Every variant x grid point x seed, each validated as a training config before anything runs."""
    from variants import VariantError, get_variant, make_config

    option_takers = {}
    for variant in spec.variants:
        fields = {f.name for f in dataclasses.fields(get_variant(variant).config_class)}
        option_takers[variant] = {k: v for k, v in spec.options.items() if k in fields}
    for option in spec.options:
        if not any(option in taken for taken in option_takers.values()):
            raise ConfigError(f"sweep option {option!r}: none of the variants {spec.variants} has it "
                              "(see `mtl-bench variants --options`)")
    jobs = []
    grid_keys = sorted(spec.grid)
    for variant in spec.variants:
        for point in itertools.product(*(spec.grid[k] for k in grid_keys)):
            grid_values = dict(zip(grid_keys, point))
            label = " ".join([variant] + [f"{k}={v}" for k, v in grid_values.items()])
            for seed in spec.seeds:
                settings = {**spec.set, **grid_values}
                options = option_takers[variant]
                try:
                    config = resolve_config({**settings, "variant": variant, "seed": seed,
                                             "variant_options": dict(options)})
                    typed = make_config(variant, config.variant_settings())
                except (ConfigError, VariantError) as exc:
                    raise ConfigError(f"sweep {spec.name}, job {label} seed {seed}: {exc}") from None
                # Typed values: `pal_size: 204` in a file and `-o pal_size=204` are the same job.
                identity = json.dumps({"variant": variant, "seed": seed, "settings": settings,
                                       "options": {k: getattr(typed, k) for k in options}},
                                      sort_keys=True, default=str)
                # (How a job is launched is not part of it: the same training on other hardware is the same job.)
                key = hashlib.sha256(identity.encode()).hexdigest()[:12]
                jobs.append(Job(len(jobs), key, label, variant, seed, settings, dict(options)))
    return jobs


# ---------------------------------------------------------------------------------------------
# The sweep's files and its MLflow parent run


def sweep_dir(spec: SweepSpec) -> Path:
    output_dir = spec.set.get("output_dir", TrainConfig.output_dir)
    return (Path(output_dir) / "sweeps" / spec.name).resolve()


def tracking_of(spec: SweepSpec) -> tuple[str, str]:
    from harness.tracking import resolve_tracking_uri

    return (resolve_tracking_uri(spec.set.get("tracking_uri", "")),
            spec.set.get("experiment", TrainConfig.experiment))


def parent_run(client, experiment_id: str, spec: SweepSpec, jobs: list[Job], executor: str) -> str:
    """The sweep's parent run: found by its tags when the sweep is re-run, else created."""
    from harness.tracking import _retry

    found = _retry(lambda: client.search_runs(
        [experiment_id], f"tags.`sweep.id` = '{spec.name}' and tags.`sweep.role` = '{PARENT_ROLE}'", max_results=1))
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return run_id
    run = _retry(lambda: client.create_run(experiment_id, run_name=spec.name, tags={
        "sweep.id": spec.name, "sweep.role": PARENT_ROLE, "sweep.jobs": str(len(jobs)),
        "mlflow.note.content": f"Sweep {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds "
                               f"({len(jobs)} jobs); its jobs are the child runs below it."}))
    from mlflow.entities import Param

    params = {"variants": ",".join(spec.variants), "seeds": ",".join(map(str, spec.seeds)),
              "launch_config": spec.launch_config, "executor": executor,
              **{f"set.{k}": v for k, v in spec.set.items()}, **{f"grid.{k}": ",".join(map(str, v))
                                                                 for k, v in spec.grid.items()},
              **{f"option.{k}": v for k, v in spec.options.items()}}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def job_runs(client, experiment_id: str, sweep_id: str) -> dict[str, list]:
    """The MLflow runs of a sweep's jobs, by job key (a job can have several: one per fresh start)."""
    from harness.tracking import search_all_runs

    out: dict[str, list] = {}
    for run in search_all_runs(client, [experiment_id], f"tags.`sweep.id` = '{sweep_id}'"):
        if run.data.tags.get("sweep.role") != PARENT_ROLE:
            out.setdefault(run.data.tags.get("sweep.job", ""), []).append(run)
    return out


def job_state(runs: list) -> str:
    statuses = {r.info.status for r in runs}
    for status in ("FINISHED", "RUNNING", "KILLED", "FAILED"):
        if status in statuses:
            return status
    return "MISSING" if not runs else sorted(statuses)[0]


# ---------------------------------------------------------------------------------------------
# Running one job (on this machine, or as a SLURM array task)


def _main_host() -> str:
    """The first node of this SLURM job: where the processes of all nodes meet."""
    out = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                         capture_output=True, text=True, check=True)
    return out.stdout.split()[0]


def _job_command(jobs_file: Path, job: Job, meta: dict, resume: Path | None) -> list[str]:
    """`accelerate launch` of the harness for one job. The launch config holds the total process
    count (for SLURM, `submit_slurm` wrote one for the requested nodes x GPUs)."""
    import yaml

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--config_file",
              meta["launch_config"]]
    config = yaml.safe_load(Path(meta["launch_config"]).read_text()) or {}
    nodes = int(os.environ.get("SLURM_NNODES", "1"))
    if int(config.get("num_processes", 1)) > 1 or nodes > 1:
        # A port of this job's own: jobs sharing a node must not meet on accelerate's default 29500.
        job_id = os.environ.get("SLURM_JOB_ID")
        port = 20000 + int(job_id) % 20000 if job_id else 29500 + 1 + job.index % 1000
        launch += ["--main_process_port", str(port)]
    if nodes > 1:  # every node runs this; its rank from SLURM; all meet on the first node
        launch += ["--num_machines", str(nodes), "--machine_rank", os.environ["SLURM_NODEID"],
                   "--main_process_ip", _main_host()]
    train = ["-m", "harness.cli", "train", "--variant", job.variant, "--seed", str(job.seed),
             "--parent-run-id", meta["parent_run_id"], "--sweep-id", meta["name"], "--sweep-job", job.key,
             "--sweep-label", job.label, "--run-name", job.run_name, "--launch-config", meta["launch_config"],
             "--output-dir", str(jobs_file.parent / "jobs" / job.key), "--no-progress"]
    hints = typing.get_type_hints(TrainConfig)
    for name, value in job.settings.items():
        if name == "output_dir":
            continue
        flag = "--" + name.replace("_", "-")
        if hints[name] is bool:
            train.append(flag if value else "--no-" + name.replace("_", "-"))
        else:
            train += [flag, str(value)]
    for name, value in job.options.items():
        train += ["-o", f"{name}={','.join(value) if isinstance(value, (list, tuple)) else value}"]
    if resume:
        train += ["--resume", str(resume)]
    return launch + train


def latest_checkpoint(job_dir: Path) -> Path | None:
    """The run folder under a job's folder holding the newest complete checkpoint, if any."""
    from harness.checkpoint import CHECKPOINT_PREFIX

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
    command = _job_command(jobs_file, job, meta, resume)
    print(f"sweep {meta['name']} job {index} ({job.run_name}, key {job.key})"
          + (f", resuming {resume}" if resume else ""), flush=True)
    print(shlex.join(command), flush=True)
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    env = {**os.environ, **meta.get("env", {})}
    if "OMP_NUM_THREADS" not in env:
        # `accelerate launch` sets OMP_NUM_THREADS=1 when it is unset: on CPUs that halves a 2-core
        # machine's speed. Give each process of this node its share of the node's CPUs instead.
        import yaml

        config = yaml.safe_load(Path(meta["launch_config"]).read_text()) or {}
        local = max(1, int(config.get("num_processes", 1)) // int(config.get("num_machines", 1)))
        cpus = int(env.get("SLURM_CPUS_ON_NODE") or len(os.sched_getaffinity(0)))
        env["OMP_NUM_THREADS"] = str(max(1, cpus // local))
    child = subprocess.Popen(command, cwd=meta["cwd"], env=env)

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


# ---------------------------------------------------------------------------------------------
# Executors


def _write_jobs_file(folder: Path, spec: SweepSpec, jobs: list[Job], parent_run_id: str, tracking_uri: str,
                     experiment: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "jobs.json"
    meta = {"name": spec.name, "parent_run_id": parent_run_id, "launch_config": str(Path(spec.launch_config).resolve()),
            "cwd": str(Path.cwd()),
            "env": {"MLFLOW_TRACKING_URI": tracking_uri}, "experiment": experiment,
            "spec": dataclasses.asdict(spec), "jobs": [dataclasses.asdict(j) for j in jobs]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    tmp.replace(path)
    return path


def run_local(jobs_file: Path, indices: list[int], parallel: int, on_done) -> None:
    """Runs the jobs on this machine, `parallel` at a time, each with its share of the CPU threads."""
    from concurrent.futures import ThreadPoolExecutor

    logs = jobs_file.parent / "logs"
    logs.mkdir(exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // parallel)

    def one(index: int) -> tuple[int, int, float]:
        started = time.time()
        log = logs / f"job-{index:03d}-{time.strftime('%Y%m%d-%H%M%S')}.log"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if parallel > 1 else None
        with open(log, "w") as fp:
            code = subprocess.run([sys.executable, "-m", "harness.sweep", "job", str(jobs_file), str(index)],
                                  stdout=fp, stderr=subprocess.STDOUT, env=env).returncode
        return index, code, time.time() - started

    pool = ThreadPoolExecutor(max_workers=parallel)
    futures = [pool.submit(one, i) for i in indices]
    try:
        for future in futures:
            on_done(*future.result())
    except KeyboardInterrupt:
        # Ctrl-C reached the running jobs too: they write a checkpoint and stop. Start no more.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()


@dataclass
class SlurmOptions:
    partition: str = ""
    account: str = ""
    nodes: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 0
    mem: str = ""
    time: str = "04:00:00"
    max_running: int = 0  # at most this many array tasks at once (the %N of --array); 0: no limit
    sbatch_args: list[str] = field(default_factory=list)  # anything else, passed to sbatch as is


def sbatch_script(jobs_file: Path, indices: list[int], options: SlurmOptions, python: str = sys.executable) -> str:
    name = json.loads(jobs_file.read_text())["name"]
    array = ",".join(map(str, indices)) + (f"%{options.max_running}" if options.max_running else "")
    lines = ["#!/bin/bash", f"#SBATCH --job-name={_job_name(name)}", f"#SBATCH --array={array}",
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
    if options.cpus_per_task:
        lines.append(f"#SBATCH --cpus-per-task={options.cpus_per_task}")
    if options.mem:
        lines.append(f"#SBATCH --mem={options.mem}")
    lines += [f"#SBATCH {arg}" for arg in options.sbatch_args]
    # srun does not inherit --cpus-per-task from sbatch in SLURM 22.05-23.02: pass it on.
    cpus = f" --cpus-per-task={options.cpus_per_task}" if options.cpus_per_task else ""
    lines += ["", "# One array task per sweep job; srun runs it once per node (accelerate launch rendezvous",
              "# across nodes from SLURM's environment).",
              f"srun --kill-on-bad-exit=1{cpus} {shlex.quote(python)} -m harness.sweep job "
              f"{shlex.quote(str(jobs_file))} \"$SLURM_ARRAY_TASK_ID\"", ""]
    return "\n".join(lines)


def _job_name(sweep_name: str) -> str:
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


def active_slurm_jobs(folder: Path) -> set[str]:
    """Keys of this sweep's jobs still pending or running in SLURM (from earlier submissions)."""
    record = folder / "submissions.jsonl"
    if not record.exists():
        return set()
    submissions = {s["job_id"]: s for s in map(json.loads, record.read_text().splitlines())}
    # By name: `squeue -j ID` fails once SLURM has forgotten a finished job (MinJobAge).
    out = _slurm("squeue", "-h", "-r", "--name", _job_name(folder.name), "-o", "%i")
    active = set()
    for task_id in out.split():
        array_id, _, index = task_id.partition("_")
        if array_id in submissions and index.isdigit():
            active.add(submissions[array_id]["keys"][index])
    return active


def slurm_launch_config(source: Path, options: SlurmOptions, target: Path | None = None) -> Path | None:
    """The launch config as the SLURM job will run it: --gpus-per-node N on --nodes M gives N x M
    processes on M machines. A single-process config cannot use more than one GPU or node."""
    import yaml

    if options.nodes < 1 or options.gpus_per_node < 0:
        raise ConfigError(f"--nodes must be >= 1 and --gpus-per-node >= 0, got {options.nodes} and "
                          f"{options.gpus_per_node}")
    config = yaml.safe_load(source.read_text()) or {}
    per_node = options.gpus_per_node or int(config.get("num_processes", 1)) // int(config.get("num_machines", 1))
    total = per_node * options.nodes
    if total > 1 and str(config.get("distributed_type", "NO")) == "NO":
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


def submit_slurm(jobs_file: Path, jobs: list[Job], options: SlurmOptions) -> str:
    """One array job for `jobs`. It reads its own copy of jobs.json: a later re-run of the sweep
    rewrites jobs.json, and tasks still pending must keep the indices they were submitted with."""
    folder = jobs_file.parent
    (folder / "logs").mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{time.time_ns() % 10**9:09d}"
    meta = json.loads(jobs_file.read_text())
    meta["launch_config"] = str(slurm_launch_config(Path(meta["launch_config"]), options,
                                                    folder / f"launch-{stamp}.yaml"))
    own = folder / f"jobs-{stamp}.json"
    own.write_text(json.dumps(meta, indent=1))
    script = folder / f"sbatch-{stamp}.sh"
    script.write_text(sbatch_script(own, [j.index for j in jobs], options))
    job_id = _slurm("sbatch", "--parsable", str(script)).strip().split(";")[0]
    with open(folder / "submissions.jsonl", "a") as fp:
        fp.write(json.dumps({"job_id": job_id, "keys": {str(j.index): j.key for j in jobs}, "script": str(script),
                             "time": time.time()}) + "\n")
    return job_id


def wait_slurm(job_id: str, poll: float = 5.0, timeout: float | None = None) -> None:
    """Until no task of array job `job_id` is pending, running or completing."""
    started = time.time()
    while any(t.partition("_")[0] == job_id for t in _slurm("squeue", "-h", "-r", "-o", "%i").split()):
        if timeout is not None and time.time() - started > timeout:
            raise SweepError(f"SLURM job {job_id} still queued or running after {timeout:.0f} s")
        time.sleep(poll)


# ---------------------------------------------------------------------------------------------
# The sweep


def run_sweep(spec: SweepSpec, executor: str = "local", parallel: int = 1, slurm: SlurmOptions | None = None,
              wait: bool = True, dry_run: bool = False, out=print) -> dict[str, str]:
    """Expands, records and queues a sweep; returns each job key's MLflow state at the end."""
    from mlflow.tracking import MlflowClient

    from harness.tracking import _get_or_create_experiment, _retry, _store_lock, check_reachable

    if executor not in ("local", "slurm"):
        raise ConfigError(f"--executor: expected local or slurm, got {executor!r}")
    if parallel < 1:
        raise ConfigError(f"--parallel: expected a positive number of jobs at a time, got {parallel}")
    if not Path(spec.launch_config).is_file():
        raise ConfigError(f"launch_config: {spec.launch_config} does not exist (see launch/)")
    jobs = expand(spec)
    if executor == "slurm":
        slurm = slurm or SlurmOptions()
        slurm_launch_config(Path(spec.launch_config), slurm)  # fails now, not when the jobs start
    folder = sweep_dir(spec)
    tracking_uri, experiment = tracking_of(spec)
    if dry_run:
        for job in jobs:
            out(f"{job.index:4d} {job.key} {job.run_name}")
        out(f"{len(jobs)} jobs; files in {folder}; tracking {tracking_uri}, experiment {experiment}")
        return {}
    check_reachable(tracking_uri)
    with _store_lock(tracking_uri):
        client = _retry(lambda: MlflowClient(tracking_uri))
        # Created once here, before any job starts: concurrent creation by jobs would race.
        experiment_id = _retry(lambda: _get_or_create_experiment(client, experiment, tracking_uri))
    parent_id = parent_run(client, experiment_id, spec, jobs, executor)
    jobs_file = _write_jobs_file(folder, spec, jobs, parent_id, tracking_uri, experiment)
    client.log_artifact(parent_id, str(jobs_file))
    states = {key: job_state(runs) for key, runs in job_runs(client, experiment_id, spec.name).items()}
    todo = [j for j in jobs if states.get(j.key) != "FINISHED"]
    if executor == "slurm":
        active = active_slurm_jobs(folder)
        todo = [j for j in todo if j.key not in active]
        if active:
            out(f"{len(active)} job(s) still queued or running in SLURM: not submitted again")
    out(f"sweep {spec.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} finished or in progress, "
        f"{len(todo)} to run (parent run {parent_id}, experiment {experiment}, {tracking_uri})")
    started = time.time()
    if todo and executor == "local":
        done = [0]

        def report(index: int, code: int, seconds: float) -> None:
            done[0] += 1
            runs = job_runs(client, experiment_id, spec.name).get(jobs[index].key, [])
            out(f"[{done[0]}/{len(todo)}] {jobs[index].run_name}: {job_state(runs)} (exit {code}) "
                f"in {seconds / 60:.1f} min")

        try:
            run_local(jobs_file, [j.index for j in todo], parallel, report)
        except KeyboardInterrupt:
            client.set_terminated(parent_id, "KILLED")
            out(f"sweep {spec.name}: interrupted; running jobs wrote a checkpoint. Run the same command to go on.")
            raise
    elif todo:
        job_id = submit_slurm(jobs_file, todo, slurm)
        out(f"submitted SLURM array job {job_id} ({len(todo)} tasks); logs in {folder / 'logs'}")
        if wait:
            wait_slurm(job_id)
    final = {key: job_state(runs) for key, runs in job_runs(client, experiment_id, spec.name).items()}
    states = {j.key: final.get(j.key, "MISSING") for j in jobs}
    if executor == "local" or wait:
        finished = sum(s == "FINISHED" for s in states.values())
        client.set_tag(parent_id, "sweep.finished_jobs", str(finished))
        if finished == len(jobs):
            client.set_terminated(parent_id, "FINISHED")
        else:
            client.set_terminated(parent_id, "FAILED")
        out(f"sweep {spec.name}: {finished}/{len(jobs)} jobs finished"
            + (f" ({time.time() - started:.0f} s)" if todo else "")
            + ("" if finished == len(jobs) else "; run the same command again to re-run the others"))
    return states


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 3 and argv[0] == "job":
        return run_job(argv[1], int(argv[2]))
    print("usage: python -m harness.sweep job JOBS_FILE INDEX (used by `mtl-bench sweep`)", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
