"""A plain PyTorch multitask loop against the harness's `multitask` at an equal budget, per seed.

The plain loop is what a user writes first: the packaged MiniLM, AdamW at a constant learning
rate with no warm-up, one task per step drawn with the annealed probabilities, each batch drawn
at random from that task's training rows, the encoder in train mode, the joint encoding's [CLS]
into one Linear per task, cross-entropy (SST), a logit and binary cross-entropy (Quora, as the
harness), squared error on the raw STS labels. Both sides read the same rows (the harness's
readers) and report dev scores on the whole dev files.

Each RUN is `plain` or `harness`, optionally with settings after a colon:

    plain:clip=1.0,head_dropout=0.1,tasks=sst+cfimdb+quora+sts,sampling=epochs
    harness:max_grad_norm=0,length_grouping=false,tasks=sst+cfimdb+quora+sts

plain's settings: clip (global gradient-norm clipping, 0 = none), head_dropout (dropout before
each head, 0 = none), weight_decay (AdamW's), tasks (joined by +), sampling (`random`: each batch
drawn at random from the task's rows, as described above; `epochs`: the rows in a shuffled order,
reshuffled when used up, as the harness's streams without length grouping). A harness run's
settings are TrainConfig fields (`mtl-bench train --help`); the shared budget below applies to
both sides unless a run overrides it.

    python benchmarks/sts_equal_budget.py --seeds 0 1 2 --runs plain harness
    python benchmarks/sts_equal_budget.py --seeds 0 1 2 --runs harness harness:max_grad_norm=0

Prints each run's dev scores per seed, their medians, and each run's median difference from the
first run's on the same seeds.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

BUDGET = dict(epochs=3, batches_per_epoch=100, batch_size=16, lr=2e-5, max_length=128)
TASKS = ("sst", "quora", "sts")
PLAIN_DEFAULTS = dict(clip=0.0, head_dropout=0.0, weight_decay=0.01, tasks="+".join(TASKS), sampling="random")


def parse_run(text: str) -> tuple[str, dict[str, str]]:
    side, _, rest = text.partition(":")
    if side not in ("plain", "harness"):
        raise SystemExit(f"--runs {text!r}: a run is 'plain' or 'harness', optionally ':key=value,...'")
    settings = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"--runs {text!r}: {item!r} is not key=value")
        settings[key.strip()] = value.strip()
    if side == "plain":
        unknown = set(settings) - set(PLAIN_DEFAULTS)
        if unknown:
            raise SystemExit(f"--runs {text!r}: plain has no setting {sorted(unknown)}; known: {sorted(PLAIN_DEFAULTS)}")
    return side, settings


def dev_scores(task: str, outputs: list[float] | np.ndarray, labels) -> float:
    from scipy import stats

    outputs, labels = np.asarray(outputs, dtype=float), np.asarray(labels, dtype=float)
    if task == "sts":
        return float(stats.pearsonr(outputs, labels)[0])
    return float(np.mean(outputs == labels))


def plain_run(seed: int, settings: dict[str, str], data_dir: Path, model: str) -> dict[str, float]:
    import torch
    import torch.nn.functional as F
    from torch import nn
    from transformers import AutoModel, AutoTokenizer

    from harness.data import read_rows
    from harness.model import resolve_model_path
    from harness.sampler import task_probabilities
    from harness.tasks import get_task

    s = {**PLAIN_DEFAULTS, **settings}
    tasks = s["tasks"].split("+")
    clip, head_dropout, weight_decay = float(s["clip"]), float(s["head_dropout"]), float(s["weight_decay"])
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    path = resolve_model_path(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path, add_pooling_layer=False)
    specs = {t: get_task(t) for t in tasks}
    heads = nn.ModuleDict({t: nn.Linear(encoder.config.hidden_size, specs[t].outputs) for t in tasks})
    dropout = nn.Dropout(head_dropout)
    encoder.train(), heads.train()
    optimizer = torch.optim.AdamW([*encoder.parameters(), *heads.parameters()], lr=BUDGET["lr"],
                                  weight_decay=weight_decay)

    def rows(task: str, split: str):
        spec = specs[task]
        return read_rows(data_dir / spec.files[split], spec)

    def encode(task: str, texts: list[tuple[str, ...]]):
        columns = list(zip(*texts))
        return tokenizer(*columns, truncation=True, max_length=BUDGET["max_length"], padding=True,
                         return_tensors="pt")

    def forward(task: str, batch) -> torch.Tensor:
        cls = encoder(**batch).last_hidden_state[:, 0]
        out = heads[task](dropout(cls))
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def loss_of(task: str, out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        spec = specs[task]
        if spec.kind == "regression":
            return F.mse_loss(out, labels)
        if spec.binary_logit:
            return F.binary_cross_entropy_with_logits(out, labels)
        return F.cross_entropy(out, labels.long())

    train = {t: rows(t, "train") for t in tasks}
    orders = {t: [] for t in tasks}

    def draw(task: str) -> list[int]:
        n = len(train[task])
        if s["sampling"] == "random":
            return rng.choice(n, BUDGET["batch_size"], replace=False).tolist()
        if s["sampling"] != "epochs":
            raise SystemExit(f"plain: sampling {s['sampling']!r} is not 'random' or 'epochs'")
        if len(orders[task]) < BUDGET["batch_size"]:
            orders[task].extend(rng.permutation(n).tolist())
        taken, orders[task][:] = orders[task][:BUDGET["batch_size"]], orders[task][BUDGET["batch_size"]:]
        return taken

    sizes = {t: len(train[t]) for t in tasks}
    for epoch in range(1, BUDGET["epochs"] + 1):
        p = list(task_probabilities(sizes, "annealed", epoch, BUDGET["epochs"]).values())
        for _ in range(BUDGET["batches_per_epoch"]):
            task = tasks[int(rng.choice(len(tasks), p=p))]
            index = draw(task)
            batch = encode(task, [train[task].texts[i] for i in index])
            labels = torch.tensor([train[task].labels[i] for i in index], dtype=torch.float)
            loss = loss_of(task, forward(task, batch), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip > 0:
                torch.nn.utils.clip_grad_norm_([*encoder.parameters(), *heads.parameters()], clip)
            optimizer.step()
    encoder.eval(), heads.eval()
    scores = {}
    with torch.no_grad():
        for task in tasks:
            dev = rows(task, "dev")
            outputs = []
            for start in range(0, len(dev), 64):
                out = forward(task, encode(task, dev.texts[start:start + 64]))
                spec = specs[task]
                if spec.kind == "regression":
                    outputs.extend(out.tolist())
                elif spec.binary_logit:
                    outputs.extend((out > 0).float().tolist())
                else:
                    outputs.extend(out.argmax(-1).float().tolist())
            scores[task] = dev_scores(task, outputs, dev.labels)
    return scores


def harness_run(seed: int, settings: dict[str, str], data_dir: Path, model: str, tmp: Path) -> dict[str, float]:
    from harness import names
    from harness.config import convert_setting, resolve_config
    from harness.train import train

    overrides = dict(BUDGET, tasks=",".join(TASKS), scheduler="constant", warmup_fraction=0.0)
    overrides.update({key: convert_setting(key, value.replace("+", ",") if key == "tasks" else value, "--runs")
                      for key, value in settings.items()})
    config = resolve_config(dict(overrides, variant="multitask", seed=seed, model=model, data_dir=str(data_dir),
                                 output_dir=str(tmp / "out"), tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                                 experiment="sts-equal-budget", progress=False, system_metrics_interval=0))
    metrics = train(config)
    return {t: metrics[names.primary_key(t)] for t in config.tasks.split(",")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", nargs="+", default=["plain", "harness"], help="plain[:k=v,...] or harness[:k=v,...]")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--model", default="default", help="a BERT checkpoint folder (default: packaged MiniLM)")
    parser.add_argument("--data-dir", type=Path, default=REPO / "data")
    parser.add_argument("--batches-per-epoch", type=int, default=BUDGET["batches_per_epoch"],
                        help="optimizer steps per epoch, both sides (default: %(default)s)")
    parser.add_argument("--max-length", type=int, default=BUDGET["max_length"],
                        help="tokens per example, both sides (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    runs = [(text, *parse_run(text)) for text in args.runs]
    BUDGET.update(batches_per_epoch=args.batches_per_epoch, max_length=args.max_length)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results: dict[str, dict[int, dict[str, float]]] = {}
    for text, side, settings in runs:
        results[text] = {}
        for seed in args.seeds:
            started = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                scores = (plain_run(seed, settings, args.data_dir, args.model) if side == "plain"
                          else harness_run(seed, settings, args.data_dir, args.model, Path(tmp)))
            results[text][seed] = scores
            shown = "  ".join(f"{t} {v:.4f}" for t, v in scores.items())
            print(f"{text:<50} seed {seed}: {shown}  ({time.perf_counter() - started:.0f} s)", flush=True)
    first = runs[0][0]
    print(f"\nmedians over seeds {args.seeds}; diff: the median of the per-seed differences from {first}")
    for text, _, _ in runs:
        tasks = sorted({t for s in results[text].values() for t in s})
        parts = []
        for task in tasks:
            values = [results[text][seed][task] for seed in args.seeds]
            part = f"{task} {np.median(values):.4f}"
            if text != first and all(task in results[first][seed] for seed in args.seeds):
                part += f" (diff {np.median([v - results[first][seed][task] for v, seed in zip(values, args.seeds)]):+.4f})"
            parts.append(part)
        print(f"{text:<50} " + "  ".join(parts))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
