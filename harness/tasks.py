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

The overall score of a task set (`overall_formula`): for the handout's set (its four tasks, or
SST, Quora and STS), the CS224N formula mean(SST acc, Quora acc, (STS r + 1) / 2); for any other
set (a subset of the handout's, such as the single-task baseline's SST and CFIMDB, or a set with
a task of one's own), the mean of every task's primary metric, a correlation mapped to [0, 1] as
(r + 1) / 2. A run records the formula it used (param `overall_formula`); `compare` compares
overall scores only between runs of the same formula.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from harness.plugins import load_entry_points

ENTRY_POINT_GROUP = "bert_mtl_bench.tasks"
KINDS = ("classification", "regression")
SPLITS = ("train", "dev", "test")  # train and dev are labelled; test (optional) is not


class TaskError(ValueError):
    """An unknown task, or a task spec that cannot work. The message names the task and field."""


@dataclass(frozen=True)
class TaskSpec:
    """One task. `files` maps "train", "dev" and optionally "test" to file names in --data-dir.

    reader: None reads the handout's format (tab-separated with a header, CSV quoting; see
    harness.data.read_task_file). A task with files of another format gives a function
    `reader(path, spec, lenient, labelled) -> harness.data.TaskRows` that raises
    harness.data.DataError naming the file and line of a bad row. It returns one string id, one
    tuple of len(text_columns) strings and one label per row; for an unlabelled split (labelled
    False: a test file) the labels may be left empty (the harness fills the placeholder 0.0) or
    be 0.0. What it returns is checked where it enters the harness (harness.data.check_rows).
    binary_logit: a 2-class task predicted by one logit and a sigmoid (the CS224N starter's
    paraphrase head) instead of two logits and a softmax.
    output_column: the prediction column's name in the test-prediction file (`output_file`).
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

    def __post_init__(self) -> None:
        from harness.metrics import METRICS

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

    def file(self, split: str) -> str:
        if split not in self.files:
            raise TaskError(f"task {self.name!r} has no {split} split (its files: {dict(self.files)})")
        return self.files[split]

    def output_name(self, split: str) -> str:
        return (self.output_file or f"{self.name}-{{split}}-output.csv").format(split=split)


_REGISTRY: dict[str, TaskSpec] = {}
_discovered = False


def register_task(spec: TaskSpec) -> TaskSpec:
    """Registers a task under spec.name; registering an equal spec again is harmless."""
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task expects a TaskSpec, got {type(spec).__name__}")
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
        import harness.handout_tasks  # noqa: F401  (also an entry point; here too, for a stale editable install)

        load_entry_points(ENTRY_POINT_GROUP, "task", TaskError)
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
    """How a task set's dev metrics become one overall score."""

    terms: tuple[tuple[str, str, bool], ...]  # (task, metric, a correlation mapped to [0, 1])
    name: str  # "cs224n" or "mean"

    def describe(self) -> str:
        parts = [f"({t}/{m} + 1) / 2" if corr else f"{t}/{m}" for t, m, corr in self.terms]
        return f"{self.name}: mean({', '.join(parts)})"

    def score(self, metrics: Mapping[str, Mapping[str, float]]) -> float | None:
        """`metrics`: task -> metric -> value. None if a term's task is absent."""
        values = []
        for task, metric, correlation in self.terms:
            if task not in metrics or metric not in metrics[task]:
                return None
            value = metrics[task][metric]
            values.append((value + 1.0) / 2.0 if correlation else value)
        return float(sum(values) / len(values))


def overall_formula(tasks: tuple[str, ...] | list[str]) -> OverallFormula:
    """The overall score of a task set (see the module docstring)."""
    from harness.handout_tasks import CS224N_TERMS, HANDOUT_TASKS
    from harness.metrics import METRICS

    tasks = tuple(tasks)
    if all(t in HANDOUT_TASKS for t in tasks) and all(t in tasks for t, _, _ in CS224N_TERMS):
        return OverallFormula(CS224N_TERMS, "cs224n")
    terms = []
    for task in tasks:
        spec = get_task(task)
        terms.append((task, spec.primary_metric, METRICS[spec.primary_metric].correlation))
    return OverallFormula(tuple(terms), "mean")


def spec_summary(spec: TaskSpec) -> dict[str, Any]:
    """What a trained model records of a task, to check it against the registry when loaded."""
    return {"kind": spec.kind, "text_columns": list(spec.text_columns), "num_classes": spec.num_classes,
            "label_range": list(spec.label_range), "binary_logit": spec.binary_logit, "outputs": spec.outputs}
