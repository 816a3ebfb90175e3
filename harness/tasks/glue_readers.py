"""Reading GLUE's files in the layout of the original `download_glue_data.py` (TaskSpec.reader of the
GLUE tasks in harness/tasks/glue.py). No torch.

Every GLUE file is tab-separated without quoting (MNLI and QNLI hold quote characters that are
text: `csv.QUOTE_NONE`, as transformers' GLUE processors read them), one record per line. Train
and dev files have a header naming their columns, but CoLA's, which have none: their four columns
are (source, label, original label, sentence). Test files have a header and no label; their ids
are the column `index` (QQP's: `id`). A task's spec names the columns read: `id_column` ("" where
a file has no id column: the line number is the id), `text_columns`, `label_column`. String labels
(MNLI's entailment/neutral/contradiction, QNLI's and RTE's entailment/not_entailment) map to class
ids by the reader's `classes`; numeric ones (0/1, STS-B's 0-5 score) are checked against the spec.

A bad row (a wrong number of fields, an empty text, an unknown or out-of-range label) is a DataError
naming the file and line; lenient mode skips it and lists it in `TaskRows.skipped`.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path

from harness.tasks.rows import DataError, TaskRows

COLA_COLUMNS = ("source", "label", "original_label", "sentence")  # CoLA's train and dev files: no header
TEST_ID = "index"  # the id column of a test file, where the task's own is "" (no id in train and dev)


def glue_reader(classes: Sequence[str] = (), columns: Sequence[str] = ()) -> Callable:
    """A TaskSpec.reader for one GLUE task. `classes`: the label strings in class-id order (none: the
    label is a number, checked against the spec); `columns`: the names of the columns of a train or
    dev file without a header (CoLA's), whose first line is then a record."""
    classes, columns = tuple(classes), tuple(columns)

    def read(path: Path, spec, lenient: bool = False, labelled: bool = True) -> TaskRows:
        return read_glue_file(path, spec, lenient, labelled, classes, columns)

    def check(path: Path, spec, labelled: bool = True) -> None:
        check_glue_file(Path(path), spec, labelled, columns)

    read.__qualname__ = f"glue_reader({', '.join(classes) or 'numeric labels'})"
    read.check = check  # preflight (harness.training.data.check_data_dir), before any model loads
    return read


def check_glue_file(path: Path, spec, labelled: bool, columns: tuple[str, ...]) -> None:
    """The file is there with the columns the reader needs. The dev file's check checks the task's
    extra dev files too (TaskSpec.extra_dev: under the same --data-dir), so that a missing MNLI
    dev_mismatched.tsv stops the run before training, not at its first evaluation."""
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the {spec.name} file {path.name} of GLUE's layout)")
    with open(path, newline="", encoding="utf-8") as fp:
        _columns(path, spec, labelled, columns, csv.reader(fp, delimiter="\t", quoting=csv.QUOTE_NONE))
    dev = Path(spec.file("dev")).parts
    if labelled and path.parts[-len(dev):] == dev:
        root = path.parents[len(dev) - 1]
        for file in spec.extra_dev.values():
            check_glue_file(root / file, spec, True, columns)


def _columns(path: Path, spec, labelled: bool, columns: tuple[str, ...], reader) -> tuple[list, dict, str]:
    """The file's columns (its header, or `columns` for a headerless train/dev file), the index of each
    column the reader needs, and the id column ("": the line number)."""
    id_column = spec.id_column if labelled else (spec.id_column or TEST_ID)
    needed = [c for c in (id_column, *spec.text_columns, spec.label_column if labelled else "") if c]
    header = list(columns) if labelled and columns else next(reader, None)
    if header is None:
        raise DataError(f"{path}: file is empty (expected a header row)")
    missing = [c for c in needed if c not in header]
    if missing:
        raise DataError(f"{path}, line 1: header {header} lacks column(s) {missing} (expected the columns "
                        f"{needed} of GLUE's {spec.name} {'train/dev' if labelled else 'test'} file)")
    return header, {c: header.index(c) for c in needed}, id_column


def parse_label(spec, raw: str, classes: tuple[str, ...]) -> float:
    """The class id or score of a label string, or ValueError saying what was expected."""
    value = raw.strip()
    if classes:
        if value not in classes:
            raise ValueError(f"{spec.label_column} {value!r} is not one of {list(classes)}")
        return float(classes.index(value))
    low, high = spec.label_range
    expected = (f"an integer class in 0..{spec.num_classes - 1}" if spec.kind == "classification"
                else f"a number in [{low:g}, {high:g}]")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{spec.label_column} {value!r} is not {expected}") from None
    ok = (number.is_integer() and 0 <= number < spec.num_classes if spec.kind == "classification"
          else math.isfinite(number) and low <= number <= high)
    if not ok:
        raise ValueError(f"{spec.label_column} {value!r} is out of range (expected {expected})")
    return number


def read_glue_file(path: Path, spec, lenient: bool, labelled: bool, classes: tuple[str, ...],
                   columns: tuple[str, ...]) -> TaskRows:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the {spec.name} file {path.name} of GLUE's layout)")
    rows = TaskRows(path=path)
    with open(path, newline="", encoding="utf-8") as fp:
        reader = csv.reader(fp, delimiter="\t", quoting=csv.QUOTE_NONE)
        header, index, id_column = _columns(path, spec, labelled, columns, reader)
        for record in reader:
            line = reader.line_num
            try:
                if len(record) != len(header):
                    raise ValueError(f"expected {len(header)} tab-separated fields "
                                     f"({', '.join(header)}), found {len(record)}")
                texts = tuple(record[index[c]].strip() for c in spec.text_columns)
                empty = [c for c, text in zip(spec.text_columns, texts) if not text]
                if empty:
                    raise ValueError(f"empty {empty[0]}")
                label = parse_label(spec, record[index[spec.label_column]], classes) if labelled else 0.0
                example_id = record[index[id_column]].strip() if id_column else str(line)
                if not example_id:
                    raise ValueError(f"empty {id_column}")
            except ValueError as exc:
                rows.reject(line, f"{path}, line {line}", exc, lenient)
                continue
            rows.add(example_id, texts, label)
    if not rows.ids:
        raise DataError(f"{path}: no usable rows (expected at least one example)")
    return rows
