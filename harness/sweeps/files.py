"""The files a sweep's jobs are run from: jobs.json (the sweep and its jobs, for the job runner) and
each job's config.json; the sweep's folder and tracking store."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from harness.core.config import TrainConfig, resolve_config, write_config
from harness.sweeps.spec import Job, SweepSpec


def sweep_dir(spec: SweepSpec) -> Path:
    output_dir = spec.set.get("output_dir", TrainConfig.output_dir)
    return (Path(output_dir) / "sweeps" / spec.name).resolve()


def tracking_of(spec: SweepSpec) -> tuple[str, str]:
    """The sweep's tracking URI and experiment: its settings', else the defaults."""
    from harness.tracking.tracker import resolve_tracking_uri

    return (resolve_tracking_uri(spec.set.get("tracking_uri", "")),
            spec.set.get("experiment", TrainConfig.experiment))


def job_config(job: Job, sweep: str, parent_run_id: str, folder: Path) -> TrainConfig:
    """The job's whole training config: its settings and options, and its place in the sweep."""
    return resolve_config({**job.settings, "variant": job.variant, "seed": job.seed,
                           "variant_options": dict(job.options), "parent_run_id": parent_run_id,
                           "sweep_id": sweep, "sweep_job": job.key, "sweep_label": job.label,
                           "run_name": job.run_name, "output_dir": str(folder / "jobs" / job.key),
                           "progress": False})


def job_config_path(jobs_file: Path, job: Job) -> Path:
    return jobs_file.parent / "jobs" / job.key / "config.json"


def write_jobs_file(folder: Path, spec: SweepSpec, jobs: list[Job], parent_run_id: str, tracking_uri: str,
                    experiment: str, executor: str = "local") -> Path:
    """jobs.json (the sweep and its jobs, for the job runner) and every job's config.json."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "jobs.json"
    for job in jobs:
        write_config(job_config(job, spec.name, parent_run_id, folder), job_config_path(path, job))
    meta = {"name": spec.name, "executor": executor, "parent_run_id": parent_run_id,
            "launch_config": str(Path(spec.launch_config).resolve()), "cwd": str(Path.cwd()),
            "env": {"MLFLOW_TRACKING_URI": tracking_uri}, "experiment": experiment,
            "spec": dataclasses.asdict(spec), "jobs": [dataclasses.asdict(j) for j in jobs]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(meta, indent=1, default=str))
    tmp.replace(path)
    return path
