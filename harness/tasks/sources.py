"""Reading the data of a task declared in a task file (harness/tasks/taskfile.py) through `datasets`'
own loaders: csv, tsv (csv with a tab delimiter), jsonl, parquet (`datasets.load_dataset`), a folder
saved with `save_to_disk` (`datasets.load_from_disk`), or a dataset in the local `datasets` cache,
read offline. (The `handout` format needs no reader here: harness.training.data.read_task_file.)

A `DatasetReader` is such a task's `TaskSpec.reader`: `reader(path, spec, lenient, labelled)` returns
one split's rows from the declared columns (`text_columns`, `label_column`, `id_column`, else the row
index as the id), string labels mapped through the declared `labels`, and raises DataError naming the
file, the row (counted from 0, the header not counted) and the problem; `lenient` skips a bad row
and records it. `check(path, labelled)`, called by harness.training.data.check_data_dir before a model
is loaded, reads the split and checks that its columns are there, so a mistyped column stops the run
naming the task file, the task and the field. No torch; `datasets` is imported only to read.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.tasks.rows import DataError, TaskRows

FORMATS = ("handout", "csv", "tsv", "jsonl", "parquet", "disk", "cache")
CACHE_PREFIX = "cache:"  # a cache task's `files` entries: cache:<dataset>[<config>]/<split name>
TEXT_TYPES = ("string", "large_string")


@dataclass(frozen=True)
class DatasetReader:
    """The reader of one declared task (see the module docstring). `labels`: label name -> class, or
    None (labels are numbers). `dataset`, `dataset_config`: the `cache` format's dataset."""

    format: str
    task_file: str = field(compare=False, repr=False)  # where the task was declared, for messages
    labels: Mapping[str, int] | None = None
    dataset: str = ""
    dataset_config: str = ""

    def __call__(self, path, spec, lenient: bool = False, labelled: bool = True) -> TaskRows:
        table, where, source = self._load(Path(path), spec)
        self._check_columns(table, spec, labelled, where)
        columns = [*spec.text_columns, *([spec.label_column] if labelled else []),
                   *([spec.id_column] if spec.id_column else [])]
        values = table.select_columns(list(dict.fromkeys(columns))).to_dict()
        rows = TaskRows(path=source)
        for i in range(len(table)):
            try:
                texts = tuple(_text(values[c][i], c) for c in spec.text_columns)
                label = self._label(values[spec.label_column][i], spec) if labelled else 0.0
                example_id = _text(values[spec.id_column][i], spec.id_column) if spec.id_column else str(i)
            except ValueError as exc:
                rows.reject(i, f"{where}, row {i}", f"{exc} (task {spec.name}; rows counted from 0)", lenient)
                continue
            rows.add(example_id, texts, label)
        if not rows.ids:
            raise DataError(f"{where}: no usable rows (task {spec.name})")
        return rows

    def check(self, path, spec, labelled: bool = True) -> None:
        """The split is there and has the declared columns (DataError otherwise)."""
        table, where, _ = self._load(Path(path), spec)
        self._check_columns(table, spec, labelled, where)

    def _load(self, path: Path, spec) -> tuple[Any, str, Path | None]:
        """(the split as a datasets.Dataset, how messages name it, the file or folder it came from)."""
        import datasets

        if self.format == "cache":
            return self._load_cached(path.name, spec)
        kind = "folder" if self.format == "disk" else "file"
        if not (path.is_dir() if self.format == "disk" else path.is_file()):
            raise DataError(f"{path}: {kind} not found (a split of task {spec.name}, declared in task file "
                            f"{self.task_file})")
        try:
            if self.format == "disk":
                table = datasets.load_from_disk(str(path))
            else:
                options = _text_file_options(path, self.format == "tsv") if self.format in ("csv", "tsv") else {}
                loader = {"tsv": "csv", "jsonl": "json"}.get(self.format, self.format)
                table = datasets.load_dataset(loader, data_files=str(path), split="train", **options)
        except Exception as exc:  # the loaders' own errors (a parser's, pyarrow's) say what is wrong
            cause = exc.__cause__ or exc
            raise DataError(f"{path}: cannot be read as {self.format} (task {spec.name}; "
                            f"{type(cause).__name__}: {str(cause)[:300]})") from None
        if not isinstance(table, datasets.Dataset):
            raise DataError(f"{path}: a saved {type(table).__name__}, not one split (task file {self.task_file}, "
                            f"task {spec.name}: declare its folder as `path:` with `splits:`)")
        return table, str(path), path

    def _load_cached(self, split: str, spec) -> tuple[Any, str, Path | None]:
        """One split of a dataset in the local `datasets` cache, offline: nothing is downloaded."""
        import datasets
        import datasets.config

        where = f"dataset {self.dataset!r}" + (f" ({self.dataset_config})" if self.dataset_config else "") + \
                f" split {split!r} in the datasets cache {datasets.config.HF_DATASETS_CACHE}"
        offline = datasets.config.HF_HUB_OFFLINE
        datasets.config.HF_HUB_OFFLINE = True
        try:
            table = datasets.load_dataset(self.dataset, self.dataset_config or None, split=split)
        except Exception as exc:
            raise DataError(f"{where}: cannot be read (task file {self.task_file}, task {spec.name}: dataset, "
                            f"dataset_config, splits; it is read offline, so it must be cached already: "
                            f"{type(exc).__name__}: {str(exc)[:300]})") from None
        finally:
            datasets.config.HF_HUB_OFFLINE = offline
        files = [Path(f["filename"]) for f in table.cache_files]
        return table, where, files[0].parent if files else None

    def _check_columns(self, table, spec, labelled: bool, where: str) -> None:
        declared = [("text_columns", c) for c in spec.text_columns] + \
                   ([("label_column", spec.label_column)] if labelled else []) + \
                   ([("id_column", spec.id_column)] if spec.id_column else [])
        for field, column in declared:
            if column not in table.column_names:
                raise DataError(f"task file {self.task_file}: task {spec.name!r}: {field}: column {column!r} is not "
                                f"in {where} (its columns: {table.column_names})")
        for column in spec.text_columns:
            dtype = getattr(table.features[column], "dtype", type(table.features[column]).__name__)
            if dtype not in TEXT_TYPES:
                raise DataError(f"task file {self.task_file}: task {spec.name!r}: text_columns: column {column!r} "
                                f"of {where} holds {dtype} values, not text")

    def _label(self, value: Any, spec) -> float:
        """A row's label as the harness takes it: a class index, or a number in the task's range."""
        column = spec.label_column
        if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"missing {column}")
        if self.labels is not None:
            name = value.strip() if isinstance(value, str) else str(value)
            if name not in self.labels:
                raise ValueError(f"{column} {value!r} is not one of the declared labels {list(self.labels)}")
            return float(self.labels[name])
        if spec.kind == "classification":
            expected = f"a class in 0..{spec.num_classes - 1}, or declare `labels:` to map names to classes"
        else:
            expected = f"a number in [{spec.label_range[0]:g}, {spec.label_range[1]:g}]"
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ValueError(f"{column} {value!r} is not a number (expected {expected})") from None
        if spec.kind == "classification":
            ok = number.is_integer() and 0 <= number < spec.num_classes
        else:
            ok = math.isfinite(number) and spec.label_range[0] <= number <= spec.label_range[1]
        if not ok:
            raise ValueError(f"{column} {value!r} is out of range (expected {expected})")
        return number


def _text_file_options(path: Path, tabs: bool) -> dict[str, Any]:
    """The csv loader's options for a CSV or TSV file: every column read as text, as written (an id
    0042 stays 0042, not the integer 42; a label column's numbers are parsed by the reader), and an
    empty cell as "" (not NaN, so that it is named as empty). The header names the columns."""
    import datasets

    with open(path, newline="", encoding="utf-8") as fp:
        header = next(csv.reader(fp, delimiter="\t" if tabs else ","), [])
    return {"features": datasets.Features({column: datasets.Value("string") for column in header}),
            "keep_default_na": False, **({"delimiter": "\t"} if tabs else {})}


def _text(value: Any, column: str) -> str:
    """A text or id cell: a non-empty string (an id may be a number)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"empty {column}" if value in (None, "") or isinstance(value, str)
                         else f"{column} {value!r} is not text")
    return value.strip()
