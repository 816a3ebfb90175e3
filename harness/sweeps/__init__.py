"""Sweeps: variants x seeds x config overrides, run by an executor, tracked as one MLflow parent
run with a child run per job.

Read in this order:
- `spec.py`: a sweep file or command line (`SweepSpec`), expanded into `Job`s, and the sweep's
  files (jobs.json, one config.json per job).
- `labels.py`: a job's label (the variant, then its grid values as setting=value), built and read
  back; `mtl-bench compare` groups a sweep's seeds by it.
- `records.py`: the MLflow parent run and the job runs below it.
- `job.py`: what runs one job wherever an executor puts it (`python -m harness.sweeps.job FILE
  INDEX`): `accelerate launch` of the harness with the job's config file, resumed from the job's
  latest checkpoint if it has one.
- `executors/`: where jobs run, one module per executor (`local`, `slurm`, `ray`) behind
  `Executor`.
- `search.py`: a search sweep (the file's `search:`): Optuna studies whose trials are jobs.
- `run.py`: `run_sweep`, which ties them together.

A sweep has a name (its id); running the same sweep again skips jobs whose MLflow run FINISHED
and queues the others again. Its files live in <output_dir>/sweeps/<name>/. How to use it:
docs/sweeps.md.
"""
from harness.sweeps.executors import Executor, SweepError, get_executor, list_executors
from harness.sweeps.run import run_sweep
from harness.sweeps.spec import Job, SweepSpec, expand, load_spec

__all__ = ["Executor", "Job", "SweepError", "SweepSpec", "expand", "get_executor", "list_executors", "load_spec",
           "run_sweep"]
