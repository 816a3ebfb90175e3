"""Tasks and task groups declared in a YAML file (`--task-file FILE`), registered as a task package's
would be, but without writing one. A file declares, under `tasks:`, each task's TaskSpec fields and
where its data is, and under `groups:` TaskGroups of its tasks (and registered ones):

    tasks:
      reviews:
        format: csv                       # handout | csv | tsv | jsonl | parquet | disk | cache
        files: {train: reviews-train.csv, dev: reviews-dev.csv}   # relative to this file's folder
        kind: classification
        text_columns: [review]
        label_column: polarity
        labels: [negative, positive]      # string labels -> classes 0, 1 (num_classes follows)
    groups:
      shop: {tasks: [reviews, sst], terms: [reviews/accuracy, sst/accuracy]}

The data: `files` (split -> file; for `disk`, split -> a folder saved with Dataset.save_to_disk), or
for `disk` `path` (a folder saved with DatasetDict.save_to_disk) with `splits` (split -> its name
there, e.g. dev: validation), or for `cache` `dataset` (and `dataset_config`) with `splits`: a dataset
in the local `datasets` cache, read offline. The fields and their checks: harness/tasks/declarations.py;
reading the data: harness/tasks/sources.py.

Every field is checked when the file is loaded, before anything trains; a bad one is a TaskFileError
naming the file, the task (or group) and the field, and what was expected. A task whose name is
registered already (by a task package, or another file) with a different spec is an error naming
both. Each loaded file is kept (`TaskFile`: its path, folder and content), so that a run can record
it (harness.runs.trained.save_model) and its tasks can be registered again from the record alone
(`register_recorded`) where the file is gone: in `mtl-bench evaluate`, `predict`, `export`, the
MLflow model. `harness.core.config.resolve_config` registers a run's --task-file, so every process
that resolves a run config (each training rank, each sweep job) knows the tasks.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
from pathlib import Path

from harness.tasks.declarations import TaskFile, TaskFileError, parse
from harness.tasks.registry import (ENTRY_POINT_GROUP, TaskError, get_group, get_task, list_groups, register_group,
                                    register_task)

_LOADED: dict[Path, TaskFile] = {}
_ORIGIN: dict[str, str] = {}  # "task NAME" / "group NAME" -> the file that registered it


def paths_of(setting: str) -> list[Path]:
    """The files of a --task-file setting (comma-separated) as absolute paths."""
    return [Path(p.strip()).resolve() for p in setting.split(",") if p.strip()]


def register_task_files(setting: str, check_files: bool = True) -> list[TaskFile]:
    """Loads, checks and registers every file of a --task-file setting (comma-separated paths);
    without `check_files` its data files need not exist (`mtl-bench compare` reads none)."""
    loaded = []
    for path in paths_of(setting):
        try:
            content = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TaskFileError(f"task file {path}: cannot read it ({exc.strerror or exc})") from None
        loaded.append(register(parse(content, path, path.parent, check_files=check_files)))
    return loaded


def records(setting: str) -> list[dict[str, str]]:
    """The records of a --task-file setting's files, as they were when registered in this process."""
    return [(_LOADED.get(path) or register_task_files(str(path))[0]).record() for path in paths_of(setting)]


def register_recorded(recorded: list[dict[str, str]]) -> list[TaskFile]:
    """Registers task files from their records (`TaskFile.record`), the files themselves not needed;
    their data is not looked for until it is read."""
    return [register(parse(r["content"], Path(r["path"]), Path(r["folder"]), check_files=False)) for r in recorded]


def task_set(names: str) -> tuple[str, ...]:
    """A --tasks value as tasks: a task group's name (one that names no task) stands for its tasks;
    each task once, in the order given. Names neither a task nor a group are left for the run's
    task check to refuse."""
    tasks: list[str] = []
    for name in (n.strip() for n in names.split(",") if n.strip()):
        try:
            get_task(name)
            tasks.append(name)
        except TaskError:
            try:
                tasks.extend(get_group(name).tasks)
            except TaskError:
                tasks.append(name)
    return tuple(dict.fromkeys(tasks))


def register(task_file: TaskFile) -> TaskFile:
    """Registers a parsed file's tasks and groups: all of them, or none if one conflicts."""
    for spec in task_file.tasks:
        _check_free(task_file.path, "task", spec, get_task)
    for group in task_file.groups:
        _check_free(task_file.path, "group", group, get_group)
        others = [g.name for g in list_groups() if g.default and g.name != group.name]
        if group.default and others:
            raise TaskFileError(f"task file {task_file.path}: group {group.name!r}: default: group {others[0]!r} is "
                                "the default set already (one group is)")
    for spec in task_file.tasks:
        register_task(spec)
        _ORIGIN.setdefault(f"task {spec.name}", str(task_file.path))
    for group in task_file.groups:
        register_group(group)
        _ORIGIN.setdefault(f"group {group.name}", str(task_file.path))
    _LOADED[task_file.path] = task_file
    return task_file


def _check_free(path: Path, what: str, item, lookup) -> None:
    """`item` may be registered: its name is free, or registered with an equal declaration."""
    try:
        existing = lookup(item.name)
    except TaskError:
        return
    if existing == item and getattr(item, "reader", None) == getattr(existing, "reader", None):  # (not in a spec's ==)
        return
    origin = _ORIGIN.get(f"{what} {item.name}")
    if origin is None:
        plugins = ", ".join(f"{e.name} = {e.value}" for e in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        origin = f"by an installed task package (entry points {ENTRY_POINT_GROUP}: {plugins or 'none'})"
    else:
        origin = f"by task file {origin}"
    differ = [f"{f.name}: {getattr(item, f.name)!r} here, {getattr(existing, f.name)!r} there"
              for f in dataclasses.fields(item) if (f.compare or f.name == "reader")  # a reader: its labels, format
              and getattr(item, f.name) != getattr(existing, f.name)]
    raise TaskFileError(f"task file {path}: {what} {item.name!r} is registered already {origin}, with a different "
                        f"declaration ({'; '.join(differ)}); rename it")
