"""A task file's declarations, checked (harness/tasks/taskfile.py loads and registers them): the
fields a task and a group may give (`TASK_FIELDS`, `GROUP_FIELDS`), `parse` (YAML to TaskSpecs and
TaskGroups, each field checked, a key given twice refused) and what a loaded file is (`TaskFile`).
A bad field is a TaskFileError naming the file, the task or group, the field and what was expected.
No torch, no `datasets`: a mistyped field fails in well under a second.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.tasks.registry import KINDS, SPLITS, TaskError, TaskGroup, TaskSpec, get_task
from harness.tasks.sources import CACHE_PREFIX, FORMATS, DatasetReader

# Each field a task may declare, and what it expects (the text of an error).
TASK_FIELDS = {
    "format": f"one of {list(FORMATS)}",
    "kind": "classification or regression",
    "text_columns": "one column name (a sentence) or a list of two (a sentence pair)",
    "label_column": "a column name",
    "id_column": "a column name (default: the row index; the handout format's: id)",
    "files": "a mapping of split (train, dev, test) to a file (disk: a saved Dataset's folder)",
    "path": "the folder of a DatasetDict saved with save_to_disk (format disk)",
    "splits": "a mapping of split (train, dev, test) to its name in the dataset, e.g. {dev: validation}",
    "dataset": "a dataset name in the local datasets cache (format cache)",
    "dataset_config": "the cached dataset's configuration name",
    "labels": "a list of label names (classes 0, 1, ...) or a mapping of name to class",
    "num_classes": "an integer, 2 or more",
    "label_range": "[low, high]",
    "metrics": "a metric name or a list of them",
    "primary": "a metric name",
    "binary_logit": "true or false",
    "output_file": "a file name ({split} is replaced)",
    "output_column": "a column name",
    "title": "a string",
    "description": "a string",
}
GROUP_FIELDS = {
    "tasks": "a list of task names",
    "terms": "a list of task/metric (or [task, metric, correlation]), the overall formula",
    "formula": "the formula's name",
    "default": "true or false",
    "description": "a string",
}
SOURCE_FIELDS = {"files": ("handout", "csv", "tsv", "jsonl", "parquet", "disk"), "path": ("disk",),
                 "splits": ("disk", "cache"), "dataset": ("cache",), "dataset_config": ("cache",)}


class TaskFileError(TaskError):
    """A task file that cannot be used: the message names the file, the task or group and the field."""


@dataclass(frozen=True)
class TaskFile:
    """A loaded task file: where it was (its data paths are relative to `folder`), what it says, and
    the tasks and groups it declares."""

    path: Path
    folder: Path
    content: str
    tasks: tuple[TaskSpec, ...]
    groups: tuple[TaskGroup, ...]

    def record(self) -> dict[str, str]:
        """What a run keeps of it (harness.runs.trained.save_model): enough to register it again."""
        return {"path": str(self.path), "folder": str(self.folder), "content": self.content}


def parse(content: str, path: Path, folder: Path, check_files: bool = True) -> TaskFile:
    """A task file's content as TaskSpecs and TaskGroups, every field checked (TaskFileError). Data
    paths are relative to `folder`; `check_files`: they must exist (and a saved DatasetDict must hold
    the splits named)."""
    data = _yaml(content, path)
    if not isinstance(data, dict) or not data or set(data) - {"tasks", "groups"}:
        unknown = sorted(set(data) - {"tasks", "groups"}) if isinstance(data, dict) else []
        raise TaskFileError(f"task file {path}: expected a mapping with `tasks:` (name: fields) and/or `groups:`"
                            + (f"; unknown key(s) {unknown}" if unknown else f", got {type(data).__name__}"))
    for key in ("tasks", "groups"):
        if not isinstance(data.get(key) or {}, dict):
            raise TaskFileError(f"task file {path}: {key}: expected a mapping of name: fields, got {data[key]!r}")
    specs = tuple(_task(path, folder, str(name), fields, check_files)
                  for name, fields in (data.get("tasks") or {}).items())
    groups = tuple(_group(path, str(name), fields, {s.name: s for s in specs})
                   for name, fields in (data.get("groups") or {}).items())
    return TaskFile(path, folder, content, specs, groups)


def _yaml(content: str, path: Path) -> Any:
    """YAML, refusing a key given twice (safe_load would keep the last one silently)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def mapping(loader, node):
        keys = [loader.construct_object(key, deep=True) for key, _ in node.value]
        for i, key in enumerate(keys):
            if key in keys[:i]:
                raise yaml.constructor.ConstructorError(None, None, f"key {key!r} is given twice",
                                                        node.value[i][0].start_mark)
        return loader.construct_mapping(node, deep=True)

    Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(content, Loader=Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise TaskFileError(f"task file {path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") \
            from None


class _Fields:
    """One declaration's fields (a task's or a group's): unknown ones refused at once, each known one
    checked as it is taken (`get`, `names`, `splits`); `fail` names the file, the declaration, the field."""

    def __init__(self, where: str, fields: Any, known: dict[str, str]):
        if not isinstance(fields, dict):
            raise TaskFileError(f"{where}: expected a mapping of field: value, got {fields!r}")
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise TaskFileError(f"{where}: unknown field(s) {unknown}; known fields: {', '.join(known)}")
        self.where, self.fields, self.known = where, fields, known

    def fail(self, name: str, problem: str = "") -> TaskFileError:
        got = f"got {self.fields.get(name)!r}" if name in self.fields else "it is missing"
        return TaskFileError(f"{self.where}: {name}: {problem or f'expected {self.known[name]}, {got}'}")

    def get(self, name: str, kind: type | tuple, default: Any = None, required: bool = False) -> Any:
        if name not in self.fields:
            if required:
                raise self.fail(name)
            return default
        value = self.fields[name]
        if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                  else (kind,))):
            raise self.fail(name)
        return value

    def names(self, name: str, required: bool = False, most: int = 0) -> tuple[str, ...]:
        """A string or a list of strings."""
        value = self.get(name, (str, list), required=required)
        items = [value] if isinstance(value, str) else list(value or [])
        if not all(isinstance(v, str) and v for v in items) or (most and len(items) > most) or \
                (value is not None and not items):
            raise self.fail(name)
        return tuple(items)

    def splits(self, name: str) -> dict[str, str]:
        value = self.get(name, dict, default={})
        if not all(isinstance(v, str) and v for v in value.values()):
            raise self.fail(name)
        unknown = [s for s in value if s not in SPLITS]
        missing = [s for s in ("train", "dev") if s not in value]
        if unknown or missing:
            raise self.fail(name, f"expected the splits train and dev (and optionally test), got {list(value)}")
        return dict(value)


def _task(path: Path, folder: Path, name: str, raw: Any, check_files: bool) -> TaskSpec:
    where = f"task file {path}: task {name!r}"
    fields = _Fields(where, raw, TASK_FIELDS)
    format = fields.get("format", str, required=True)
    kind = fields.get("kind", str, required=True)
    if format not in FORMATS:
        raise fields.fail("format")
    if kind not in KINDS:
        raise fields.fail("kind")
    for key, formats in SOURCE_FIELDS.items():
        if key in fields.fields and format not in formats:
            raise fields.fail(key, f"not a field of format {format} (only of {', '.join(formats)})")
    files = _files(fields, format, folder, check_files)
    labels = _labels(fields)
    num_classes = fields.get("num_classes", int, default=0)
    if labels is not None:
        if kind != "classification":
            raise fields.fail("labels", "labels name classes: only a classification task has them")
        if format == "handout":
            raise fields.fail("labels", "the handout format's labels are class numbers; use format tsv to map names")
        needed = max(labels.values()) + 1
        if num_classes and (needed > num_classes or (isinstance(fields.fields["labels"], list)
                                                     and needed != num_classes)):
            raise fields.fail("labels", f"{len(labels)} label(s) {list(labels)} for num_classes {num_classes}")
        num_classes = num_classes or needed
    range_ = fields.get("label_range", list, default=[0.0, 1.0])
    if len(range_) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in range_):
        raise fields.fail("label_range")
    id_column = fields.get("id_column", str, default="id" if format == "handout" else "")
    reader = None if format == "handout" else DatasetReader(
        format, str(path), labels, fields.get("dataset", str, default=""),
        fields.get("dataset_config", str, default=""))
    try:
        return TaskSpec(
            name, kind, fields.names("text_columns", required=True, most=2),
            fields.get("label_column", str, required=True), files, num_classes=num_classes,
            label_range=(float(range_[0]), float(range_[1])), metrics=fields.names("metrics"),
            primary=fields.get("primary", str, default=""),
            binary_logit=fields.get("binary_logit", bool, default=False),
            id_column=id_column, reader=reader, output_file=fields.get("output_file", str, default=""),
            output_column=fields.get("output_column", str, default="Predicted"),
            title=fields.get("title", str, default=""), description=fields.get("description", str, default=""))
    except TaskError as exc:  # the spec's own checks name the task and the field
        raise TaskFileError(f"task file {path}: {exc}") from None


def _files(fields: _Fields, format: str, folder: Path, check_files: bool) -> dict[str, str]:
    """The task's `files` (split -> where), absolute: from `files`, or `path` + `splits`, or `dataset` + `splits`."""
    if format == "cache":
        dataset = fields.get("dataset", str, required=True)
        config = fields.get("dataset_config", str, default="")
        source = f"{CACHE_PREFIX}{dataset}" + (f"[{config}]" if config else "")
        if "splits" not in fields.fields:
            raise fields.fail("splits")
        return {split: f"{source}/{name}" for split, name in fields.splits("splits").items()}
    if format == "disk" and "path" in fields.fields:
        if "files" in fields.fields or "splits" not in fields.fields:
            raise fields.fail("path", "with `path:` give `splits:` (split -> its name in the saved DatasetDict), "
                                      "not `files:`")
        saved = folder / fields.get("path", str)
        splits = fields.splits("splits")
        if check_files:
            try:
                names = json.loads((saved / "dataset_dict.json").read_text())["splits"]
            except (OSError, ValueError, KeyError):
                raise fields.fail("path", f"{saved} is not a folder saved with DatasetDict.save_to_disk (no "
                                          "readable dataset_dict.json)") from None
            absent = {s: n for s, n in splits.items() if n not in names}
            if absent:
                raise fields.fail("splits", f"{absent} not in the saved DatasetDict {saved} (its splits: {names})")
        # A DatasetDict's folder holds each split as a saved Dataset in a folder of the split's name.
        return {split: str(saved / name) for split, name in splits.items()}
    if "files" not in fields.fields:
        raise fields.fail("files")
    files = {split: folder / name for split, name in fields.splits("files").items()}
    for split, file in files.items():
        if not check_files:
            continue
        if format != "disk" and not file.is_file():
            raise fields.fail("files", f"{split}: {file}: no such file")
        if format == "disk" and not (file / "state.json").is_file():
            raise fields.fail("files", f"{split}: {file} is not a folder saved with Dataset.save_to_disk (no "
                                       "state.json; a DatasetDict's folder goes in `path:` with `splits:`)")
    return {split: str(file) for split, file in files.items()}


def _labels(fields: _Fields) -> dict[str, int] | None:
    """`labels` as name -> class: a list gives classes 0, 1, ... in its order."""
    value = fields.get("labels", (list, dict))
    if value is None:
        return None
    pairs = list(value.items()) if isinstance(value, dict) else [(n, i) for i, n in enumerate(value)]
    if any(isinstance(n, bool) for n, _ in pairs):
        raise fields.fail("labels", f"{value!r}: YAML reads unquoted yes/no/true/false as booleans; quote the "
                                    "label names ('no', 'yes')")
    names = [n for n, _ in pairs]
    if not pairs or not all(isinstance(n, (str, int)) and str(n).strip() for n in names) \
            or len(set(map(str, names))) != len(names) \
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for _, c in pairs):
        raise fields.fail("labels", f"expected distinct label names, as a list (classes 0, 1, ...) or a mapping of "
                                    f"name to class (an integer >= 0), got {value!r}")
    return {str(n).strip(): c for n, c in pairs}


def _group(path: Path, name: str, raw: Any, declared: dict[str, TaskSpec]) -> TaskGroup:
    """A group of tasks declared in this file or registered; its terms are task/metric of its tasks."""
    from harness.tasks.metrics import METRICS

    where = f"task file {path}: group {name!r}"
    fields = _Fields(where, raw, GROUP_FIELDS)
    tasks = fields.names("tasks", required=True)
    specs = {}
    for task in tasks:
        try:
            specs[task] = declared.get(task) or get_task(task)
        except TaskError as exc:
            raise fields.fail("tasks", f"{exc}") from None
    terms = []
    for term in fields.get("terms", list, default=[]):
        parts = term.split("/") if isinstance(term, str) else term
        if not isinstance(parts, list) or len(parts) not in (2, 3) or not all(isinstance(p, str) for p in parts[:2]) \
                or (len(parts) == 3 and not isinstance(parts[2], bool)):
            raise fields.fail("terms", f"expected task/metric or [task, metric, correlation], got {term!r}")
        task, metric = parts[0], parts[1]
        if task not in specs or metric not in specs[task].metrics:
            raise fields.fail("terms", f"{term!r}: not a metric of one of the group's tasks "
                                       f"({', '.join(f'{t}: {list(s.metrics)}' for t, s in specs.items())})")
        terms.append((task, metric, parts[2] if len(parts) == 3 else METRICS[metric].correlation))
    try:
        return TaskGroup(name, tasks, tuple(terms), fields.get("formula", str, default=""),
                         fields.get("default", bool, default=False), fields.get("description", str, default=""))
    except TaskError as exc:
        raise TaskFileError(f"task file {path}: {exc}") from None
