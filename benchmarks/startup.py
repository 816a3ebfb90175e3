"""Start-up: time from `mtl-bench train` to the first training step (interpreter, imports, model
load, data validation and tokenisation), with an empty tokenisation cache and then with the
cache the first run filled, side by side in one invocation. Medians of --repeats runs each.

    python benchmarks/startup.py
    python benchmarks/startup.py --model PATH --repeats 1      # (the test's tiny run)
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def startup_seconds(args, work: Path, cache: Path, index: int) -> float:
    from mlflow.tracking import MlflowClient

    from harness.core import names

    uri = f"sqlite:///{work / f'mlflow{index}.db'}"
    from harness.testing import run_cli

    result = run_cli("train", "--model", args.model, "--data-dir", args.data_dir, "--epochs", "1",
                     "--batches-per-epoch", "1", "--no-progress", "--cache-dir", str(cache), "--tracking-uri", uri,
                     "--output-dir", str(work / "out"), timeout=1800, one_thread=False)
    if result.returncode != 0:
        raise SystemExit(result.stderr[-3000:])
    client = MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("bert-mtl-bench").experiment_id])
    return run.data.metrics[names.STARTUP_SECONDS]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--data-dir", default=str(REPO / "data"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for i in range(args.repeats):
            cache = work / f"cache{i}"
            cold.append(startup_seconds(args, work, cache, 2 * i))
            warm.append(startup_seconds(args, work, cache, 2 * i + 1))
            shutil.rmtree(cache)
    c, w = float(np.median(cold)), float(np.median(warm))
    print(f"model {args.model}, data {args.data_dir}, {args.repeats} runs each (median); time from process start "
          "to the first training step")
    print("| tokenisation cache | seconds to first step |")
    print("|---|---|")
    print(f"| empty (tokenises) | {c:.1f} |")
    print(f"| filled by the previous run | {w:.1f} |")
    print(f"filled / empty: {w / c:.2f}")


if __name__ == "__main__":
    main()
