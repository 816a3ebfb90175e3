"""A sweep in MLflow: one parent run (tags sweep.id and sweep.role=sweep, the spec as params)
and the job runs below it (tags sweep.id, sweep.job, sweep.label; see harness/core/names.py)."""
from __future__ import annotations

import dataclasses
import json

from harness.core import names
from harness.sweeps.spec import SweepSpec
from harness.tracking.tracker import retry, search_all_runs


def parent_run(client, experiment_id: str, spec: SweepSpec, planned: int, executor: str) -> str:
    """The sweep's parent run: found by its tags when the sweep is re-run, else created. `planned`:
    its number of jobs (a search's: studies x trials)."""
    from mlflow.entities import Param

    found = retry(lambda: client.search_runs(
        [experiment_id], f"tags.`{names.SWEEP_ID}` = '{spec.name}' and "
                         f"tags.`{names.SWEEP_ROLE}` = '{names.PARENT_ROLE}'", max_results=1))
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        client.set_tag(run_id, names.SWEEP_JOBS, str(planned))  # the sweep may have grown (params stay as first run)
        return run_id
    run = retry(lambda: client.create_run(experiment_id, run_name=spec.name, tags={
        names.SWEEP_ID: spec.name, names.SWEEP_ROLE: names.PARENT_ROLE, names.SWEEP_JOBS: str(planned),
        "mlflow.note.content": f"Sweep {spec.name}: {len(spec.variants)} variants x {len(spec.seeds)} seeds "
                               f"({planned} jobs); its jobs are the child runs below it."}))
    params = {names.SWEEP_VARIANTS: ",".join(spec.variants), "seeds": ",".join(map(str, spec.seeds)),
              "launch_config": spec.launch_config, "executor": executor,
              **{f"set.{k}": v for k, v in spec.set.items()},
              **{f"grid.{k}": ",".join(map(str, v)) for k, v in spec.grid.items()},
              **{f"grid.{variant}.{k}": ",".join(map(str, v)) for variant, grid in spec.variant_grid.items()
                 for k, v in grid.items()},
              **{f"option.{k}": v for k, v in spec.options.items()},
              **({f"search.{k}": json.dumps(v) if isinstance(v, dict) else v
                  for k, v in dataclasses.asdict(spec.search).items()} if spec.search else {})}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    return run.info.run_id


def job_runs(client, experiment_id: str, sweep_id: str) -> dict[str, list]:
    """The MLflow runs of a sweep's jobs, by job key (a job can have several: one per fresh start)."""
    out: dict[str, list] = {}
    for run in search_all_runs(client, [experiment_id], f"tags.`{names.SWEEP_ID}` = '{sweep_id}'"):
        if run.data.tags.get(names.SWEEP_ROLE) != names.PARENT_ROLE:
            out.setdefault(run.data.tags.get(names.SWEEP_JOB, ""), []).append(run)
    return out


def job_state(runs: list) -> str:
    """One job's state from its runs: FINISHED if any run finished, else the most advanced one's."""
    statuses = {r.info.status for r in runs}
    for status in ("FINISHED", "RUNNING", "KILLED", "FAILED"):
        if status in statuses:
            return status
    return "MISSING" if not runs else sorted(statuses)[0]


def finish_parent(client, parent_id: str, states: dict[str, str]) -> int:
    """Records how many jobs finished and ends the parent run: FINISHED if all did, else FAILED."""
    finished = sum(s == "FINISHED" for s in states.values())
    client.set_tag(parent_id, names.SWEEP_FINISHED, str(finished))
    client.set_terminated(parent_id, "FINISHED" if finished == len(states) else "FAILED")
    return finished
