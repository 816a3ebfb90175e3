"""`run_sweep`: expand, record, submit what has not finished, follow it to the end."""
from __future__ import annotations

import time
from pathlib import Path

from harness.config import ConfigError
from harness.sweeps.executors import Executor
from harness.sweeps.records import finish_parent, job_runs, job_state, parent_run
from harness.sweeps.spec import SweepSpec, expand, sweep_dir, tracking_of, write_jobs_file


def run_sweep(spec: SweepSpec, executor: Executor, wait: bool = True, dry_run: bool = False,
              out=print) -> dict[str, str]:
    """Expands, records and queues a sweep; returns each job key's MLflow state at the end.

    With an executor that detaches (SLURM) and `wait=False`, it returns once the jobs are queued
    and leaves the parent run RUNNING; a later run of the same sweep reports on them."""
    from mlflow.tracking import MlflowClient

    from harness.tracking import check_reachable, get_or_create_experiment, retry, store_lock

    if not Path(spec.launch_config).is_file():
        raise ConfigError(f"launch_config: {spec.launch_config} does not exist (see launch/)")
    jobs = expand(spec)
    executor.check(spec)
    folder = sweep_dir(spec)
    tracking_uri, experiment = tracking_of(spec)
    if dry_run:
        for job in jobs:
            out(f"{job.index:4d} {job.key} {job.run_name}")
        out(f"{len(jobs)} jobs; files in {folder}; tracking {tracking_uri}, experiment {experiment}")
        return {}
    check_reachable(tracking_uri)
    with store_lock(tracking_uri):
        client = retry(lambda: MlflowClient(tracking_uri))
        # Created once here, before any job starts: concurrent creation by jobs would race.
        experiment_id = retry(lambda: get_or_create_experiment(client, experiment, tracking_uri))
    parent_id = parent_run(client, experiment_id, spec, jobs, executor.name)
    jobs_file = write_jobs_file(folder, spec, jobs, parent_id, tracking_uri, experiment, executor.name)
    client.log_artifact(parent_id, str(jobs_file))
    states = {key: job_state(runs) for key, runs in job_runs(client, experiment_id, spec.name).items()}
    todo = [j for j in jobs if states.get(j.key) != "FINISHED"]
    active = executor.active(folder)
    if active:
        todo = [j for j in todo if j.key not in active]
        out(f"{len(active)} job(s) still queued or running ({executor.name}): not submitted again")
    out(f"sweep {spec.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} finished or in progress, "
        f"{len(todo)} to run (parent run {parent_id}, experiment {experiment}, {tracking_uri})")
    started = time.time()
    waits = wait or not executor.detaches
    if todo:
        done = [0]

        def report(index: int, code: int, seconds: float) -> None:
            done[0] += 1
            runs = job_runs(client, experiment_id, spec.name).get(jobs[index].key, [])
            out(f"[{done[0]}/{len(todo)}] {jobs[index].run_name}: {job_state(runs)} (exit {code}) "
                f"in {seconds / 60:.1f} min")

        out(executor.submit(jobs_file, todo, report))
        if waits:
            try:
                executor.wait()
            except KeyboardInterrupt:
                client.set_terminated(parent_id, "KILLED")
                out(f"sweep {spec.name}: interrupted; running jobs wrote a checkpoint. Run the same command to "
                    "go on.")
                raise
    final = {key: job_state(runs) for key, runs in job_runs(client, experiment_id, spec.name).items()}
    states = {j.key: final.get(j.key, "MISSING") for j in jobs}
    if waits:
        finished = finish_parent(client, parent_id, states)
        out(f"sweep {spec.name}: {finished}/{len(jobs)} jobs finished"
            + (f" ({time.time() - started:.0f} s)" if todo else "")
            + ("" if finished == len(jobs) else "; run the same command again to re-run the others"))
    return states
