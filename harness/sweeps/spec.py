"""A sweep's spec (a sweep file, see launch/sweeps/, or the command line) and its expansion into
jobs; the files a job is run from (jobs.json, each job's config.json) are harness/sweeps/files.py."""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import SWEEP_FIELDS, ConfigError, TrainConfig, convert_setting, resolve_config
from harness.sweeps.labels import make_label
from harness.core.values import convert, parse_pair

# Fields a sweep decides for each job itself, so a sweep file or --set cannot give them.
NOT_SETTINGS = {"variant", "seed", "variant_options", "resume", "run_name", "launch_config", "progress",
                *SWEEP_FIELDS}


@dataclass
class SweepSpec:
    """What a sweep file or the command line describes."""

    name: str
    variants: list[str]
    seeds: list[int]
    set: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields for every job
    # TrainConfig fields to vary: every combination. A key `variant.NAME` (`variant.rank`) varies a
    # variant option instead, for the variants that have it (the others' jobs do not vary it).
    grid: dict[str, list] = field(default_factory=dict)
    # A variant's own grid, replacing `grid`'s values for the settings it names (e.g. a higher
    # learning-rate range for a method with few added parameters): {variant: {setting: [values]}};
    # `variant.NAME` keys are that variant's options.
    variant_grid: dict[str, dict[str, list]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # variant options, for the variants that have them
    launch_config: str = "launch/single.yaml"
    search: SearchSpec | None = None  # an Optuna search instead of (within each point of) the grid
    # Shell lines run before each job where it runs (`module load cuda/12.4`, activating an
    # environment); with them, the job runs the `python` they leave on PATH.
    setup: list[str] = field(default_factory=list)


@dataclass
class SearchSpec:
    """An Optuna search over training settings (the sweep file's `search:`; see harness/sweeps/search.py).

    One study per variant, grid point and seed; each trial is one job, its values in the job's label."""

    trials: int  # per study
    # setting: {low, high, log} (a range) or [values] (a choice); `variant.NAME`: a variant option,
    # which every variant of the sweep must have
    space: dict[str, Any]
    batch: int = 1  # trials run at a time per study (one round of jobs)
    # A metric every job logs (choose on validation, report dev), or a list of two or more with a
    # direction each: a multi-objective search, whose result is each study's Pareto set.
    metric: str | list[str] = "val/overall"
    direction: str | list[str] = "maximize"
    sampler: str = "tpe"  # one of SAMPLERS
    sampler_options: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the Optuna sampler

    @property
    def metrics(self) -> list[str]:
        """The searched metrics: one, or several for a multi-objective search."""
        return [self.metric] if isinstance(self.metric, str) else list(self.metric)

    @property
    def directions(self) -> list[str]:
        """Each metric's direction, in the order of `metrics`."""
        return [self.direction] if isinstance(self.direction, str) else list(self.direction)


SAMPLERS = {"tpe": "TPESampler", "random": "RandomSampler", "gp": "GPSampler"}


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


OPTION = "variant."  # a grid, variant_grid or search space key `variant.NAME` is the variant option NAME


def option_name(key: str) -> str | None:
    """The variant option a grid or search space key names (`variant.rank`: rank), else None."""
    return key[len(OPTION):] if key.startswith(OPTION) else None


def split_values(values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Grid or search values as (training settings, variant options)."""
    settings = {k: v for k, v in values.items() if option_name(k) is None}
    return settings, {option_name(k): v for k, v in values.items() if option_name(k) is not None}


def _option_types(variants: list[str]) -> dict[str, dict[str, Any]]:
    """Each variant's options and their types."""
    from variants import get_variant

    return {v: typing.get_type_hints(get_variant(v).config_class) for v in variants}


def _option_hint(key: str, variants: list[str], where: str, everyone: bool = False) -> tuple[Any, list[str]]:
    """The type of the variant option `key` (`variant.NAME`) and the variants of `variants` that have
    it: at least one, all of them with `everyone`, and the same type in each."""
    name = option_name(key)
    types = _option_types(variants)
    takers = [v for v in variants if name in types[v]]
    if not name or not takers:
        if len(variants) == 1:
            raise ConfigError(f"{where} {key!r}: variant {variants[0]!r} has no option {name!r}; its options: "
                              f"{', '.join(types[variants[0]])}")
        known = "; ".join(f"{v}: {', '.join(types[v])}" for v in variants)
        raise ConfigError(f"{where} {key!r}: none of the variants {variants} has an option {name!r}; their "
                          f"options: {known}")
    lacking = [v for v in variants if v not in takers]
    if everyone and lacking:
        raise ConfigError(f"{where} {key!r}: the variant(s) {lacking} have no option {name!r}, and every study of a "
                          f"search takes the space's values; search {key} in a sweep of {takers} alone")
    hints = {v: types[v][name] for v in takers}
    if len(set(map(str, hints.values()))) > 1:
        raise ConfigError(f"{where} {key!r}: the variants give option {name!r} different types "
                          f"({', '.join(f'{v}: {h}' for v, h in hints.items())}); vary it in variant_grid")
    hint = hints[takers[0]]
    if hint is dict or typing.get_origin(hint) is dict:
        raise ConfigError(f"{where} {key!r}: option {name!r} is a mapping, not a value a sweep can vary")
    return hint, takers


def _option(key: str, value: Any, hint: Any, takers: list[str], where: str) -> Any:
    """A variant option's value converted to its type, as `-o NAME=VALUE` is."""
    who = f"variant {takers[0]!r}" if len(takers) == 1 else f"variants {takers}"
    return convert(hint, value, f"{where} {key!r}: {who} option {option_name(key)!r}", ConfigError)


def _setting(name: str, value: Any) -> Any:
    if name in NOT_SETTINGS or name not in TrainConfig.__dataclass_fields__:
        allowed = sorted(set(TrainConfig.__dataclass_fields__) - NOT_SETTINGS)
        raise ConfigError(f"sweep setting {name!r}: not a setting a sweep can vary; known: {allowed}")
    value = convert_setting(name, value, "sweep setting")
    if name == "task_file":  # absolute in every job's config.json: a job may start in another folder or node
        from harness.tasks.taskfile import paths_of

        value = ",".join(str(path) for path in paths_of(value))
    return value


def _not_an_option(name: str, variants: list[str], where: str) -> None:
    """Refuses a varied name that is no training setting but an option of one of `variants`
    (`grid: {rank: ...}`), saying how to vary it."""
    if name in TrainConfig.__dataclass_fields__:
        return
    takers = [v for v, types in _option_types(variants).items() if name in types]
    if takers:
        raise ConfigError(f"{where} {name!r}: not a training setting but an option of {takers}: vary it as "
                          f"{OPTION}{name}")


def load_spec(path: str | os.PathLike | None, name: str = "", variants: list[str] | None = None,
              seeds: list[int] | None = None, settings: list[str] = (), grid: list[str] = (),
              options: list[str] = (), launch_config: str = "", setup: list[str] = ()) -> SweepSpec:
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
            raise ConfigError(f"sweep file {path}: expected a mapping of name, variants, seeds, set, grid, "
                              "variant_grid, options")
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
    if setup:
        data["setup"] = [*(data.get("setup") or []), *setup]
    if not isinstance(data.get("setup") or [], list) or not all(isinstance(x, str) for x in data.get("setup") or []):
        raise ConfigError(f"{where}: 'setup' must be a list of shell lines, e.g. ['module load cuda/12.4', "
                          f"'source ~/venv/bin/activate'], got {data['setup']!r}")
    for key in ("set", "grid", "variant_grid", "options"):
        if not isinstance(data.get(key) or {}, dict):
            raise ConfigError(f"{where}: {key!r} must be a mapping of NAME: VALUE, got {data[key]!r}")
        data[key] = dict(data.get(key) or {})
    for pair in settings:
        key, value = parse_pair(pair, "--set", ConfigError)
        data["set"][key] = value
    for pair in grid:
        key, value = parse_pair(pair, "--grid", ConfigError)
        data["grid"][key] = value.split(",")
    for pair in options:
        key, value = parse_pair(pair, "--option", ConfigError)
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
    data["variants"] = [convert(str, v, f"{where}: variants", ConfigError) for v in data["variants"]]
    data["seeds"] = [convert(int, s, f"{where}: seeds", ConfigError) for s in data["seeds"]]
    for variant, grid in data["variant_grid"].items():
        if variant not in data["variants"]:
            raise ConfigError(f"{where}: variant_grid names {variant!r}, which is not one of the sweep's variants "
                              f"{data['variants']}")
        if not isinstance(grid, dict):
            raise ConfigError(f"{where}: variant_grid {variant!r} must be a mapping of setting: [values], got {grid!r}")
    given = set(data["set"]) | {OPTION + k for k in data["options"]}
    both = sorted(given & (set(data["grid"]).union(*map(set, data["variant_grid"].values()))))
    if both:
        raise ConfigError(f"{where}: {both} both set for every job and varied in the grid; give each in one place")
    data["set"] = {k: _setting(k, v) for k, v in data["set"].items()}
    grids = [("grid", data["grid"], data["variants"])] + [
        (f"variant_grid {v!r}", g, [v]) for v, g in data["variant_grid"].items()]
    for what, grid, owners in grids:
        for key, values in grid.items():
            if not isinstance(values, list) or not values:
                raise ConfigError(f"{where}: {what} {key!r} must be a non-empty list of values, got {values!r}")
            if option_name(key) is not None:  # a variant option: typed as that variant's config types it
                hint, takers = _option_hint(key, owners, f"{where}: {what}")
                grid[key] = [_option(key, v, hint, takers, f"{where}: {what}") for v in values]
            else:
                _not_an_option(key, owners, f"{where}: {what}")
                grid[key] = [_setting(key, v) for v in values]
    grids = [(what, grid) for what, grid, _ in grids]
    # Typed values decide what is the same: `lr: [1e-4, 0.0001]` would be one job twice.
    for what, values in [("'variants'", data["variants"]), ("'seeds'", data["seeds"]),
                         *((f"{name} {k!r}", v) for name, grid in grids for k, v in grid.items())]:
        if len(set(values)) != len(values):
            raise ConfigError(f"{where}: {what} lists a value twice: {values!r}")
    if data.get("search") is not None:
        data["search"] = load_search(data["search"], where, data)
    data["name"] = str(data["name"])
    return SweepSpec(**data)


def _space_value(name: str, value: Any, where: str, variants: list[str]) -> Any:
    if option_name(name) is not None:
        hint, takers = _option_hint(name, variants, f"{where}: space", everyone=True)
        if typing.get_origin(hint) is tuple:
            raise ConfigError(f"{where}: space {name!r}: option {option_name(name)!r} is a list; a search chooses "
                              "among single values (vary it in grid or variant_grid)")
        return _option(name, value, hint, takers, f"{where}: space")
    _not_an_option(name, variants, f"{where}: space")
    try:
        return _setting(name, value)
    except ConfigError as exc:
        raise ConfigError(f"{where}: space {name!r}: {exc}") from None


def load_search(raw: Any, where: str, data: dict[str, Any]) -> SearchSpec:
    """The sweep file's `search:` mapping, each value checked; `data` is the rest of the sweep."""
    where = f"{where}: search"
    fields = {f.name for f in dataclasses.fields(SearchSpec)}
    if not isinstance(raw, dict) or "trials" not in raw or "space" not in raw:
        raise ConfigError(f"{where}: expected a mapping with trials and space (and optionally "
                          f"{sorted(fields - {'trials', 'space'})}), got {raw!r}")
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    search = SearchSpec(**raw)
    for name in ("trials", "batch"):
        value = getattr(search, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {name}: expected a positive whole number, got {value!r}")
    _check_objectives(search, where)
    if search.sampler not in SAMPLERS:
        raise ConfigError(f"{where}: sampler: expected one of {list(SAMPLERS)}, got {search.sampler!r}")
    if not isinstance(search.sampler_options, dict):
        raise ConfigError(f"{where}: sampler_options: expected a mapping, got {search.sampler_options!r}")
    if "seed" in search.sampler_options:
        raise ConfigError(f"{where}: sampler_options: seed is not an option here: each study's sampler is seeded "
                          "from the study and its number of trials (so a re-run asks for the same trials)")
    if not isinstance(search.space, dict) or not search.space:
        raise ConfigError(f"{where}: space: expected a mapping of setting: {{low, high, log}} or [values], "
                          f"got {search.space!r}")
    varied = set(data["set"]).union(data["grid"], *map(set, data["variant_grid"].values()),
                                    (OPTION + k for k in data["options"]))
    space = {}
    for name, bounds in search.space.items():
        if name in varied:
            raise ConfigError(f"{where}: space {name!r} is also set or in the grid; give it in one place")
        if isinstance(bounds, list):
            values = [_space_value(name, v, where, data["variants"]) for v in bounds]
            if not values or len(set(values)) != len(values):  # typed: [true, "true"] is one value twice
                raise ConfigError(f"{where}: space {name!r}: expected a list of distinct values, got {bounds!r}")
            space[name] = values
            continue
        if not isinstance(bounds, dict) or not {"low", "high"} <= set(bounds) <= {"low", "high", "log"}:
            raise ConfigError(f"{where}: space {name!r}: expected {{low: , high: }} (and log: true for a "
                              f"log scale) or a list of values, got {bounds!r}")
        low, high = (_space_value(name, bounds[end], where, data["variants"]) for end in ("low", "high"))
        log = bounds.get("log", False)
        if not isinstance(low, (int, float)) or isinstance(low, bool) or not low < high:
            raise ConfigError(f"{where}: space {name!r}: expected numbers low < high, got {low!r}, {high!r}")
        if not isinstance(log, bool) or (log and low <= 0):
            raise ConfigError(f"{where}: space {name!r}: log must be true or false, and a log scale needs low > 0")
        space[name] = {"low": low, "high": high, "log": log}
    search.space = space
    return search


def _check_objectives(search: SearchSpec, where: str) -> None:
    """`metric` and `direction`: a name and maximize/minimize, or lists of two or more distinct
    names and one direction each (a multi-objective search)."""
    several = isinstance(search.metric, list)
    if several and (len(search.metric) < 2 or len(set(map(str, search.metric))) != len(search.metric)):
        raise ConfigError(f"{where}: metric: expected a metric name or a list of two or more distinct metric "
                          f"names (e.g. [val/overall, params/trainable]), got {search.metric!r}")
    if not all(isinstance(m, str) and m for m in search.metrics):
        raise ConfigError(f"{where}: metric: expected a metric name such as val/overall (or a list of them), "
                          f"got {search.metric!r}")
    if several != isinstance(search.direction, list) or len(search.directions) != len(search.metrics):
        want = f"a list of {len(search.metrics)} directions, one per metric" if several else "maximize or minimize"
        raise ConfigError(f"{where}: direction: expected {want} (metric: {search.metric!r}), "
                          f"got {search.direction!r}")
    bad = [d for d in search.directions if d not in ("maximize", "minimize")]
    if bad:
        raise ConfigError(f"{where}: direction: expected maximize or minimize, got {bad[0]!r}")


def expand(spec: SweepSpec) -> list[Job]:
    """Every variant x grid point x seed, each validated as a training config before anything runs.
    (A search sweep's jobs are its studies' starting points: harness/sweeps/search.py adds each
    trial's values to one of them.)"""
    from variants import get_variant

    option_takers = {}
    for variant in spec.variants:
        fields = {f.name for f in dataclasses.fields(get_variant(variant).config_class)}
        option_takers[variant] = {k: v for k, v in spec.options.items() if k in fields}
    for option in spec.options:
        if not any(option in taken for taken in option_takers.values()):
            raise ConfigError(f"sweep option {option!r}: none of the variants {spec.variants} has it "
                              "(see `mtl-bench variants --options`)")
    jobs = []
    for variant in spec.variants:
        fields = {f.name for f in dataclasses.fields(get_variant(variant).config_class)}
        grid = {**spec.grid, **spec.variant_grid.get(variant, {})}
        # A shared grid's option varies the jobs of the variants that have it (load_spec checked
        # that one does); a variant's own grid's options are all its own.
        grid_keys = sorted(k for k in grid if option_name(k) is None or option_name(k) in fields)
        for point in itertools.product(*(grid[k] for k in grid_keys)):
            grid_values = dict(zip(grid_keys, point))
            label = make_label(variant, grid_values)
            settings, options = split_values(grid_values)
            for seed in spec.seeds:
                jobs.append(make_job(len(jobs), spec.name, label, variant, seed, {**spec.set, **settings},
                                     {**option_takers[variant], **options}))
    return jobs


def make_job(index: int, sweep: str, label: str, variant: str, seed: int, settings: dict[str, Any],
             options: dict[str, Any]) -> Job:
    """A job, validated as a training config, with its key: a hash of what it trains."""
    from variants import VariantError, make_config

    try:
        config = resolve_config({**settings, "variant": variant, "seed": seed, "variant_options": dict(options)})
        typed = make_config(variant, config.variant_settings())
    except (ConfigError, VariantError) as exc:
        raise ConfigError(f"sweep {sweep}, job {label} seed {seed}: {exc}") from None
    # Typed values: `pal_size: 204` in a file and `-o pal_size=204` are the same job.
    identity = json.dumps({"variant": variant, "seed": seed, "settings": settings,
                           "options": {k: getattr(typed, k) for k in options}}, sort_keys=True, default=str)
    # (How a job is launched is not part of it: the same training on other hardware is the same job.)
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return Job(index, key, label, variant, seed, dict(settings), dict(options))
