"""Per-micro-step time and peak memory per rank for DDP and ZeRO-1/2/3 on 2 CPU processes.

Each backend is a real `accelerate launch --config_file launch/cpu-*.yaml` of `mtl-bench train`
on the same model, batches and steps, run one after the other in this one invocation; the
table gives medians over the timed steps and each backend's ratio to DDP.

    python benchmarks/distributed.py                 # packaged MiniLM, 2 x 8 examples per micro-step
    python benchmarks/distributed.py --model PATH --steps 4 --batch-size 2   # (the test's tiny run)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from harness.testing import launch, make_small_data  # noqa: E402

BACKENDS = {"DDP": "launch/cpu-ddp.yaml", "ZeRO-1": "launch/cpu-zero1.yaml", "ZeRO-2": "launch/cpu-zero2.yaml",
            "ZeRO-3": "launch/cpu-zero3.yaml"}


def run_backend(name: str, config: str, args: argparse.Namespace, work: Path) -> list[dict]:
    out = work / name
    result = launch(config, ["--model", args.model, "--data-dir", str(work / "data"), "--epochs", "1",
                             "--batches-per-epoch", str(args.steps + args.warmup), "--batch-size", str(args.batch_size),
                             "--grad-accum", str(args.grad_accum), "--max-length", str(args.max_length), "--no-progress",
                             "--variant", args.variant, "--output-dir", str(out / "out"),
                             "--tracking-uri", f"sqlite:///{out / 'mlflow.db'}", "--cache-dir", str(work / "cache")],
                    timeout=1800, one_thread=False)
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return [json.loads(p.read_text()) for p in sorted(out.glob("out/*/timing/rank*.json"))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--variant", default="multitask")
    parser.add_argument("--steps", type=int, default=12, help="timed optimizer steps per backend")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps")
    parser.add_argument("--batch-size", type=int, default=8, help="per rank and micro-step")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--rows", type=int, default=200, help="rows per bundled file used")
    parser.add_argument("--backends", default=",".join(BACKENDS))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_small_data(work / "data", args.rows)
        results = {}
        for name in args.backends.split(","):
            ranks = run_backend(name, BACKENDS[name], args, work)
            results[name] = [{
                "rank": r["rank"],
                "micro_ms": 1000 * float(np.median(r["step_seconds"][args.warmup:])) / r["grad_accum"],
                "peak_mb": r["peak_rss_mb"],
            } for r in ranks]
            print(f"{name}: done", file=sys.stderr, flush=True)

    base = np.median([r["micro_ms"] for r in results[next(iter(results))]])
    print(f"model {args.model}, variant {args.variant}, 2 processes x micro-batch {args.batch_size} x "
          f"{args.max_length} tokens max, {args.steps} timed steps (median), OMP threads per rank "
          f"{os.environ.get('OMP_NUM_THREADS', 'torchrun default (1)')}")
    print(f"| backend | rank | micro-step ms (median) | ratio to {next(iter(results))} | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name, ranks in results.items():
        for r in ranks:
            print(f"| {name} | {r['rank']} | {r['micro_ms']:.0f} | {r['micro_ms'] / base:.2f}x | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()
