"""An Optuna search inside a sweep: each trial is one job of the sweep, run by the sweep's executor.

A sweep file's `search:` (`SearchSpec`) searches a space of training settings instead of listing
their values in a grid:

    search:
      trials: 8             # per study
      batch: 2              # trials run at a time per study
      space:
        lr: {low: 1.0e-5, high: 1.0e-2, log: true}

There is one study per variant, grid point (of `grid`/`variant_grid`, if any) and seed. The
search runs in rounds: each round asks every study that has trials left for up to `batch` new
ones, runs them as jobs through the sweep's executor exactly as a grid's jobs run, and waits
for them; each finished job's `metric` (val/overall by default: choose on validation, report
dev) is the trial's value. The sweep's parent MLflow run is the search, its child runs the trials.

No Optuna storage is kept: jobs.json (each job's trial values) and the jobs' MLflow runs (their
metric) are the record. Every round rebuilds each study from its finished jobs, and its sampler
is seeded from the study and its number of trials, so running the same sweep again goes on
where it stopped, and the same results ask for the same next trials. A trial whose job did not
finish is run again (same values) before the study asks for more; a round in which a job fails
ends the sweep, as in a grid sweep ("run the same command again").

A trial's values are in its job's label ("lora freeze_encoder=True lr=0.00412"), so
`mtl-bench compare --select-best-by validation --select-over lr` chooses among trials exactly as
among grid points. Float values are rounded to 3 significant digits: the label is the value.
Optuna's TPE sampler draws its first 10 trials at random (`sampler_options: {n_startup_trials: 4}`
changes that); with few trials per study, a grid or `sampler: qmc` covers the space more evenly.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from pathlib import Path
from typing import Any

from harness.config import ConfigError
from harness.sweeps.spec import SAMPLERS, Job, SweepSpec, make_job


def study_of(job: Job, space: dict[str, Any]) -> str:
    """The study a job belongs to: its variant, seed, options and settings other than the searched ones."""
    rest = {k: v for k, v in job.settings.items() if k not in space}
    return json.dumps({"variant": job.variant, "seed": job.seed, "settings": rest, "options": job.options},
                      sort_keys=True, default=str)


def known_jobs(folder: Path) -> list[Job]:
    """The jobs an earlier run of the sweep wrote to its jobs.json (none if there is none)."""
    path = folder / "jobs.json"
    if not path.is_file():
        return []
    return [Job(**job) for job in json.loads(path.read_text())["jobs"]]


class Search:
    """The studies of a search sweep and their trials' jobs (`jobs`: every trial asked so far)."""

    def __init__(self, spec: SweepSpec, starts: list[Job], known: list[Job]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study rebuilt
        self.spec, self.search = spec, spec.search
        self.space = self.search.space
        self.starts = {study_of(job, self.space): job for job in starts}
        self.distributions = {name: self._distribution(bounds) for name, bounds in self.space.items()}
        self._sampler(0)  # bad sampler options fail here, before anything runs
        # Earlier trials of the same studies whose values are still in the space; indexes renumbered
        # (a job runner finds its job by index in jobs.json).
        mine = [j for j in known if study_of(j, self.space) in self.starts and self._in_space(j.settings)]
        self.jobs = [dataclasses.replace(job, index=i) for i, job in enumerate(mine)]

    @property
    def planned(self) -> int:
        return len(self.starts) * self.search.trials

    def _distribution(self, bounds):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if isinstance(bounds, list):
            return CategoricalDistribution(bounds)
        kind = IntDistribution if isinstance(bounds["low"], int) and isinstance(bounds["high"], int) else \
            FloatDistribution
        return kind(bounds["low"], bounds["high"], log=bounds["log"])

    def _in_space(self, settings: dict[str, Any]) -> bool:
        for name, bounds in self.space.items():
            value = settings.get(name)
            if isinstance(bounds, list):
                if value not in bounds:
                    return False
            elif not isinstance(value, (int, float)) or not bounds["low"] <= value <= bounds["high"]:
                return False
        return True

    def _sampler(self, seed: int):
        import optuna

        cls = getattr(optuna.samplers, SAMPLERS[self.search.sampler])
        try:
            return cls(**{"seed": seed, **self.search.sampler_options})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"sweep {self.spec.name}: search sampler_options {self.search.sampler_options}: "
                              f"{exc}") from None

    def _value(self, name: str, raw: Any) -> Any:
        """A suggested value as the job gets it: a float at 3 significant digits, within its bounds."""
        bounds = self.space[name]
        if isinstance(bounds, list) or not isinstance(raw, float):
            return raw
        return min(max(float(f"{raw:.3g}"), bounds["low"]), bounds["high"])

    def next_round(self, results: dict[str, float]) -> list[Job]:
        """Up to `batch` new trials of every study with trials left, as jobs (added to `jobs`).

        `results`: the metric of each finished job, by job key. A study whose sampler proposes
        only values it has already tried gets no new job (so a sweep of a small choice ends)."""
        import optuna

        new = []
        for study_id, start in self.starts.items():
            mine = [j for j in self.jobs if study_of(j, self.space) == study_id]
            wanted = min(self.search.batch, self.search.trials - len(mine))
            if wanted <= 0:
                continue
            seed = int(hashlib.sha256(f"{self.spec.name}|{study_id}|{len(mine)}".encode()).hexdigest()[:8], 16)
            study = optuna.create_study(direction=self.search.direction, sampler=self._sampler(seed))
            study.add_trials([optuna.trial.create_trial(
                params={k: j.settings[k] for k in self.space}, distributions=self.distributions,
                value=results[j.key]) for j in mine if j.key in results])
            keys = {j.key for j in self.jobs}
            for _ in range(wanted):
                trial = study.ask(self.distributions)
                values = {name: self._value(name, trial.params[name]) for name in self.space}
                label = " ".join([start.label] + [f"{k}={v}" for k, v in values.items()])
                job = make_job(len(self.jobs), self.spec.name, label, start.variant, start.seed,
                               {**start.settings, **values}, start.options)
                if job.key in keys:
                    continue
                keys.add(job.key)
                self.jobs.append(job)
                new.append(job)
        return new

    def results(self, runs_by_key: dict[str, list]) -> dict[str, float]:
        """Each finished job's metric from its MLflow run; a finished job without it is an error."""
        out = {}
        for job in self.jobs:
            finished = [r for r in runs_by_key.get(job.key, []) if r.info.status == "FINISHED"]
            if not finished:
                continue
            value = finished[-1].data.metrics.get(self.search.metric)
            if value is None or math.isnan(value):
                raise ConfigError(f"sweep {self.spec.name}: job {job.run_name} (run {finished[-1].info.run_id}) "
                                  f"finished without the search metric {self.search.metric!r}")
            out[job.key] = value
        return out

    def summary(self, results: dict[str, float]) -> list[str]:
        """One line per study: its best trial and how many finished."""
        lines = []
        best_of = max if self.search.direction == "maximize" else min
        for study_id, start in self.starts.items():
            done = [j for j in self.jobs if study_of(j, self.space) == study_id and j.key in results]
            if not done:
                lines.append(f"{start.run_name}: no finished trial")
                continue
            best = best_of(done, key=lambda j: results[j.key])
            values = ", ".join(f"{k}={best.settings[k]}" for k in self.space)
            lines.append(f"{start.run_name}: best {self.search.metric} {results[best.key]:.4f} at {values} "
                         f"({len(done)} of {self.search.trials} trials finished)")
        return lines
