"""--compile (torch.compile of the model) against the uncompiled model: the harness's optimizer-step
time of both, side by side in one process, their medians and the ratio, and the compile time.

Two harness runs are set up from the same settings but --compile: the same seed, so the same
weights, task draws and batches (checked equal every step). Each step's task is drawn once and
both runs train it, alternately first. Warm-up first: one step of every task in turn (the
compiled run compiles one graph per task there; the compile time reported is those steps'
time in the compiled run less the uncompiled run's), then --warmup steps more. Then --steps
timed steps: each run's median step time, the ratio of the medians (compiled / uncompiled:
below 1 is faster), and the median of the per-step ratios. Graphs compiled during the timed
steps (a recompile: a new length should not cause one, the shapes are dynamic) are counted.

Inductor keeps compiled kernels in an on-disk cache, so a second run of the same model compiles
faster; by default the benchmark compiles with an empty cache of its own (a first run's compile
time), --keep-cache uses the usual one.

    python benchmarks/compile.py                                   # packaged MiniLM, batch 16 x 64 tokens, CPU
    python benchmarks/compile.py --device cuda --dtype bf16        # on a GPU (benchmarks/gpu.py runs it there)
    python benchmarks/compile.py --variant pals-parallel --steps 10
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from overhead import recorded_batches  # noqa: E402  (benchmarks/overhead.py: every batch harness.runs.loop builds)

DTYPES = {"fp32": "no", "bf16": "bf16"}  # --dtype: the harness's --mixed-precision


def measure(model: str = "default", variant: str = "multitask", steps: int = 20, warmup: int = 2,
            batch_size: int = 16, max_length: int = 64, threads: int = 2, device: str = "cpu", dtype: str = "fp32",
            data_dir: str = str(REPO / "data"), cache_dir: str = "", tasks: str = "",
            keep_cache: bool = False) -> dict:
    import torch
    import torch._dynamo
    from accelerate.state import AcceleratorState, GradientState
    from torch._dynamo.utils import counters

    from harness.core.config import resolve_config
    from harness.runs.loop import train_step
    from harness.runs.setup import setup
    from harness.runs.train import preflight

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no GPU visible to torch")
    if device == "cpu" and torch.cuda.is_available():
        raise RuntimeError("--device cpu: a GPU is visible and the harness would train there; run with "
                           "CUDA_VISIBLE_DEVICES= (benchmarks/compile.py --device cpu sets it itself)")
    if device == "cpu":
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    torch._dynamo.reset()
    counters.clear()
    cache = contextlib.nullcontext()
    if not keep_cache:
        from torch._inductor.utils import fresh_cache

        cache = fresh_cache()
    with tempfile.TemporaryDirectory() as tmp, cache:
        runs = {}
        for compiled in (False, True):
            AcceleratorState._reset_state()
            GradientState._reset_state()
            config = resolve_config(dict(
                model=model, variant=variant, data_dir=data_dir, batch_size=batch_size, max_length=max_length,
                lr=1e-5, scheduler="constant", warmup_fraction=0.0, epochs=1, batches_per_epoch=10**6,
                output_dir=f"{tmp}/out", tracking_uri=f"sqlite:///{tmp}/mlflow.db", cache_dir=cache_dir,
                progress=False, system_metrics_interval=0, mixed_precision=DTYPES[dtype], tasks=tasks,
                compile=compiled, run_name=f"compile-{compiled}"))
            runs[compiled] = setup(config, *preflight(config))
        plain, compiled_run = runs[False], runs[True]
        if str(plain.accelerator.device).split(":")[0] != device:
            raise RuntimeError(f"--device {device}: the harness trains on {plain.accelerator.device}")
        tasks_run = list(plain.tasks)

        def timed(run, task: str) -> float:
            sync()
            started = time.perf_counter()
            train_step(run, [task])
            sync()
            run.state.step += 1
            return time.perf_counter() - started

        times = {"first": {False: [], True: []}, "warmup": {False: [], True: []}, "timed": {False: [], True: []}}
        lengths, timed_tasks, graphs_after_warmup = [], [], None
        with recorded_batches() as batches:
            for i in range(len(tasks_run) + warmup + steps):
                phase = "first" if i < len(tasks_run) else "warmup" if i < len(tasks_run) + warmup else "timed"
                if phase == "first":
                    task = tasks_run[i]  # every task once, in turn; neither run's sampler is drawn
                else:
                    if graphs_after_warmup is None and phase == "timed":
                        graphs_after_warmup = counters["stats"]["unique_graphs"]
                    task = plain.sampler.sample(1)
                    if compiled_run.sampler.sample(1) != task:
                        raise RuntimeError(f"step {i}: the runs drew different tasks")
                order = (False, True) if i % 2 == 0 else (True, False)
                took = {c: timed(runs[c], task) for c in order}
                first, second = batches[-2:]
                if set(first) != set(second) or any(not torch.equal(first[k], second[k]) for k in first):
                    raise RuntimeError(f"step {i} ({task}): the runs trained on different batches")
                for c in took:
                    times[phase][c].append(took[c])
                if phase == "timed":
                    lengths.append(first["input_ids"].shape[1])
                    timed_tasks.append(task)
        graphs = counters["stats"]["unique_graphs"]
        for run in runs.values():
            run.tracker.finish()
    p, c = (float(np.median(times["timed"][x])) for x in (False, True))
    per_step = [b / a for a, b in zip(times["timed"][False], times["timed"][True])]
    return {"model": model, "variant": variant, "device": device, "dtype": dtype,
            "threads": torch.get_num_threads(), "batch_size": batch_size, "max_length": max_length,
            "tasks": tasks_run, "steps": steps, "warmup": warmup, "mean_padded_length": float(np.mean(lengths)),
            "uncompiled_ms": 1000 * p, "compiled_ms": 1000 * c, "ratio": c / p,
            "median_step_ratio": float(np.median(per_step)),
            "compile_seconds": sum(times["first"][True]) - sum(times["first"][False]),
            "first_step_seconds": {"uncompiled": times["first"][False], "compiled": times["first"][True]},
            "timed_step_seconds": {"uncompiled": times["timed"][False], "compiled": times["timed"][True]},
            "timed_tasks": timed_tasks, "timed_lengths": lengths,
            "graphs": graphs, "graphs_during_timed_steps": graphs - graphs_after_warmup,
            "inductor_cache": "kept (the usual on-disk cache)" if keep_cache else "empty (a first run)",
            "torch": torch.__version__}


def report(result: dict) -> str:
    faster = "faster" if result["ratio"] < 1 else "slower"
    return "\n".join([
        f"model {result['model']}, variant {result['variant']}, {result['device']} {result['dtype']}, "
        f"{result['threads']} threads, batch {result['batch_size']} x up to {result['max_length']} tokens (padded "
        f"to {result['mean_padded_length']:.1f} on average), tasks {','.join(result['tasks'])}; {result['steps']} "
        f"timed steps each after {len(result['tasks'])} + {result['warmup']} warm-up steps, alternately first "
        f"(median); torch {result['torch']}",
        "| model | ms per step | steps/s |",
        "|---|---|---|",
        f"| uncompiled | {result['uncompiled_ms']:.1f} | {1000 / result['uncompiled_ms']:.3f} |",
        f"| compiled (--compile) | {result['compiled_ms']:.1f} | {1000 / result['compiled_ms']:.3f} |",
        f"compiled / uncompiled step time: {result['ratio']:.3f} (compiled {abs(1 - result['ratio']) * 100:.1f}% "
        f"{faster}); median per-step ratio {result['median_step_ratio']:.3f}",
        f"compile time: {result['compile_seconds']:.1f} s over the first step of each task (compiled less "
        f"uncompiled), {result['graphs']} graph(s) compiled, {result['graphs_during_timed_steps']} during the timed "
        f"steps; inductor cache {result['inductor_cache']}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--variant", default="multitask")
    parser.add_argument("--tasks", default="", help="comma-separated task set (default: the variant's)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps of each run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after each task's first")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (--device cpu)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="fp32, or bf16 (the harness's --mixed-precision bf16: autocast)")
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--keep-cache", action="store_true",
                        help="compile with inductor's usual on-disk cache (default: an empty one)")
    parser.add_argument("--out", default=None, help="also write the results (every step's times) here as JSON")
    args = parser.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before torch is imported: the harness trains where it finds a GPU
    result = measure(args.model, args.variant, args.steps, args.warmup, args.batch_size, args.max_length,
                     args.threads, args.device, args.dtype, args.data_dir, tasks=args.tasks, keep_cache=args.keep_cache)
    print(report(result))
    if args.out:
        import json

        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
