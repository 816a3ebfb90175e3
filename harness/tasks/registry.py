"""Tasks are plugins, registered by name like variants: what a task's files look like, what it
predicts, and how it is scored.

A task is a `TaskSpec`: its files per split (relative to --data-dir), the columns it reads, its
kind ("classification" into `num_classes` classes, or "regression" in `label_range`), one text
column (a single sentence) or two (a sentence pair), its metrics (the first is its primary one
unless `primary` says otherwise) and, optionally, its own file reader. The four CS224N handout
tasks below are registered through `register_task` like anyone's; an installed package adds
tasks through the entry-point group `bert_mtl_bench.tasks` (each entry point names a module
whose import calls `register_task`). Nothing in the loop, the model, evaluation or `compare`
names a task: they read its spec.

Tasks form groups (`TaskGroup`, registered with `register_group`), as lm-evaluation-harness's
group files do: a group declares its tasks and, optionally, its overall score, a formula of some
of its tasks' metrics (`terms`). One group is the default (`default=True`): its tasks are the task
set of a run that names none. The handout's group is declared in `harness/tasks/handout.py` like
anyone's; nothing here names a task.

The overall score of a task set (`overall_formula`): a group's formula, for a set within that
group's tasks that holds every task of its terms (the handout's: the CS224N formula mean(SST acc,
Quora acc, (STS r + 1) / 2) for its four tasks, or SST, Quora and STS); for any other set, the mean
of every task's primary metric, a correlation mapped to [0, 1] as (r + 1) / 2. A formula averages a
task's terms first, then the tasks (GLUE's score: MRPC's F1 and accuracy make one task score). A
run records the formula it used (param `overall_formula`); `compare` compares overall scores only
between runs of the same formula.

A task may have more labelled dev files than its `dev` split (`TaskSpec.extra_dev`: MNLI's
mismatched dev set beside the matched one): one head, one training set, each extra dev file scored
with every metric of the task and recorded as the metric `<metric>_<name>` (dev/mnli/accuracy_mismatched).
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.core.plugins import load_entry_points

ENTRY_POINT_GROUP = "bert_mtl_bench.tasks"
KINDS = ("classification", "regression")
SPLITS = ("train", "dev", "test")  # train and dev are labelled; test (optional) is not


class TaskError(ValueError):
    """An unknown task, or a task spec that cannot work. The message names the task and field."""


@dataclass(frozen=True)
class TaskSpec:
    """One task. `files` maps "train", "dev" and optionally "test" to file names in --data-dir.

    reader: None reads the handout's format (tab-separated with a header, CSV quoting; see
    harness.training.data.read_task_file). A task with files of another format gives a function
    `reader(path, spec, lenient, labelled) -> harness.tasks.TaskRows` that raises
    harness.tasks.DataError naming the file and line of a bad row. It returns one string id, one
    tuple of len(text_columns) strings and one label per row; for an unlabelled split (labelled
    False: a test file) the labels may be left empty (the harness fills the placeholder 0.0) or
    be 0.0. What it returns is checked where it enters the harness (harness.training.data.check_rows).
    binary_logit: a 2-class task predicted by one logit and a sigmoid (the CS224N starter's
    paraphrase head) instead of two logits and a softmax.
    output_column: the prediction column's name in the test-prediction file (`output_file`).
    extra_dev: more labelled dev files, name -> file in --data-dir, read by the same reader and scored
    with the same head and metrics as `dev`; their metrics are named `<metric>_<name>` (`dev_metrics`).
    """

    name: str
    kind: str
    text_columns: tuple[str, ...]
    label_column: str
    files: Mapping[str, str]
    num_classes: int = 0
    label_range: tuple[float, float] = (0.0, 1.0)
    metrics: tuple[str, ...] = ()  # default: ("accuracy",) for classification, ("pearson",) for regression
    primary: str = ""
    binary_logit: bool = False
    id_column: str = "id"
    reader: Callable | None = field(default=None, compare=False)
    output_file: str = ""  # default <name>-<split>-output.csv
    output_column: str = "Predicted"
    title: str = ""  # its name in tables (default: the name)
    description: str = ""
    extra_dev: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from harness.tasks.metrics import METRICS

        where = f"task {self.name!r}"
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name) \
                or self.name == "overall":
            raise TaskError(f"{where}: a task's name is lower-case letters, digits, '_' and '-' (it names files, "
                            "MLflow metrics dev/<task>/<metric> and --tasks lists), and not 'overall'")
        if not self.metrics:
            object.__setattr__(self, "metrics", ("accuracy",) if self.kind == "classification" else ("pearson",))
        if self.kind not in KINDS:
            raise TaskError(f"{where}: kind {self.kind!r} is not one of {list(KINDS)}")
        if len(self.text_columns) not in (1, 2):
            raise TaskError(f"{where}: text_columns {list(self.text_columns)}: expected one column (a sentence) "
                            "or two (a sentence pair)")
        missing = [s for s in ("train", "dev") if s not in self.files]
        unknown = [s for s in self.files if s not in SPLITS]
        if missing or unknown:
            raise TaskError(f"{where}: files {dict(self.files)}: expected the splits train and dev (and optionally "
                            f"test){'; missing ' + str(missing) if missing else ''}"
                            f"{'; unknown ' + str(unknown) if unknown else ''}")
        if self.kind == "classification":
            if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) or self.num_classes < 2:
                raise TaskError(f"{where}: num_classes {self.num_classes!r}: a classification task needs 2 or more")
            if self.binary_logit and self.num_classes != 2:
                raise TaskError(f"{where}: binary_logit needs num_classes 2, not {self.num_classes}")
        else:
            try:
                low, high = (float(v) for v in self.label_range)
            except (TypeError, ValueError):
                low = high = math.nan
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise TaskError(f"{where}: label_range {self.label_range!r}: expected (low, high) with low < high")
        for metric in self.metrics:
            if metric not in METRICS:
                raise TaskError(f"{where}: metric {metric!r} is not one of {sorted(METRICS)}")
            if METRICS[metric].kind != self.kind:
                fitting = sorted(m for m, v in METRICS.items() if v.kind == self.kind)
                raise TaskError(f"{where}: metric {metric!r} scores {METRICS[metric].kind}, not {self.kind} "
                                f"(choose from {fitting})")
        if self.primary and self.primary not in self.metrics:
            raise TaskError(f"{where}: primary {self.primary!r} is not one of its metrics {list(self.metrics)}")
        for name, file in dict(self.extra_dev).items():
            if not isinstance(name, str) or not re.fullmatch(r"[a-z0-9_]+", name) \
                    or not isinstance(file, str) or not file:
                raise TaskError(f"{where}: extra_dev {dict(self.extra_dev)}: expected names of lower-case letters, "
                                "digits and '_' (they name metrics <metric>_<name>), each a file name")

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    @property
    def primary_metric(self) -> str:
        return self.primary or self.metrics[0]

    @property
    def outputs(self) -> int:
        """The head's output size: classes, or one logit/score."""
        if self.kind == "classification" and not self.binary_logit:
            return self.num_classes
        return 1

    @property
    def dev_metrics(self) -> tuple[str, ...]:
        """Every dev metric the task records: its metrics on `dev`, then `<metric>_<name>` per extra dev file."""
        return self.metrics + tuple(extra_metric(m, name) for name in self.extra_dev for m in self.metrics)

    def metric_source(self, metric: str) -> tuple[str, str]:
        """Where a dev metric of `dev_metrics` is scored: ("", metric) on `dev`, or (name, base metric) on
        the extra dev file `name`."""
        for name in self.extra_dev:
            for base in self.metrics:
                if metric == extra_metric(base, name):
                    return name, base
        if metric not in self.metrics:
            raise TaskError(f"task {self.name!r} has no dev metric {metric!r} (its dev metrics: "
                            f"{list(self.dev_metrics)})")
        return "", metric

    def file(self, split: str) -> str:
        if split not in self.files:
            raise TaskError(f"task {self.name!r} has no {split} split (its files: {dict(self.files)})")
        return self.files[split]

    def output_name(self, split: str) -> str:
        return (self.output_file or f"{self.name}-{{split}}-output.csv").format(split=split)


def extra_metric(metric: str, dev_set: str) -> str:
    """The name of `metric` scored on the extra dev file `dev_set` (TaskSpec.extra_dev)."""
    return f"{metric}_{dev_set}"


_REGISTRY: dict[str, TaskSpec] = {}
_discovered = False


def register_task(spec: TaskSpec) -> TaskSpec:
    """Registers a task under spec.name; registering an equal spec again is harmless."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task expects a TaskSpec, got {type(spec).__name__}")
    discover()  # the installed tasks first, in the registry's order, whoever registers first
    previous = _REGISTRY.get(spec.name)
    if previous is not None and previous != spec:
        raise TaskError(f"task {spec.name!r} is registered twice, with different specs")
    _REGISTRY[spec.name] = spec
    return spec


def discover() -> None:
    """Imports every module of the entry-point group (the handout tasks' and any installed package's)."""
    global _discovered
    if _discovered:
        return
    _discovered = True  # first: a plugin module may look up a task while it is imported
    try:
        load_entry_points(ENTRY_POINT_GROUP, "task", TaskError)  # the handout's tasks too (entry point `handout`)
    except BaseException:
        _discovered = False  # the next lookup tries again and raises again, not a partial registry
        raise


def get_task(name: str) -> TaskSpec:
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TaskError(f"unknown task {name!r}; known tasks: {', '.join(_REGISTRY) or '(none)'}") from None


def list_tasks() -> list[TaskSpec]:
    discover()
    return list(_REGISTRY.values())


@dataclass(frozen=True)
class OverallFormula:
    """How a task set's dev metrics become one overall score: each task's terms are averaged into its
    task score, and the task scores are averaged (a task of one term scores that term)."""

    terms: tuple[tuple[str, str, bool], ...]  # (task, metric, a correlation mapped to [0, 1])
    name: str  # a group's formula name ("cs224n" for the handout's), or "mean"

    def by_task(self) -> dict[str, list[tuple[str, bool]]]:
        """task -> its terms (metric, mapped), in the order of the terms."""
        out: dict[str, list[tuple[str, bool]]] = {}
        for task, metric, correlation in self.terms:
            out.setdefault(task, []).append((metric, correlation))
        return out

    def describe(self) -> str:
        def term(task: str, metric: str, corr: bool) -> str:
            return f"({task}/{metric} + 1) / 2" if corr else f"{task}/{metric}"

        parts = [term(task, *terms[0]) if len(terms) == 1 else f"mean({', '.join(term(task, *t) for t in terms)})"
                 for task, terms in self.by_task().items()]
        return f"{self.name}: mean({', '.join(parts)})"

    def held_out(self) -> OverallFormula:
        """The formula on a split held out of train (--validation-fraction), where a task's extra dev files
        (TaskSpec.extra_dev) have no counterpart: their terms are left out, a task keeps its others."""
        def extra(task: str, metric: str) -> bool:
            spec = get_task(task)
            return metric not in spec.metrics and metric in spec.dev_metrics
        return OverallFormula(tuple(t for t in self.terms if not extra(t[0], t[1])), self.name)

    def score(self, metrics: Mapping[str, Mapping[str, float]]) -> float | None:
        """`metrics`: task -> metric -> value. None if a term's task or metric is absent."""
        task_scores = []
        for task, terms in self.by_task().items():
            values = []
            for metric, correlation in terms:
                if task not in metrics or metric not in metrics[task]:
                    return None
                value = metrics[task][metric]
                values.append((value + 1.0) / 2.0 if correlation else value)
            task_scores.append(sum(values) / len(values))
        return float(sum(task_scores) / len(task_scores))


@dataclass(frozen=True)
class TaskGroup:
    """A named task set and, optionally, its overall score.

    tasks: the group's tasks, in the order tables show them. terms: the overall formula, (task,
    metric, a correlation mapped to [0, 1]) per term, averaged per task and then over the tasks (a
    metric may be an extra dev file's, `<metric>_<name>`); () gives the group no formula of
    its own (its sets score the mean of primary metrics). formula: the formula's recorded name
    (default: the group's name). default: the task set of a run that names none (one group is).
    """

    name: str
    tasks: tuple[str, ...]
    terms: tuple[tuple[str, str, bool], ...] = ()
    formula: str = ""
    default: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        where = f"task group {self.name!r}"
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_-]*", self.name) \
                or self.name in ("overall", "mean"):
            raise TaskError(f"{where}: a group's name is lower-case letters, digits, '_' and '-', and not "
                            "'overall' or 'mean'")
        object.__setattr__(self, "tasks", tuple(self.tasks))
        object.__setattr__(self, "terms", tuple((t, m, bool(c)) for t, m, c in self.terms))
        if not self.tasks or len(set(self.tasks)) != len(self.tasks):
            raise TaskError(f"{where}: tasks {list(self.tasks)}: expected one or more, none twice")
        outside = [t for t, _, _ in self.terms if t not in self.tasks]
        if outside:
            raise TaskError(f"{where}: its formula's terms name {outside}, not among its tasks {list(self.tasks)}")
        if self.terms and not self.formula:
            object.__setattr__(self, "formula", self.name)


_GROUPS: dict[str, TaskGroup] = {}


def register_group(group: TaskGroup) -> TaskGroup:
    """Registers a task group under group.name; registering an equal group again is harmless. Its tasks
    are checked when it is used (a group may be registered before its tasks' plugin is imported)."""
    if not isinstance(group, TaskGroup):
        raise TypeError(f"register_group expects a TaskGroup, got {type(group).__name__}")
    discover()
    previous = _GROUPS.get(group.name)
    if previous is not None and previous != group:
        raise TaskError(f"task group {group.name!r} is registered twice, with different tasks or formulas")
    defaults = [g.name for g in _GROUPS.values() if g.default and g.name != group.name]
    if group.default and defaults:
        raise TaskError(f"task group {group.name!r} is declared the default, but {defaults[0]!r} already is")
    _GROUPS[group.name] = group
    return group


def get_group(name: str) -> TaskGroup:
    discover()
    try:
        return _GROUPS[name]
    except KeyError:
        raise TaskError(f"unknown task group {name!r}; known groups: {', '.join(_GROUPS) or '(none)'}") from None


def list_groups() -> list[TaskGroup]:
    discover()
    return list(_GROUPS.values())


def default_group() -> TaskGroup:
    """The group whose tasks a run trains when it names none."""
    discover()
    for group in _GROUPS.values():
        if group.default:
            return group
    raise TaskError("no task group is the default (register one with TaskGroup(..., default=True))")


def default_tasks() -> tuple[str, ...]:
    """The default group's tasks: the task set of a run that names none."""
    return default_group().tasks


def task_order(tasks) -> list[str]:
    """`tasks` in table order: the default group's first, in its order, then the others as given."""
    tasks = list(dict.fromkeys(tasks))
    first = [t for t in default_tasks() if t in tasks]
    return first + [t for t in tasks if t not in first]


def overall_formula(tasks: tuple[str, ...] | list[str]) -> OverallFormula:
    """The overall score of a task set (see the module docstring): the formula of the first group
    (in registration order) that the set lies within and that holds every task of its terms, else
    the mean of the tasks' primary metrics."""
    from harness.tasks.metrics import METRICS

    tasks = tuple(tasks)
    for group in list_groups():
        if group.terms and all(t in group.tasks for t in tasks) and all(t in tasks for t, _, _ in group.terms):
            return OverallFormula(group.terms, group.formula)
    terms = []
    for task in tasks:
        spec = get_task(task)
        terms.append((task, spec.primary_metric, METRICS[spec.primary_metric].correlation))
    return OverallFormula(tuple(terms), "mean")


def spec_summary(spec: TaskSpec) -> dict[str, Any]:
    """What a trained model records of a task, to check it against the registry when loaded."""
    return {"kind": spec.kind, "text_columns": list(spec.text_columns), "num_classes": spec.num_classes,
            "label_range": list(spec.label_range), "binary_logit": spec.binary_logit, "outputs": spec.outputs}
