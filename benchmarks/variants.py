"""Cost of each variant against `multitask` on the same batches: training step time, evaluation
throughput, peak memory, and achieved FLOP/s as a fraction of this machine's fp32 matmul FLOP/s.

Each variant runs in a fresh subprocess (peak memory is per process), on the same fixed batches
drawn from the bundled data, with the same thread count; medians over the timed steps.

    python benchmarks/variants.py                         # packaged MiniLM, all variants
    python benchmarks/variants.py --variants multitask,pals-top --steps 3   # a quick look
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def matmul_flops(size: int = 1536, repeats: int = 10) -> float:
    """This machine's fp32 matmul FLOP/s (median of repeats), the ceiling the step is compared with."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    times.sort()
    return 2 * size ** 3 / times[len(times) // 2]


def fixed_batches(tokenizer, count: int, batch_size: int, max_length: int, task: str):
    """`count` training batches of one task from the bundled data, the same for every variant."""
    from harness.training.data import collate, load_task_data

    data = load_task_data(REPO / "data", [task], tokenizer, max_length)[task]
    return [collate(data.train[i * batch_size:(i + 1) * batch_size]) for i in range(count)], data


def worker(args) -> dict:
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from harness.model.network import build_model, load_encoder, predictions, task_loss
    from harness.training.optim import make_optimizer
    from harness.model.params import count_parameters
    from harness.runs.finish import peak_rss_mb
    from variants import make_config

    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    encoder, tokenizer = load_encoder(args.model)
    config = make_config(args.worker, {"tasks": args.task})
    model = build_model(encoder, args.worker, config, "joint").train()
    optimizer = make_optimizer(model, "adamw", 1e-5, 0.0)
    batches, data = fixed_batches(tokenizer, args.warmup + args.steps, args.batch_size, args.max_length, args.task)

    def step(batch):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        loss = task_loss(args.task, model(args.task, **inputs), batch["labels"], "joint")
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    with FlopCounterMode(display=False) as counter:
        step(batches[0])
    flops_per_step = counter.get_total_flops()
    times = []
    for i, batch in enumerate(batches[1:]):
        started = time.perf_counter()
        step(batch)
        if i >= args.warmup - 1:
            times.append(time.perf_counter() - started)

    model.eval()
    dev = data.dev
    order = np.argsort([len(x) for x in dev["input_ids"]], kind="stable")[: args.eval_examples]
    from harness.training.data import collate

    started = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(order), 64):
            batch = collate(dev[[int(i) for i in order[s:s + 64]]])
            batch.pop("labels")
            predictions(args.task, model(args.task, **batch), "joint")
    eval_seconds = time.perf_counter() - started
    tokens = sum(int(b["attention_mask"].sum()) for b in batches[1:])
    return {"variant": args.worker, "step_s": float(np.median(times)), "eval_examples_per_s": len(order) / eval_seconds,
            "peak_rss_mb": peak_rss_mb(), "flops_per_step": flops_per_step,
            "flops_per_token": flops_per_step / batches[0]["attention_mask"].numel(),
            "task_specific": count_parameters(model).task_specific[args.task],
            "attn_implementation": model.encoder.config._attn_implementation,
            "padding_fraction": 1 - tokens / sum(b["attention_mask"].numel() for b in batches[1:])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--variants", default="", help="comma-separated; default: every registered variant")
    parser.add_argument("--task", default="sst", help="the task whose batches every variant trains")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return

    from variants import list_variants

    names = args.variants.split(",") if args.variants else [v.name for v in list_variants()]
    if "multitask" in names:
        names.remove("multitask")
    names.insert(0, "multitask")
    names = [n for n in names if args.task in __import__("variants").make_config(n).tasks]
    rows = []
    for name in names:
        command = [sys.executable, __file__, "--worker", name, *sys.argv[1:]]
        result = subprocess.run(command, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            raise SystemExit(f"{name} failed:\n{result.stderr[-3000:]}")
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(f"{name}: done", file=sys.stderr, flush=True)
    import torch

    torch.set_num_threads(args.threads)
    ceiling = matmul_flops()
    base = rows[0]
    print(f"model {args.model}, task {args.task}, batch {args.batch_size} x up to {args.max_length} tokens, "
          f"{args.threads} threads, {args.steps} timed steps (median); fp32 matmul ceiling "
          f"{ceiling / 1e9:.1f} GFLOP/s (median of 10 1536x1536 matmuls)")
    print("| variant | task-specific params | step ms | step vs multitask | eval ex/s | eval vs multitask | "
          "peak RSS MB | RSS vs multitask | MFLOP/token | GFLOP/step | achieved GFLOP/s | of ceiling | attention |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        achieved = r["flops_per_step"] / r["step_s"]
        print(f"| {r['variant']} | {r['task_specific']:,} | {1000 * r['step_s']:.0f} | {r['step_s'] / base['step_s']:.2f}x | "
              f"{r['eval_examples_per_s']:.0f} | {r['eval_examples_per_s'] / base['eval_examples_per_s']:.2f}x | "
              f"{r['peak_rss_mb']:.0f} | {r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x | "
              f"{r['flops_per_token'] / 1e6:.1f} | {r['flops_per_step'] / 1e9:.1f} | {achieved / 1e9:.1f} | {achieved / ceiling:.0%} | "
              f"{r['attn_implementation']} |")


if __name__ == "__main__":
    main()
