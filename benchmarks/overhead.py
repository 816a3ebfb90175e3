"""Harness overhead: the harness's training step against the minimal PyTorch loop doing the same
arithmetic on the same batches, alternated step by step in one process. Medians, and the ratio.

The harness step does everything it does in training: draws the task, checks ranks agree,
takes indices, pads the batch and moves it to the device, sets per-task learning rates, checks
the loss is finite, clips, steps, queues the metrics. The minimal loop runs on a copy of the
harness's model (same weights, same train mode, so the same dropout) on the same batches (drawn
ahead from copies of the harness's sampler and streams, padded and on the device, checked equal
to the harness's own each step): forward, loss, backward, clip, AdamW step,
zero_grad(set_to_none=True). Its AdamW steps exactly the parameters the harness's steps (those
with a gradient: the shared ones and the drawn task's; other tasks' parts keep None, as
`inactive_tasks="skip"` leaves them). The script stops if the loops differ in mode, batches or
stepped parameters. By default the loops alternate which runs first; the report gives the
median ratio for each order.

Why the old floor was slower than the harness (0.948x, 0.950x): in part, transformers'
from_pretrained returns the encoder in eval mode and the harness switched to train mode only in
its first evaluation, so it trained without dropout (and, on CPU, with the fused attention
kernel, which dropout takes away) while the plain loop had dropout: a harness bug, fixed in
harness.runs.setup.setup. With the fix and the harness always first the ratio stayed below 1 under
load (0.900); the order within a pair is the other suspect (see docs/benchmarks.md).

    python benchmarks/overhead.py                      # packaged MiniLM, multitask
    python benchmarks/overhead.py --variant pals-parallel --steps 20
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


@contextmanager
def recorded_batches():
    """Collects every batch harness.runs.loop builds for its steps, as built (padded, on the device)."""
    import harness.runs.loop as train_module

    batches, original = [], train_module.make_batch

    def recording(*args, **kwargs):
        batch = original(*args, **kwargs)
        batches.append(batch)
        return batch

    train_module.make_batch = recording
    try:
        yield batches
    finally:
        train_module.make_batch = original


def count_stepped(counts: list[int]):
    """An optimizer step pre-hook recording how many parameters the step will update (grad not None)."""
    def hook(optimizer, args, kwargs):
        counts.append(sum(p.grad is not None for group in optimizer.param_groups for p in group["params"]))
    return hook


def measure(model: str, variant: str = "multitask", steps: int = 30, warmup: int = 3, batch_size: int = 16,
            max_length: int = 64, threads: int = 2, data_dir: str = str(REPO / "data"), cache_dir: str = "",
            alternate: bool = True) -> dict:
    """Median step times of both loops on the same batches; raises if the two loops do different work."""
    import torch
    from accelerate.utils import set_seed

    from harness.core import names
    from harness.core.config import resolve_config
    from harness.training.distributed import agree_on_step
    from harness.training.evaluation import make_batch, pad_multiple
    from harness.model.network import build_model, load_encoder, task_loss
    from harness.training.optim import innermost
    from harness.runs.loop import train_step
    from harness.runs.setup import setup
    from harness.runs.train import preflight

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        config = resolve_config(dict(model=model, variant=variant, data_dir=data_dir, batch_size=batch_size,
                                     max_length=max_length, lr=1e-5, scheduler="constant", warmup_fraction=0.0,
                                     epochs=1, batches_per_epoch=steps + warmup, output_dir=f"{tmp}/out",
                                     tracking_uri=f"sqlite:///{tmp}/mlflow.db", cache_dir=cache_dir, progress=False))
        run = setup(config, *preflight(config))
        device = run.accelerator.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        # The plain model is built as setup builds the harness's (a deepcopy would keep variants'
        # attachments pointing at the harness's modules), with the same weights and modes.
        set_seed(config.seed)
        encoder, _ = load_encoder(config.model, pooler=config.head_input == "pooler")
        plain = build_model(encoder, config.variant, run.variant_config, config.pair_encoding, config.head_input,
                            config.freeze_encoder).train().to(device)
        harness_model = run.accelerator.unwrap_model(run.model)
        plain.load_state_dict(harness_model.state_dict())
        modes = [(name, m.training) for name, m in harness_model.named_modules()]
        if modes != [(name, m.training) for name, m in plain.named_modules()]:
            raise RuntimeError("the plain loop's model is not in the harness model's train/eval modes")
        plain_optimizer = torch.optim.AdamW(plain.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        harness_stepped, plain_stepped = [], []
        innermost(run.optimizer).register_step_pre_hook(count_stepped(harness_stepped))
        plain_optimizer.register_step_pre_hook(count_stepped(plain_stepped))

        def plain_step(task, batch):
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            loss = task_loss(task, plain(task, **inputs), batch["labels"], config.pair_encoding)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(plain.parameters(), config.max_grad_norm)
            plain_optimizer.step()
            plain_optimizer.zero_grad(set_to_none=True)

        def harness_step() -> None:
            task = run.sampler.sample(1)
            agree_on_step(run.accelerator, run.tasks.index(task), False, run.state.step, run.tasks)
            losses = train_step(run, [task])
            run.state.step += 1
            run.tracker.log_metrics({**{names.train_loss_key(t): v for t, v in losses.items()},
                                     names.STEP_METRIC: config.lr},
                                    step=run.state.step)

        # Each step's task and batch, drawn ahead from copies of the harness's sampler and streams, so
        # that either loop can go first; the harness's own batch is checked equal to it every step.
        sampler, streams = copy.deepcopy(run.sampler), copy.deepcopy(run.streams)
        plan = []
        for _ in range(steps + warmup):
            task = sampler.sample(1)
            plan.append((task, make_batch(run.data[task].train, streams[task].take(batch_size), device,
                                      run.data[task].pad_id, pad_multiple(run.config))))

        def timed(step, *args) -> float:
            sync()
            started = time.perf_counter()
            step(*args)
            sync()
            return time.perf_counter() - started

        times = {"harness": [], "plain": []}
        first = []  # which loop ran first in each timed step
        with recorded_batches() as batches:
            for i, (task, batch) in enumerate(plan):
                order = ["harness", "plain"] if (i % 2 == 0 or not alternate) else ["plain", "harness"]
                took = {name: timed(harness_step if name == "harness" else plain_step, *(
                    () if name == "harness" else (task, batch))) for name in order}
                if len(batches) != i + 1 or run.state.step != i + 1:
                    raise RuntimeError(f"harness step {i} built {len(batches) - i} batches (expected 1)")
                if any(not torch.equal(batches[i][k], batch[k]) for k in batch) or set(batches[i]) != set(batch):
                    raise RuntimeError(f"step {i}: the harness trained on a different batch than the plain loop")
                if i >= warmup:
                    for name in took:
                        times[name].append(took[name])
                    first.append(order[0])
        padded_tokens = [batch["input_ids"].numel() for _, batch in plan[warmup:]]
        if harness_stepped != plain_stepped:
            raise RuntimeError(f"the loops' optimizers stepped different parameter counts: harness {harness_stepped}, "
                               f"plain {plain_stepped}")
        run.tracker.finish()

    h, p = float(np.median(times["harness"])), float(np.median(times["plain"]))
    by_position = {}
    for position in ("harness", "plain"):
        picked = [i for i, f in enumerate(first) if f == position]
        if picked:
            ratios = [times["harness"][i] / times["plain"][i] for i in picked]
            by_position[f"{position}_first"] = float(np.median(ratios))
    return {"order": "alternate" if alternate else "harness-first", "ratio_by_first": by_position,
            "model": model, "variant": variant, "device": str(device), "threads": torch.get_num_threads(),
            "batch_size": batch_size, "max_length": max_length, "steps": steps, "warmup": warmup,
            "mean_padded_tokens": float(np.mean(padded_tokens)), "plain_ms": 1000 * p, "harness_ms": 1000 * h,
            "ratio": h / p, "stepped_parameters": plain_stepped[warmup:]}


def report(result: dict) -> str:
    return "\n".join([
        f"model {result['model']}, variant {result['variant']}, {result['device']}, batch {result['batch_size']} x "
        f"up to {result['max_length']} tokens (padded to {result['mean_padded_tokens'] / result['batch_size']:.1f} "
        f"on average), {result['threads']} threads, {result['steps']} alternated steps each (median)",
        "| loop | ms per step | steps/s |",
        "|---|---|---|",
        f"| minimal PyTorch | {result['plain_ms']:.1f} | {1000 / result['plain_ms']:.3f} |",
        f"| harness | {result['harness_ms']:.1f} | {1000 / result['harness_ms']:.3f} |",
        f"harness / minimal step time: {result['ratio']:.3f} ({(result['ratio'] - 1) * 100:+.1f}%); order "
        f"{result['order']}, median per-step ratio by the loop that ran first: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["ratio_by_first"].items())])


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
    parser.add_argument("--order", choices=["alternate", "harness-first"], default="alternate",
                        help="which loop runs first in each step: alternating, or always the harness")
    args = parser.parse_args()
    print(report(measure(args.model, args.variant, args.steps, args.warmup, args.batch_size, args.max_length,
                         args.threads, args.data_dir, alternate=args.order == "alternate")))


if __name__ == "__main__":
    main()
