"""The four CS224N tasks: what their files look like and how they are scored.

A task is plain data here; the loss and the head live in `harness.model`, the metrics in
`harness.metrics`. Keeping the file layout in one table means a user pointing `--data-dir`
at the complete CS224N handout gets exactly the standard splits.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskSpec:
    name: str
    file_stem: str  # files are <file_stem>-train.csv and <file_stem>-dev.csv
    text_columns: tuple[str, ...]  # one column: single sentence; two: a sentence pair
    label_column: str
    kind: str  # "classification" (num_classes) | "paraphrase" (binary) | "similarity" (0-5)
    num_classes: int = 0
    metric: str = "accuracy"

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2

    def train_file(self) -> str:
        return f"{self.file_stem}-train.csv"

    def dev_file(self) -> str:
        return f"{self.file_stem}-dev.csv"


TASKS: dict[str, TaskSpec] = {
    "sst": TaskSpec("sst", "ids-sst", ("sentence",), "sentiment", "classification", num_classes=5),
    "cfimdb": TaskSpec("cfimdb", "ids-cfimdb", ("sentence",), "sentiment", "classification", num_classes=2),
    "quora": TaskSpec("quora", "quora", ("sentence1", "sentence2"), "is_duplicate", "paraphrase"),
    "sts": TaskSpec("sts", "sts", ("sentence1", "sentence2"), "similarity", "similarity", metric="pearson"),
}

ALL_TASKS: tuple[str, ...] = tuple(TASKS)

# The CS224N overall score: mean(SST acc, Quora acc, (STS r + 1) / 2).
OVERALL_TASKS: tuple[str, ...] = ("sst", "quora", "sts")

SIMILARITY_MAX = 5.0


def get_task(name: str) -> TaskSpec:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}") from None
