"""An Optuna search inside a sweep: each trial is one job of the sweep, run by the sweep's executor.

A sweep file's `search:` (`SearchSpec`) searches a space of training settings instead of listing
their values in a grid: one study per variant, grid point and seed, run in rounds of `batch`
trials per study. No Optuna storage is kept: each round rebuilds every study from jobs.json and
the jobs' MLflow runs, its sampler seeded from the study and its number of trials, so running the
same sweep again goes on where it stopped. A trial's values are in its job's label, so
`mtl-bench compare --select-best-by validation` chooses among trials as among grid points.
With several metrics (`metric: [val/overall, params/trainable]`) the studies are multi-objective
and the summary gives each one's Pareto set (`Search.pareto`).

See docs/sweeps.md ("A search instead of a grid") for the file's fields, the space, the
samplers, and how failures and re-runs behave.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from pathlib import Path
from typing import Any

from harness.core.config import ConfigError
from harness.sweeps.labels import extend_label
from harness.sweeps.spec import OPTION, SAMPLERS, Job, SweepSpec, make_job, option_name, split_values


def searched(job: Job, name: str) -> Any:
    """A job's value of the space entry `name`: a setting, or a variant option (`variant.rank`)."""
    option = option_name(name)
    return job.options.get(option) if option is not None else job.settings.get(name)


def study_of(job: Job, space: dict[str, Any]) -> str:
    """The study a job belongs to: its variant, seed, options and settings other than the searched ones."""
    rest = {k: v for k, v in job.settings.items() if k not in space}
    options = {k: v for k, v in job.options.items() if OPTION + k not in space}
    return json.dumps({"variant": job.variant, "seed": job.seed, "settings": rest, "options": options},
                      sort_keys=True, default=str)


def trial_job(index: int, sweep: str, label: str, start: Job, values: dict[str, Any]) -> Job:
    """A study's starting job with a trial's values: its settings and variant options."""
    settings, options = split_values(values)
    return make_job(index, sweep, label, start.variant, start.seed, {**start.settings, **settings},
                    {**start.options, **options})


def known_jobs(folder: Path) -> list[Job]:
    """The jobs an earlier run of the sweep wrote to its jobs.json (none if there is none)."""
    path = folder / "jobs.json"
    if not path.is_file():
        return []
    return [Job(**job) for job in json.loads(path.read_text())["jobs"]]


ATTEMPTS = 50  # proposals drawn for one new trial before a study counts as used up
CHECKED = 256  # combinations of the space's values checked as jobs before anything runs


class Search:
    """The studies of a search sweep and their trials: `jobs`, every trial any run of the sweep
    asked (what jobs.json holds; a job runner finds its job there by index), and `current()`,
    those of this spec's studies inside its space."""

    def __init__(self, spec: SweepSpec, starts: list[Job], known: list[Job]):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per study rebuilt
        self.spec, self.search = spec, spec.search
        self.space = self.search.space
        self.starts = {study_of(job, self.space): job for job in starts}
        self.distributions = {name: self._distribution(bounds) for name, bounds in self.space.items()}
        self.jobs = [dataclasses.replace(job, index=i) for i, job in enumerate(known)]
        self.used_up: set[str] = set()  # studies whose sampler proposed only values already tried
        self._check(starts)

    def _check(self, starts: list[Job]) -> None:
        """Before anything runs: a validation metric has a validation split in every study; every
        combination of the space's choices and range ends makes a valid job (each value alone where
        there are more than CHECKED combinations); and the sampler takes its options, through its
        model stage too (past its random start)."""
        import optuna

        metric = next((m for m in self.search.metrics if m.startswith("val/")), None)
        without = [start.run_name for start in starts if metric and not start.settings.get("validation_fraction")]
        if without:
            raise ConfigError(f"sweep {self.spec.name}: search: metric {metric}: the jobs need a validation split "
                              f"({', '.join(without[:3])} have none); set validation_fraction (e.g. 0.1) under set:")

        ends = {name: bounds if isinstance(bounds, list) else [bounds["low"], bounds["high"]]
                for name, bounds in self.space.items()}
        combinations = [dict(zip(ends, values)) for values in itertools.product(*ends.values())]
        if len(combinations) > CHECKED:
            combinations = [{name: value} for name, values in ends.items() for value in values]
        for start in starts:
            for values in combinations:
                try:
                    trial_job(0, self.spec.name, start.label, start, values)
                except ConfigError as exc:
                    shown = ", ".join(f"{k}={v!r}" for k, v in values.items())
                    raise ConfigError(f"search space {sorted(values)}, values {shown}: {exc}") from None
        startup = self.search.sampler_options.get("n_startup_trials", 10)
        try:
            study = self._study(self._sampler(0))
            first = {name: values[0] for name, values in ends.items()}
            study.add_trials([optuna.trial.create_trial(params=first, distributions=self.distributions,
                                                        values=[float(i)] * len(self.search.metrics))
                              for i in range(int(startup) + 2)])
            study.ask(self.distributions)
        except Exception as exc:  # any failure of the sampler's own code on these options
            raise ConfigError(f"sweep {self.spec.name}: search sampler_options {self.search.sampler_options}: "
                              f"{type(exc).__name__}: {exc}") from None

    @property
    def planned(self) -> int:
        return len(self.starts) * self.search.trials

    def current(self) -> list[Job]:
        """The trials of this spec's studies whose values are inside its space."""
        return [j for j in self.jobs if study_of(j, self.space) in self.starts and self._in_space(j)]

    def _by_study(self) -> dict[str, list[Job]]:
        """`current()`'s trials by study, every study of the spec (with or without trials) a key."""
        trials = {study_id: [] for study_id in self.starts}
        for job in self.current():
            trials[study_of(job, self.space)].append(job)
        return trials

    def _distribution(self, bounds):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if isinstance(bounds, list):
            return CategoricalDistribution(bounds)
        kind = IntDistribution if isinstance(bounds["low"], int) and isinstance(bounds["high"], int) else \
            FloatDistribution
        return kind(bounds["low"], bounds["high"], log=bounds["log"])

    def _choices(self) -> float:
        """How many points the space has: the product of its choices (infinite with a range)."""
        return math.prod(len(b) if isinstance(b, list) else math.inf for b in self.space.values())

    def _in_space(self, job: Job) -> bool:
        for name, bounds in self.space.items():
            value = searched(job, name)
            if isinstance(bounds, list):
                if value not in bounds:
                    return False
            elif not isinstance(value, (int, float)) or not bounds["low"] <= value <= bounds["high"]:
                return False
        return True

    def _sampler(self, seed: int):
        import optuna

        cls = getattr(optuna.samplers, SAMPLERS[self.search.sampler])
        defaults = {"constant_liar": True} if self.search.sampler == "tpe" and self.search.batch > 1 else {}
        return cls(**{**defaults, **self.search.sampler_options, "seed": seed})

    def _value(self, name: str, raw: Any) -> Any:
        """A suggested value as the job gets it: a float at 3 significant digits, within its bounds."""
        bounds = self.space[name]
        if isinstance(bounds, list) or not isinstance(raw, float):
            return raw
        return min(max(float(f"{raw:.3g}"), bounds["low"]), bounds["high"])

    def _told(self, result: float | tuple) -> list[float]:
        """A finished job's values as its study is told them: a NaN is the worst for its direction."""
        values = result if isinstance(result, tuple) else (result,)
        # floats: TPE's multi-objective code fails on integer values (a count of parameters)
        return [(-math.inf if direction == "maximize" else math.inf) if math.isnan(value) else float(value)
                for value, direction in zip(values, self.search.directions)]

    def _study(self, sampler=None):
        import optuna

        return optuna.create_study(directions=self.search.directions, sampler=sampler)

    def next_round(self, results: dict[str, float | tuple]) -> list[Job]:
        """Up to `batch` new trials of every study with trials left, as jobs (added to `jobs`).

        `results`: each finished job's metric (a tuple of its metrics' values where the search has
        several), by job key. A study with a trial not in `results` (not finished) gets none: that
        trial runs again first."""
        import optuna

        new = []
        by_study = self._by_study()
        for study_id, start in self.starts.items():
            mine = by_study[study_id]
            wanted = min(self.search.batch, self.search.trials - len(mine))
            if wanted <= 0 or study_id in self.used_up or any(j.key not in results for j in mine):
                continue
            if len(mine) >= self._choices():  # a space of choices only, every one tried
                self.used_up.add(study_id)
                continue
            seed = int(hashlib.sha256(f"{self.spec.name}|{study_id}|{len(mine)}".encode()).hexdigest()[:8], 16)
            study = self._study(self._sampler(seed))
            study.add_trials([optuna.trial.create_trial(
                params={k: searched(j, k) for k in self.space}, distributions=self.distributions,
                values=self._told(results[j.key])) for j in mine])
            keys = {j.key for j in self.jobs}
            added = 0
            for _ in range(wanted * ATTEMPTS):
                trial = study.ask(self.distributions)
                values = {name: self._value(name, trial.params[name]) for name in self.space}
                label = extend_label(start.label, values)
                job = trial_job(len(self.jobs), self.spec.name, label, start, values)
                if job.key in keys:  # tried already (or asked this round): draw again
                    continue
                keys.add(job.key)
                self.jobs.append(job)
                new.append(job)
                added += 1
                if added == wanted:
                    break
            else:
                self.used_up.add(study_id)
        return new

    def results(self, runs_by_key: dict[str, list]) -> dict[str, float | tuple]:
        """Each finished job's metric from its MLflow run (a tuple of the metrics' values where the
        search has several); a finished job without one is an error."""
        out = {}
        for job in self.current():
            finished = [r for r in runs_by_key.get(job.key, []) if r.info.status == "FINISHED"]
            if not finished:
                continue
            values = []
            for metric in self.search.metrics:
                value = finished[-1].data.metrics.get(metric)
                if value is None:
                    raise ConfigError(f"sweep {self.spec.name}: job {job.run_name} (run {finished[-1].info.run_id}) "
                                      f"finished without the search metric {metric!r} (search: metric)")
                values.append(value)  # NaN (a constant predictor's correlation) stays NaN: the worst value
            out[job.key] = values[0] if isinstance(self.search.metric, str) else tuple(values)
        return out

    def pareto(self, results: dict[str, tuple]) -> dict[str, dict]:
        """A multi-objective search's Pareto set per study (by its starting job's run name): the
        finished trials no other one is at least as good as in every metric and better in one
        (Optuna's `best_trials`), each with its values and the space's. A trial with a NaN value is
        in none (as a NaN score is never a single metric's best)."""
        import optuna

        out = {}
        by_study = self._by_study()
        for study_id, start in self.starts.items():
            scored = [j for j in by_study[study_id]
                      if j.key in results and not any(map(math.isnan, results[j.key]))]
            study = self._study()
            study.add_trials([optuna.trial.create_trial(params={}, distributions={}, values=self._told(results[j.key]),
                                                        user_attrs={"index": i}) for i, j in enumerate(scored)])
            best = sorted((scored[t.user_attrs["index"]] for t in study.best_trials), key=lambda j: results[j.key])
            out[start.run_name] = {
                "metrics": self.search.metrics, "directions": self.search.directions,
                "trials": [{"run_name": j.run_name, "key": j.key,
                            "values": dict(zip(self.search.metrics, results[j.key])),
                            "space": {k: searched(j, k) for k in self.space}} for j in best]}
        return out

    def summary(self, results: dict[str, float | tuple]) -> list[str]:
        """One line per study: its best trial and how many finished; with several metrics, how
        many finished and then a line per trial of its Pareto set."""
        if not isinstance(self.search.metric, str):
            return self._pareto_summary(results)
        lines = []
        sign = 1 if self.search.direction == "maximize" else -1
        by_study = self._by_study()
        for study_id, start in self.starts.items():
            done = [j for j in by_study[study_id] if j.key in results]
            used_up = "; the sampler proposed only values already tried" if study_id in self.used_up else ""
            scored = [j for j in done if not math.isnan(results[j.key])]
            if not scored:
                lines.append(f"{start.run_name}: no finished trial with a score ({len(done)} finished{used_up})")
                continue
            best = max(scored, key=lambda j: sign * results[j.key])
            values = ", ".join(f"{k}={searched(best, k)}" for k in self.space)
            lines.append(f"{start.run_name}: best {self.search.metric} {results[best.key]:.4f} at {values} "
                         f"({len(done)} of {self.search.trials} trials finished{used_up})")
        return lines

    def _pareto_summary(self, results: dict[str, tuple]) -> list[str]:
        """`summary` with several metrics: per study, how many finished, then its Pareto set."""
        lines = []
        pareto, by_study = self.pareto(results), self._by_study()
        objectives = ", ".join(f"{m} ({d[:3]})" for m, d in zip(self.search.metrics, self.search.directions))
        for study_id, start in self.starts.items():
            done = [j for j in by_study[study_id] if j.key in results]
            used_up = "; the sampler proposed only values already tried" if study_id in self.used_up else ""
            trials = pareto[start.run_name]["trials"]
            lines.append(f"{start.run_name}: Pareto set of {objectives}: {len(trials)} trial(s) "
                         f"({len(done)} of {self.search.trials} trials finished{used_up})")
            for trial in trials:
                values = ", ".join(f"{m} {v:.6g}" for m, v in trial["values"].items())
                space = ", ".join(f"{k}={v}" for k, v in trial["space"].items())
                lines.append(f"  {values} at {space}")
        return lines
