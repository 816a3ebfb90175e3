"""Padding in training batches, with and without length-aware batching, on the bundled data.

Tokenises every task's training split with the packaged tokenizer, draws one full pass of
batches from the harness's own TaskStream (2 ranks x micro-batch 8 by default, each rank padded
to its own longest example, as the loop does), and prints the fraction of batch tokens that
are padding, per task and overall. It also checks on the way that each pass covers every
example once and that the ranks' slices never overlap.

    python benchmarks/padding.py
    python benchmarks/padding.py --max-length 128 --world-size 1 --batch-size 16
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def measure(lengths: np.ndarray, grouped: bool, world: int, micro: int, accum: int, seed: int) -> tuple[int, int]:
    from harness.tasks.sampler import TaskStream

    step = world * micro * accum
    stream = TaskStream(len(lengths), seed, lengths if grouped else None, step_size=step)
    real = padded = 0
    seen = []
    while len(seen) * world * micro < len(lengths) - world * micro:
        block = stream.take(world * micro)
        slices = [block[r * micro:(r + 1) * micro] for r in range(world)]
        assert not set(slices[0]).intersection(*map(set, slices[1:])), "rank slices overlap"
        for s in slices:
            real += int(lengths[s].sum())
            padded += int(lengths[s].max()) * len(s)
        seen.append(block)
    indices = np.concatenate(seen)
    assert len(set(indices.tolist())) == len(indices), "an example came twice within one pass"
    return real, padded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=8, help="per rank and micro-step")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from harness.training.data import load_task_data
    from harness.tasks import default_tasks
    from harness.model.network import load_encoder

    _, tokenizer = load_encoder(args.model)
    data = load_task_data(args.data_dir, list(default_tasks()), tokenizer, args.max_length)
    print(f"{args.world_size} rank(s) x micro-batch {args.batch_size} x accumulation {args.grad_accum}, "
          f"max {args.max_length} tokens, joint pair encoding, one pass over each task's training split")
    print("| task | examples | padding, shuffled | padding, length-grouped | padded tokens saved |")
    print("|---|---|---|---|---|")
    totals = {False: [0, 0], True: [0, 0]}
    for task, task_data in data.items():
        lengths = np.array([len(x) for x in task_data.train["input_ids"]])
        fractions = {}
        for grouped in (False, True):
            real, padded = measure(lengths, grouped, args.world_size, args.batch_size, args.grad_accum, args.seed)
            totals[grouped][0] += real
            totals[grouped][1] += padded
            fractions[grouped] = (1 - real / padded, padded)
        print(f"| {task} | {len(lengths):,} | {fractions[False][0]:.1%} | {fractions[True][0]:.1%} | "
              f"{1 - fractions[True][1] / fractions[False][1]:.1%} |")
    plain, grouped = (1 - r / p for r, p in (totals[False], totals[True]))
    print(f"| all | | {plain:.1%} | {grouped:.1%} | {1 - totals[True][1] / totals[False][1]:.1%} |")


if __name__ == "__main__":
    main()
