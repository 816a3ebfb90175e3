"""Harness overhead: optimizer steps/s of the harness's training step against a minimal
hand-written PyTorch loop on the same model, batches, optimizer and thread count, alternated
step by step in one run. Medians, and the ratio.

The plain loop gets its batches already padded; the harness does everything it does in
training: draws the task, checks ranks agree, takes indices, pads, sets per-task learning
rates, checks the loss is finite, steps, queues the metrics.

    python benchmarks/overhead.py                      # packaged MiniLM, multitask
    python benchmarks/overhead.py --variant pals-parallel --steps 20
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--variant", default="multitask")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    args = parser.parse_args()

    import torch
    from accelerate.utils import set_seed

    from harness.config import resolve_config
    from harness.data import collate
    from harness.distributed import agree_on_step
    from harness.model import build_model, load_encoder, task_loss
    from harness.train import preflight, setup, train_step

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = resolve_config(dict(model=args.model, variant=args.variant, data_dir=args.data_dir,
                                     batch_size=args.batch_size, max_length=args.max_length, lr=1e-5,
                                     scheduler="constant", epochs=1, batches_per_epoch=args.steps + args.warmup,
                                     output_dir=f"{tmp}/out", tracking_uri=f"sqlite:///{tmp}/mlflow.db",
                                     progress=False))
        variant_config, _ = preflight(config)
        run = setup(config, variant_config, None)

        # The plain loop: the same initial weights, the same tasks and examples, pre-padded.
        set_seed(config.seed)
        encoder, _ = load_encoder(config.model)
        plain = build_model(encoder, config.variant, variant_config, config.pair_encoding).train()
        plain.load_state_dict(run.model.state_dict())
        plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        sampler, streams = copy.deepcopy(run.sampler), copy.deepcopy(run.streams)
        plan = []
        for _ in range(args.steps + args.warmup):
            task = sampler.sample(1)
            indices = streams[task].take(config.batch_size)
            plan.append((task, collate(run.data[task].train[[int(i) for i in indices]])))

        def plain_step(task, batch):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = task_loss(task, plain(task, **inputs), batch["labels"], config.pair_encoding)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), config.max_grad_norm)
            plain_optimizer.step()
            plain_optimizer.zero_grad(set_to_none=True)

        def harness_step():
            task = run.sampler.sample(1)
            agree_on_step(run.accelerator, run.tasks.index(task), False, run.state.step, run.tasks)
            losses = train_step(run, [task])
            run.state.step += 1
            run.tracker.log_metrics({**{f"train/loss/{t}": v for t, v in losses.items()}, "train/lr": config.lr},
                                    step=run.state.step)

        harness_times, plain_times = [], []
        for i, (task, batch) in enumerate(plan):
            started = time.perf_counter()
            harness_step()
            middle = time.perf_counter()
            plain_step(task, batch)
            ended = time.perf_counter()
            if i >= args.warmup:
                harness_times.append(middle - started)
                plain_times.append(ended - middle)
        run.tracker.finish()

    h, p = float(np.median(harness_times)), float(np.median(plain_times))
    print(f"model {args.model}, variant {args.variant}, batch {args.batch_size} x up to {args.max_length} tokens, "
          f"{args.threads} threads, {args.steps} alternated steps each (median)")
    print("| loop | ms per step | steps/s |")
    print("|---|---|---|")
    print(f"| plain PyTorch | {1000 * p:.1f} | {1 / p:.3f} |")
    print(f"| harness | {1000 * h:.1f} | {1 / h:.3f} |")
    print(f"harness / plain step time: {h / p:.3f} ({(h / p - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
