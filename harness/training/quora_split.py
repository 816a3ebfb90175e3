"""Builds the bundled Quora train/dev split from the handout's quora-dev.csv.

The handout's quora-train.csv is not available to this project, so the bundled data splits
the real quora-dev.csv (20,214 rows) by a stable hash of each row's id: about 80% train,
20% dev. Rows are copied byte for byte. Rows that fail validation (2 in the handout file,
both with an empty is_duplicate) go to quora-excluded.csv with their line and problem,
so none is lost silently.

    python -m harness.training.quora_split ../shared/data/quora-dev.csv data/
"""
from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from harness.training.data import read_task_file
from harness.tasks import get_task

TRAIN_PERCENT = 80


def assign_split(example_id: str) -> str:
    """'train' or 'dev', from the first 8 bytes of sha256(id): stable across machines and runs."""
    bucket = int(hashlib.sha256(example_id.encode("utf-8")).hexdigest()[:16], 16) % 100
    return "train" if bucket < TRAIN_PERCENT else "dev"


def split_quora(source: Path, out_dir: Path) -> dict[str, int]:
    rows = read_task_file(source, get_task("quora"), lenient=True)
    bad = dict(rows.skipped)
    lines = source.read_text(encoding="utf-8").splitlines(keepends=True)
    header, body = lines[0], lines[1:]
    # Every record of the handout file sits on one physical line (checked by read_task_file,
    # which reports a record spanning lines as an unbalanced quote), so line n is record n.
    outputs = {"train": [header], "dev": [header]}
    excluded = ["line\tproblem\trow\n"]
    id_column = header.rstrip("\n").split("\t").index("id")
    for line_no, line in enumerate(body, start=2):
        if line_no in bad:
            excluded.append(f"{line_no}\t{bad[line_no]}\t{line}")
            continue
        example_id = line.split("\t")[id_column]
        outputs[assign_split(example_id)].append(line)
    out_dir.mkdir(parents=True, exist_ok=True)
    for split, content in outputs.items():
        (out_dir / f"quora-{split}.csv").write_text("".join(content), encoding="utf-8")
    (out_dir / "quora-excluded.csv").write_text("".join(excluded), encoding="utf-8")
    counts = {split: len(content) - 1 for split, content in outputs.items()}
    counts["excluded"] = len(excluded) - 1
    assert counts["train"] + counts["dev"] == len(rows), "a valid row went missing"
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the handout's quora-dev.csv")
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args()
    print(split_quora(args.source, args.out_dir))


if __name__ == "__main__":
    main()
