"""`run_sweep`: expand, record, submit what has not finished, follow it to the end.

A grid sweep is one round: every job that has not finished. A search sweep (harness/sweeps/
search.py) is rounds of trials, each round asked of its studies once the one before has ended."""
from __future__ import annotations

import time
from pathlib import Path

from harness.core.config import ConfigError
from harness.sweeps.executors import Executor
from harness.sweeps.records import finish_parent, job_runs, job_state, parent_run
from harness.sweeps.files import sweep_dir, tracking_of, write_jobs_file
from harness.sweeps.spec import SweepSpec, expand


def run_sweep(spec: SweepSpec, executor: Executor, wait: bool = True, dry_run: bool = False,
              out=print) -> dict[str, str]:
    """Expands, records and queues a sweep; returns each job key's MLflow state at the end.

    With an executor that detaches (SLURM) and `wait=False`, it returns once the jobs are queued
    and leaves the parent run RUNNING; a later run of the same sweep reports on them."""
    from mlflow.tracking import MlflowClient

    from harness.sweeps.search import Search, known_jobs
    from harness.tracking.tracker import check_reachable, get_or_create_experiment, retry, store_lock

    if not Path(spec.launch_config).is_file():
        raise ConfigError(f"launch_config: {spec.launch_config} does not exist (see launch/)")
    if spec.search and executor.detaches and not wait:
        raise ConfigError(f"sweep {spec.name}: a search asks for each round's trials once the round before has "
                          "ended, so it waits for its jobs: run it without --no-wait")
    jobs = expand(spec)
    executor.check(spec)
    folder = sweep_dir(spec)
    search = Search(spec, jobs, known_jobs(folder)) if spec.search else None
    tracking_uri, experiment = tracking_of(spec)
    if dry_run:
        for job in jobs:
            out(f"{job.index:4d} {job.key} {job.run_name}" + (" (a study)" if search else ""))
        what = f"{len(jobs)} jobs"
        if search:
            what = (f"{len(jobs)} studies of up to {spec.search.trials} trials, {spec.search.batch} at a time, "
                    f"over {sorted(spec.search.space)}; {len(search.current())} trials asked so far")
        out(f"{what}; files in {folder}; tracking {tracking_uri}, experiment {experiment}")
        shown = executor.dry_run(folder, spec, jobs)
        if shown:
            out(shown)
        return {}
    check_reachable(tracking_uri)
    with store_lock(tracking_uri):
        client = retry(lambda: MlflowClient(tracking_uri))
        # Created once here, before any job starts: concurrent creation by jobs would race.
        experiment_id = retry(lambda: get_or_create_experiment(client, experiment, tracking_uri))
    parent_id = parent_run(client, experiment_id, spec, search.planned if search else len(jobs), executor.name)
    started = time.time()
    waits = wait or not executor.detaches
    submitted = 0
    while True:
        runs = job_runs(client, experiment_id, spec.name)
        states = {key: job_state(r) for key, r in runs.items()}
        recorded = jobs  # what jobs.json holds: a search's every trial, today's space or not
        if search:
            if submitted and any(states.get(j.key) != "FINISHED" for j in search.current()):
                break  # a trial of the last round did not finish: stop, as a grid sweep does
            new = search.next_round(search.results(runs))
            jobs, recorded = search.current(), search.jobs
        todo = [j for j in jobs if states.get(j.key) != "FINISHED"]
        active = executor.active(folder)
        if active:
            todo = [j for j in todo if j.key not in active]
            out(f"{len(active)} job(s) still queued or running ({executor.name}): not submitted again")
        if search and not todo and not new:
            break
        jobs_file = write_jobs_file(folder, spec, recorded, parent_id, tracking_uri, experiment, executor.name)
        if search and not todo:
            continue  # new trials all finished in earlier runs (jobs.json was lost): ask again
        client.log_artifact(parent_id, str(jobs_file))
        out(f"sweep {spec.name}: {len(jobs)} jobs, {len(jobs) - len(todo)} finished or in progress, "
            f"{len(todo)} to run (parent run {parent_id}, experiment {experiment}, {tracking_uri})")
        if not todo:
            break
        done = [0]

        def report(index: int, code: int, seconds: float, todo=todo, recorded=recorded, done=done) -> None:
            done[0] += 1
            job = recorded[index]  # the executor reports a job by its index in jobs.json
            out(f"[{done[0]}/{len(todo)}] {job.run_name}: "
                f"{job_state(job_runs(client, experiment_id, spec.name).get(job.key, []))} (exit {code}) "
                f"in {seconds / 60:.1f} min")

        out(executor.submit(jobs_file, todo, report))
        submitted += len(todo)
        if waits:
            try:
                executor.wait()
            except KeyboardInterrupt:
                client.set_terminated(parent_id, "KILLED")
                out(f"sweep {spec.name}: interrupted; running jobs wrote a checkpoint. Run the same command to "
                    "go on.")
                raise
        if not search:
            break
    runs = job_runs(client, experiment_id, spec.name)
    states = {j.key: job_state(runs.get(j.key, [])) for j in jobs}
    if search:
        results = search.results(runs)
        lines = search.summary(results)
        client.log_text(parent_id, "\n".join(lines) + "\n", "search.txt")
        if len(spec.search.metrics) > 1:  # a multi-objective search: its Pareto sets, readable by a script
            client.log_dict(parent_id, search.pareto(results), "search_pareto.json")
        for line in lines:
            out(line)
    if waits:
        finished = finish_parent(client, parent_id, states)
        out(f"sweep {spec.name}: {finished}/{len(jobs)} jobs finished"
            + (f" ({time.time() - started:.0f} s)" if submitted else "")
            + ("" if finished == len(jobs) else "; run the same command again to re-run the others"))
    return states
