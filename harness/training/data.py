"""Reading task files, tokenising them through `datasets`, and padding batches.

Files are read in the CS224N handout's format unless a task brings its own reader (TaskSpec.reader).
The handout files are tab-separated with a header (first column an unnamed row index) and
use CSV quoting (a quoted field doubles its quotes), as the starter code's `csv.DictReader(fp, delimiter="\\t")`
reads them. We read them with the same dialect but strictly: a row that the starter code
would silently drop (its try/except) is an error here naming the file, the line and the
problem, unless the caller asks for the lenient mode, which skips it and counts it.
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.tasks import TaskSpec, get_task
from harness.tasks.rows import DataError, TaskRows  # noqa: F401  (a task reader's types, here as before)

# Bumped whenever tokenised columns change, so stale caches are never reused.
CACHE_VERSION = "2"


def _parse_label(spec: TaskSpec, raw: str) -> float:
    """Returns the label as a float, or raises ValueError saying what was expected."""
    value = raw.strip()
    low, high = spec.label_range
    if spec.kind == "classification":
        expected = "0 or 1" if spec.num_classes == 2 else f"an integer class in 0..{spec.num_classes - 1}"
    else:
        expected = f"a number in [{low:g}, {high:g}]"
    if value == "":
        raise ValueError(f"missing {spec.label_column} (expected {expected})")
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{spec.label_column} {value!r} is not numeric (expected {expected})") from None
    if not math.isfinite(number):
        raise ValueError(f"{spec.label_column} {value!r} is not finite (expected {expected})")
    if spec.kind == "classification":
        ok = number.is_integer() and 0 <= number < spec.num_classes
    else:
        ok = low <= number <= high
    if not ok:
        raise ValueError(f"{spec.label_column} {value!r} is out of range (expected {expected})")
    return number


def read_rows(path: str | os.PathLike, spec: TaskSpec, lenient: bool = False, labelled: bool = True) -> TaskRows:
    """Reads one file of a task with its reader: the task's own, or the handout format's; what a
    reader returns is checked here, where it enters the harness (`check_rows`)."""
    reader = spec.reader or read_task_file
    return check_rows(reader(Path(path), spec, lenient, labelled), spec, Path(path), labelled,
                      getattr(reader, "__qualname__", repr(reader)))


def check_rows(rows: Any, spec: TaskSpec, path: Path, labelled: bool, reader: str = "the reader") -> TaskRows:
    """What TaskSpec.reader promises (see its docstring): a TaskRows of one id (a string), one text
    tuple of the task's width and, for a labelled split, one label in the task's range per row. An
    unlabelled split's labels may be left empty: they become 0.0, the placeholder the handout's
    reader gives. Raises DataError naming the task, the file and what is wrong."""
    def fail(problem: str) -> None:
        raise DataError(f"task {spec.name}, {path}: {reader} returned {problem}")

    if not isinstance(rows, TaskRows):
        fail(f"a {type(rows).__name__}, not a harness.training.data.TaskRows")
    n = len(rows.ids)
    if len(rows.texts) != n:
        fail(f"{n} ids but {len(rows.texts)} texts (one text tuple per id)")
    if not labelled and not rows.labels:
        rows.labels = [0.0] * n
    if len(rows.labels) != n:
        fail(f"{n} ids but {len(rows.labels)} labels (one per id" + ("" if labelled else
                                                                    ", or none for an unlabelled split") + ")")
    width = len(spec.text_columns)
    for i, (example_id, texts) in enumerate(zip(rows.ids, rows.texts)):
        if not isinstance(example_id, str):
            fail(f"id {example_id!r} (row {i}) of type {type(example_id).__name__}; ids are strings")
        if not isinstance(texts, tuple) or len(texts) != width or not all(isinstance(t, str) for t in texts):
            fail(f"texts {texts!r} for id {example_id} (row {i}); expected a tuple of {width} string(s) "
                 f"({', '.join(spec.text_columns)})")
    if labelled:
        for i, label in enumerate(rows.labels):
            try:
                rows.labels[i] = _parse_label(spec, str(float(label)))
            except (TypeError, ValueError) as exc:
                fail(f"label {label!r} for id {rows.ids[i]} (row {i}): {exc}")
    return rows


def header_columns(spec: TaskSpec, labelled: bool = True) -> list[str]:
    return [spec.id_column, *spec.text_columns, *([spec.label_column] if labelled else [])]


def read_task_file(path: str | os.PathLike, spec: TaskSpec, lenient: bool = False, labelled: bool = True) -> TaskRows:
    """Reads and validates one handout-format file: labelled (train, dev) or not (test; labels 0).

    Strict mode raises DataError at the first bad row; lenient mode skips bad rows and
    lists them in `TaskRows.skipped`. A bad header is always an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected the {spec.name} split {path.name})")
    rows = TaskRows(path=path)
    with open(path, newline="", encoding="utf-8") as fp:
        reader = csv.reader(fp, delimiter="\t", strict=True)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: file is empty (expected a header row)") from None
        needed = header_columns(spec, labelled)
        missing = [c for c in needed if c not in header]
        if missing:
            raise DataError(
                f"{path}, line 1: header {header} lacks column(s) {missing} "
                f"(expected columns {list(needed)} for task {spec.name})"
            )
        col = {name: header.index(name) for name in needed}
        line_end = reader.line_num
        while True:
            line_start = line_end + 1
            try:
                record = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                # strict=True raises on an opening quote that is never closed before EOF.
                rows.reject(line_start, f"{path}, line {line_start}", f"unbalanced quote ({exc})", lenient)
                break
            line_end = reader.line_num
            try:
                if line_end != line_start:
                    raise ValueError(
                        f"unbalanced quote: the record runs on to line {line_end} "
                        "(a field opened with \" is closed only there)"
                    )
                if not record or all(not f.strip() for f in record):
                    raise ValueError("blank line")
                if len(record) != len(header):
                    raise ValueError(f"expected {len(header)} tab-separated fields, found {len(record)}")
                texts = tuple(record[col[c]].strip() for c in spec.text_columns)
                for column, text in zip(spec.text_columns, texts):
                    if not text:
                        raise ValueError(f"empty {column}")
                label = _parse_label(spec, record[col[spec.label_column]]) if labelled else 0.0
                example_id = record[col[spec.id_column]].strip()
                if not example_id:
                    raise ValueError(f"empty {spec.id_column}")
            except ValueError as exc:
                rows.reject(line_start, f"{path}, line {line_start}", exc, lenient)
                continue
            rows.add(example_id, texts, label)
    if not rows.ids:
        raise DataError(f"{path}: no usable rows (expected at least one labelled example)")
    return rows


def check_data_dir(data_dir: str | os.PathLike, tasks: list[str], splits: tuple[str, ...] = ("train", "dev")) -> None:
    """Fails fast, before any model is loaded, if a needed file is missing or mis-headed. A task's
    reader with a `check(path, spec, labelled)` method checks its splits itself (a task file's
    datasets reader: the split is there, with the declared columns)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir}: not a directory")
    for name in tasks:
        spec = get_task(name)
        for split in splits:
            path = data_dir / spec.file(split)
            check = getattr(spec.reader, "check", None)
            if check is not None:  # a reader that checks a split itself (a task file's: harness/tasks/sources.py)
                check(path, spec, labelled=split != "test")
                continue
            if not path.is_file():
                needed = " and ".join(spec.file(s) for s in splits)
                raise DataError(f"{path}: file not found (needed for task {name}; --data-dir must hold {needed})")
            if spec.reader is not None:
                continue  # a task's own format: its reader checks the file when it reads it
            with open(path, newline="", encoding="utf-8") as fp:
                header = next(csv.reader(fp, delimiter="\t"), [])
            needed = header_columns(spec, labelled=split != "test")
            missing = [c for c in needed if c not in header]
            if missing:
                raise DataError(f"{path}, line 1: header {header} lacks column(s) {missing} "
                                f"(expected columns {needed} for task {name})")


def _tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        text = repr(sorted(tokenizer.get_vocab().items()))
    else:
        state = json.loads(backend.to_str())
        # Truncation and padding settings change as the tokenizer is used; they are call options.
        state.pop("truncation", None)
        state.pop("padding", None)
        text = json.dumps(state, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _file_sha256(path: Path) -> str:
    """A file's SHA-256, or a folder's (a dataset saved with save_to_disk): its files' names and bytes."""
    if not path.is_dir():
        return hashlib.sha256(path.read_bytes()).hexdigest()
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.endswith(".lock")):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def default_cache_dir() -> Path:
    import datasets.config

    return Path(datasets.config.HF_DATASETS_CACHE) / "bert-mtl-bench"


def tokenize_rows(rows: TaskRows, spec: TaskSpec, tokenizer, max_length: int, pair_encoding: str,
                  cache_dir: str | os.PathLike | None = None):
    """Builds a `datasets.Dataset` of token ids for one validated file, cached on disk.

    The cache key covers the file's bytes, the tokenizer, max_length, the pair encoding and
    which rows were kept, so a second run with the same inputs reads the Arrow file back
    instead of tokenising again.
    """
    import datasets

    columns: dict[str, list[Any]] = {"id": rows.ids, "label": rows.labels}
    for i, column in enumerate(spec.text_columns):
        columns[f"text{i}"] = [t[i] for t in rows.texts]
    raw = datasets.Dataset.from_dict(columns)
    joint = spec.is_pair and pair_encoding == "joint"

    def encode(batch):
        if joint:
            enc = tokenizer(batch["text0"], batch["text1"], truncation="longest_first", max_length=max_length,
                            return_attention_mask=False, return_token_type_ids=True)  # RoBERTa's gives none unasked
            return {"input_ids": enc["input_ids"], "token_type_ids": enc["token_type_ids"]}
        out = {"input_ids": tokenizer(batch["text0"], truncation=True, max_length=max_length,
                                      return_attention_mask=False, return_token_type_ids=False)["input_ids"]}
        if spec.is_pair:
            out["input_ids_b"] = tokenizer(batch["text1"], truncation=True, max_length=max_length,
                                           return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        return out

    text_columns = [c for c in columns if c.startswith("text")]
    if rows.path is None:  # texts given on the command line (`mtl-bench predict`): nothing to cache
        return raw.map(encode, batched=True, batch_size=1000, remove_columns=text_columns)
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    skipped = ",".join(str(line) for line, _ in rows.skipped)
    # The rows as read (ids and labels, whatever reader produced them) and the texts' columns are
    # part of the key, so a changed reader or label mapping never reuses a stale cache.
    rows_digest = hashlib.sha256(json.dumps([rows.ids, rows.labels, list(spec.text_columns)]).encode()).hexdigest()
    key = hashlib.sha256(
        "|".join([CACHE_VERSION, _file_sha256(rows.path), _tokenizer_fingerprint(tokenizer),
                  str(max_length), pair_encoding, spec.name, skipped, rows_digest]).encode()
    ).hexdigest()[:24]
    return raw.map(encode, batched=True, batch_size=1000, remove_columns=text_columns,
                   cache_file_name=str(cache_dir / f"{spec.name}-{key}.arrow"), load_from_cache_file=True,
                   new_fingerprint=key, desc=f"tokenising {rows.path.name}")


def _pad(sequences: list[list[int]], pad_id: int, multiple: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    longest = -(-max(len(s) for s in sequences) // multiple) * multiple
    ids = torch.full((len(sequences), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids[i, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids, mask


def collate(examples: dict[str, list], pad_id: int = 0, multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pads a batch (a `Dataset` slice: a dict of column lists) to its own longest sequence,
    rounded up to a multiple of `multiple` (8 under mixed precision, for tensor-core shapes);
    `pad_id` is the tokenizer's (TaskData.pad_id)."""
    batch: dict[str, torch.Tensor] = {}
    batch["input_ids"], batch["attention_mask"] = _pad(examples["input_ids"], pad_id, multiple)
    if "token_type_ids" in examples:
        batch["token_type_ids"], _ = _pad(examples["token_type_ids"], 0, multiple)
    if "input_ids_b" in examples:
        batch["input_ids_b"], batch["attention_mask_b"] = _pad(examples["input_ids_b"], pad_id, multiple)
    batch["labels"] = torch.tensor(examples["label"], dtype=torch.float)
    return batch


@dataclass
class TaskData:
    spec: TaskSpec
    train: Any  # datasets.Dataset
    dev: Any
    dev_ids: list[str]
    skipped: dict[str, list[tuple[int, str]]]  # file name -> skipped (line, problem)
    pad_id: int = 0  # the tokenizer's padding id
    validation: Any = None  # held out from the training file (--validation-fraction), or None
    validation_ids: list[str] = field(default_factory=list)
    # TaskSpec.extra_dev's files (MNLI's mismatched dev set), tokenised: name -> (ids, dataset)
    extra_dev: dict[str, tuple[list[str], Any]] = field(default_factory=dict)


def validation_rows(task: str, ids: list[str], fraction: float) -> list[bool]:
    """Which training rows are held out for validation: a row is, if a hash of its task and id falls
    below `fraction`. Deterministic and independent of the rows' order, the seed and the other rows."""
    def position(row_id: str) -> float:
        digest = hashlib.sha256(f"{task}\0{row_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64
    return [position(i) < fraction for i in ids]


def load_task_data(data_dir: str | os.PathLike, tasks: list[str], tokenizer, max_length: int,
                   pair_encoding: str = "joint", lenient: bool = False,
                   cache_dir: str | os.PathLike | None = None, validation_fraction: float = 0.0) -> dict[str, TaskData]:
    """Validates and tokenises the train and dev splits of each task; with `validation_fraction`, holds
    that fraction of each training file out as its validation split (`validation_rows`)."""
    data_dir = Path(data_dir)
    out: dict[str, TaskData] = {}
    for name in tasks:
        spec = get_task(name)
        splits = {}
        skipped = {}
        for split in ("train", "dev"):
            filename = spec.file(split)
            rows = read_rows(data_dir / filename, spec, lenient=lenient)
            skipped[filename] = rows.skipped
            splits[split] = (rows, tokenize_rows(rows, spec, tokenizer, max_length, pair_encoding, cache_dir))
        data = TaskData(spec, splits["train"][1], splits["dev"][1], splits["dev"][0].ids, skipped,
                        pad_id_of(tokenizer),
                        extra_dev=load_extra_dev(data_dir, spec, tokenizer, max_length, pair_encoding, cache_dir))
        if validation_fraction > 0:
            train_rows = splits["train"][0]
            held = validation_rows(name, train_rows.ids, validation_fraction)
            if all(held) or not any(held):
                raise DataError(f"{spec.file('train')}: --validation-fraction {validation_fraction} leaves "
                                f"{'no training' if all(held) else 'no validation'} rows of its {len(held)}")
            data.validation = data.train.select([i for i, h in enumerate(held) if h])
            data.validation_ids = [i for i, h in zip(train_rows.ids, held) if h]
            data.train = data.train.select([i for i, h in enumerate(held) if not h])
        out[name] = data
    return out


def load_split(data_dir: str | os.PathLike, task: str, split: str, tokenizer, max_length: int,
               pair_encoding: str = "joint", lenient: bool = False, cache_dir: str | os.PathLike | None = None):
    """One split of one task (dev, or the unlabelled test split), validated and tokenised: (rows, dataset)."""
    spec = get_task(task)
    rows = read_rows(Path(data_dir) / spec.file(split), spec, lenient=lenient, labelled=split != "test")
    return rows, tokenize_rows(rows, spec, tokenizer, max_length, pair_encoding, cache_dir)


def load_extra_dev(data_dir: str | os.PathLike, spec: TaskSpec, tokenizer, max_length: int,
                   pair_encoding: str = "joint", cache_dir: str | os.PathLike | None = None
                   ) -> dict[str, tuple[list[str], Any]]:
    """A task's extra dev files (TaskSpec.extra_dev), read strictly (a bad row is a DataError naming the
    file and line: these rows are never skipped) and tokenised as its dev file is: name -> (ids, dataset)."""
    out = {}
    for name, file in spec.extra_dev.items():
        rows = read_rows(Path(data_dir) / file, spec)
        out[name] = rows.ids, tokenize_rows(rows, spec, tokenizer, max_length, pair_encoding, cache_dir)
    return out


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
