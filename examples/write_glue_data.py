"""Writes the GLUE tasks from the Hugging Face `datasets` GLUE dataset (nyu-mll/glue) in the folder
layout of the original `download_glue_data.py`, which `--data-dir` reads (harness/tasks/glue.py):

    python examples/write_glue_data.py glue_data            # all nine tasks
    python examples/write_glue_data.py glue_data mnli rte   # some

It needs the Hugging Face Hub (run it on a machine with internet; it could not be run where this
script was written, which has none). Columns the `datasets` version lacks (MNLI's parses and genre,
STS-B's genre and source, QQP's question ids) are written as placeholders: the harness reads only
ids, texts and labels. Labels are written as the original files write them: MNLI's, QNLI's and RTE's
as strings (entailment, ...), the others as numbers. Tabs and line breaks inside a text become spaces
(one record per line, as in the original files).
"""
from __future__ import annotations

import sys
from pathlib import Path

MNLI_COLUMNS = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
STSB_COLUMNS = ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2"]


def _text(value: str) -> str:
    return " ".join(str(value).replace("\t", " ").splitlines())


def _label(task: str, example: dict, names: list[str]) -> str:
    if task == "stsb":
        return f"{example['label']:.3f}"
    return names[example["label"]] if task in ("mnli", "qnli", "rte") else str(example["label"])


def _row(task: str, split: str, i: int, x: dict, names: list[str]) -> list[str] | None:
    """One record of the original layout (None: a header-only layout's header is written separately)."""
    test = split.startswith("test")
    label = [] if test else [_label(task, x, names)]
    idx = str(x["idx"])
    if task == "cola":
        return [idx, _text(x["sentence"])] if test else ["glue", label[0], "" if label[0] == "1" else "*",
                                                        _text(x["sentence"])]
    if task == "sst2":
        return [idx, _text(x["sentence"])] if test else [_text(x["sentence"]), label[0]]
    if task == "mrpc":
        pair = [str(2 * i), str(2 * i + 1), _text(x["sentence1"]), _text(x["sentence2"])]
        return [idx, *pair] if test else [label[0], *pair]
    if task == "qqp":
        questions = [_text(x["question1"]), _text(x["question2"])]
        return [idx, *questions] if test else [idx, str(2 * i), str(2 * i + 1), *questions, *label]
    if task == "stsb":
        return [idx, "none", "none", "none", idx, "none", "none", _text(x["sentence1"]), _text(x["sentence2"]), *label]
    if task == "mnli":
        fields = [idx, idx, idx, "none", "-", "-", "-", "-", _text(x["premise"]), _text(x["hypothesis"])]
        return fields + (label * (1 if split == "train" else 5) + label if label else [])
    first, second = ("question", "sentence") if task == "qnli" else ("sentence1", "sentence2")
    return [idx, _text(x[first]), _text(x[second]), *label]


def _header(task: str, split: str) -> list[str] | None:
    test = split.startswith("test")
    if task == "mnli":
        return MNLI_COLUMNS + ([] if test else ["label1", "gold_label"] if split == "train"
                               else ["label1", "label2", "label3", "label4", "label5", "gold_label"])
    if test:
        return {"qqp": ["id", "question1", "question2"], "stsb": STSB_COLUMNS,
                "mrpc": ["index", "#1 ID", "#2 ID", "#1 String", "#2 String"],
                "qnli": ["index", "question", "sentence"]}.get(
            task, ["index", "sentence"] if task in ("cola", "sst2") else ["index", "sentence1", "sentence2"])
    return {"cola": None, "sst2": ["sentence", "label"],
            "mrpc": ["Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"],
            "qqp": ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], "stsb": STSB_COLUMNS + ["score"],
            "qnli": ["index", "question", "sentence", "label"]}.get(task, ["index", "sentence1", "sentence2", "label"])


FOLDERS = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "qqp": "QQP", "stsb": "STS-B", "mnli": "MNLI",
           "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}
SPLITS = {"train": "train", "validation": "dev", "test": "test", "validation_matched": "dev_matched",
          "validation_mismatched": "dev_mismatched", "test_matched": "test_matched",
          "test_mismatched": "test_mismatched"}


def write_task(folder: Path, task: str, splits) -> list[Path]:
    """Writes one task's splits (a `datasets.DatasetDict` or a dict of `Dataset`s, keyed by the
    `datasets` split names) as <folder>/<Task>/<file>.tsv; returns the files written."""
    out = Path(folder) / FOLDERS[task]
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for split, dataset in splits.items():
        file = SPLITS[split]
        feature = dataset.features["label"]
        names = list(getattr(feature, "names", []))
        header = _header(task, file)
        lines = [] if header is None else ["\t".join(header)]
        lines += ["\t".join(_row(task, file, i, x, names)) for i, x in enumerate(dataset)]
        path = out / f"{file}.tsv"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        written.append(path)
    return written


def main(argv: list[str]) -> int:
    from datasets import load_dataset

    if not argv:
        print(__doc__)
        return 2
    folder, tasks = Path(argv[0]), argv[1:] or list(FOLDERS)
    unknown = [t for t in tasks if t not in FOLDERS]
    if unknown:
        print(f"unknown task(s) {unknown}; GLUE's: {', '.join(FOLDERS)}", file=sys.stderr)
        return 2
    for task in tasks:
        for path in write_task(folder, task, load_dataset("nyu-mll/glue", task)):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
