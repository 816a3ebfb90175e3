"""One-shot GPU check: does the harness train correctly on this machine's GPUs, and how fast, in a
few minutes. Prints markdown tables, writes everything as JSON (--out), exits 1 if a check fails.

    python benchmarks/gpu.py --out gpu-check.json       # BERT-base-sized random model on the GPU(s)
    python benchmarks/gpu.py --size tiny --out x.json   # the tiny version (the default without a GPU)

Parts (--parts; default all of them, without a GPU all but compile):
- launches: `mtl-bench train` as one process with the whole batch, then under `accelerate
  launch` per backend (DDP, ZeRO-1/2/3: launch/*.yaml with 2 processes when there are 2 GPUs or
  more, else 1; without a GPU launch/cpu-*.yaml, 2 gloo processes) with the batch split between
  the processes, fp32, the same steps. Checks: every backend's final parameters within --atol of
  the one process's (the distributed tests' 5e-5), and training moved them further than that.
  Measures peak memory per rank (GPU: torch.cuda.max_memory_allocated; CPU: peak RSS) and the
  median optimizer-step time.
- precision: fp32 and bf16 loss curves of `multitask` from the same weights over the same
  batches. Check: close (each window of steps has a mean loss within --rtol of fp32's) but not
  equal (bf16 really ran). bf16 is the harness's own `mixed_precision="bf16"` (Accelerate's
  autocast), fp32 is `mixed_precision="no"`.
- throughput: training tokens/s and model FLOPs utilisation (MFU) of `multitask` and
  `pals-parallel`, bf16 and fp32 (true fp32: PyTorch's default, no TF32), through
  harness.runs.loop.train_step.
- overhead: benchmarks/overhead.py (the harness's step against the minimal loop) on the device.
- compile: benchmarks/compile.py (--compile against the uncompiled model, the harness's step
  time side by side, and the compile time) for `multitask` in bf16 on the GPU. In the default
  parts only with a GPU (`--parts compile` runs it anywhere): inductor's compile of the tiny
  model takes minutes on a small CPU.

The model is a random BERT written with the packaged MiniLM's tokenizer: BERT-base-sized
(hidden 768, 12 layers, 12 heads, FFN 3072) for --size base, hidden 32 and 2 layers for tiny.
Launches and precision use a copy without dropout, so that only what is compared differs.

FLOPs per trained token: 6 N + 12 L H S (forward and backward; PaLM, appendix B), N the
non-embedding parameters a step uses (the encoder's, shared added ones, the drawn task's parts
and head), L layers, H hidden size, S the batch's padded length; a PAL's attention in its small
space is left out (under 1% at 128 tokens). Tokens are padded tokens, the work done (length-aware
batching keeps padding near 1%). MFU: achieved FLOP/s over the device's dense bf16 peak
(PEAK_TFLOPS by device name, or --peak-tflops; null when unknown, as on CPU).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from compile import measure as compile_measure  # noqa: E402  (benchmarks/compile.py)
from compile import report as compile_report  # noqa: E402
from harness.testing import cli_command, launch_command, make_small_data, make_tiny_bert  # noqa: E402
from overhead import measure, recorded_batches  # noqa: E402
from overhead import report as overhead_report  # noqa: E402

# Dense (no sparsity) bf16 peak TFLOP/s from NVIDIA's datasheets; the first name found in the
# device name wins, so more specific names come first.
PEAK_TFLOPS = [("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0), ("H800", 989.0),
               ("B200", 2250.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0), ("L40", 181.0), ("L4", 121.0)]

SIZES = {
    "base": dict(hidden=768, layers=12, heads=12, intermediate=3072, positions=512, batch_size=32, max_length=128,
                 lr=1e-4, rows=2000, launch_steps=10, precision_steps=300, window=50, throughput_steps=30,
                 warmup=5, overhead_steps=30),
    "tiny": dict(hidden=32, layers=2, heads=2, intermediate=64, positions=128, batch_size=4, max_length=32,
                 lr=1e-3, rows=48, launch_steps=4, precision_steps=24, window=8, throughput_steps=3, warmup=1,
                 overhead_steps=3),
}
# name: (ZeRO stage, launch config with GPUs, without)
BACKENDS = {"DDP": (0, "launch/ddp.yaml", "launch/cpu-ddp.yaml"),
            "ZeRO-1": (1, "launch/zero1.yaml", "launch/cpu-zero1.yaml"),
            "ZeRO-2": (2, "launch/zero2.yaml", "launch/cpu-zero2.yaml"),
            "ZeRO-3": (3, "launch/zero3.yaml", "launch/cpu-zero3.yaml")}
PARTS = ("launches", "precision", "throughput", "overhead", "compile")
GPU_ONLY_PARTS = ("compile",)  # left out of the default parts without a GPU


def write_bert(folder: Path, size: dict, dropout: float) -> Path:
    """A random BERT checkpoint folder with the packaged MiniLM's tokenizer (harness/testing.py's, at this size)."""
    return make_tiny_bert(folder, hidden=size["hidden"], layers=size["layers"], heads=size["heads"], dropout=dropout,
                          intermediate=size["intermediate"], positions=size["positions"])


def known_peak(device_name: str) -> tuple[float | None, str]:
    """The dense bf16 peak TFLOP/s of a GPU by its name, and where it came from (None: not known)."""
    return next(((peak, f"table ({key})") for key, peak in PEAK_TFLOPS if key in device_name), (None, "unknown"))


def device_info(peak_override: float | None) -> dict:
    import platform

    import torch

    if torch.cuda.is_available():
        name, count, kind = torch.cuda.get_device_name(0), torch.cuda.device_count(), "cuda"
        peak, source = known_peak(name)
    else:
        name, count, kind = platform.processor() or platform.machine(), os.cpu_count(), "cpu"
        peak, source = None, "unknown (no GPU)"
    if peak_override is not None:
        peak, source = peak_override, "--peak-tflops"
    return {"kind": kind, "name": name, "count": count, "peak_bf16_tflops": peak, "peak_source": source,
            "torch": torch.__version__}


def fresh_accelerate() -> None:
    """Lets the next in-process setup() make its own Accelerator (as tests/helpers/train_checks.py)."""
    import torch
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def in_process_run(model: Path, variant: str, steps: int, size: dict, work: Path, precision: str = "no"):
    """harness.runs.setup.setup for `steps` optimizer steps of one epoch, constant learning rate, in
    `precision` ("no": fp32, or "bf16")."""
    from harness.core.config import resolve_config
    from harness.runs.setup import setup
    from harness.runs.train import preflight

    fresh_accelerate()
    config = resolve_config(dict(model=str(model), variant=variant, data_dir=str(work / "data"),
                                 batch_size=size["batch_size"], max_length=size["max_length"], lr=size["lr"],
                                 scheduler="constant", warmup_fraction=0.0, epochs=1, batches_per_epoch=steps,
                                 output_dir=str(work / "out"), tracking_uri=f"sqlite:///{work / 'mlflow.db'}",
                                 cache_dir=str(work / "cache"), progress=False, mixed_precision=precision))
    return setup(config, *preflight(config))


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- launches: 1 process against DDP and ZeRO-1/2/3, fp32 -------------------------------------------

def launch_config(source: str, processes: int, folder: Path) -> str:
    """A copy of a launch config with num_processes set to what this machine runs."""
    import yaml

    from harness.core.launch_config import read_launch_config

    config = read_launch_config(REPO / source)
    config["num_processes"] = processes
    path = folder / f"{processes}x-{Path(source).name}"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def train_once(name: str, config_file: str | None, batch_size: int, size: dict, model: Path, work: Path) -> dict:
    """One `mtl-bench train` (under `accelerate launch` if config_file): final weights and per-rank timing."""
    import torch

    out = work / "launches" / name
    flags = ["--model", str(model), "--data-dir", str(work / "data"), "--variant", "multitask", "--batch-size",
             str(batch_size), "--max-length", str(size["max_length"]), "--lr", str(size["lr"]), "--scheduler",
             "constant", "--warmup-fraction", "0", "--epochs", "1", "--batches-per-epoch", str(size["launch_steps"]),
             "--no-progress", "--save-model", "--cache-dir", str(work / "cache"), "--output-dir", str(out),
             "--tracking-uri", f"sqlite:///{work / 'mlflow.db'}", "--run-name", name]
    command = launch_command(config_file, flags) if config_file else cli_command("train", *flags)
    env = dict(os.environ) if torch.cuda.is_available() else {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{name}: `{' '.join(command)}` exited {result.returncode}:\n"
                           f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}")
    (weights,) = out.glob("*/model/weights.pt")
    ranks = [json.loads(p.read_text()) for p in sorted(out.glob("*/timing/rank*.json"))]
    return {"weights": torch.load(weights, map_location="cpu"), "ranks": ranks}


def initial_weights(model: Path) -> dict:
    """The weights setup() starts from (its seed, encoder and build), to see how far training moved them."""
    from accelerate.utils import set_seed

    from harness.model.network import build_model, load_encoder
    from variants import make_config

    set_seed(0)
    encoder, _ = load_encoder(str(model))
    return build_model(encoder, "multitask", make_config("multitask"), "joint").state_dict()


def max_difference(a: dict, b: dict) -> float:
    if set(a) != set(b):
        raise RuntimeError(f"different parameter names: {sorted(set(a) ^ set(b))[:10]}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def launches(size: dict, model: Path, work: Path, atol: float) -> dict:
    import torch

    cuda = torch.cuda.is_available()
    processes = min(2, torch.cuda.device_count()) if cuda else 2
    if processes < 1:
        raise RuntimeError("no GPU visible to torch")
    if size["batch_size"] % processes:
        raise RuntimeError(f"batch size {size['batch_size']} does not split between {processes} processes")
    (work / "launches").mkdir(parents=True, exist_ok=True)
    reference = train_once("1-process", None, size["batch_size"], size, model, work)
    moved = max_difference(reference["weights"], initial_weights(model))
    rows = []
    for name, (stage, gpu_config, cpu_config) in BACKENDS.items():
        source = (gpu_config if processes > 1 or stage else "launch/single.yaml") if cuda else cpu_config
        row = {"backend": name, "zero_stage": stage, "launch_config": source, "processes": processes,
               "batch_per_process": size["batch_size"] // processes}
        try:
            got = train_once(name, launch_config(source, processes, work / "launches"), row["batch_per_process"],
                             size, model, work)
            row["max_abs_diff"] = max_difference(got["weights"], reference["weights"])
            row["ranks"] = [{"rank": r["rank"], "peak_gpu_mb": r.get("peak_gpu_mb"), "peak_rss_mb": r["peak_rss_mb"],
                             "step_ms": 1000 * float(np.median(r["step_seconds"][1:] or r["step_seconds"]))}
                            for r in got["ranks"]]
            row["ok"] = row["max_abs_diff"] <= atol and len(row["ranks"]) == processes
        except Exception as exc:  # one failed backend must not hide the others
            row.update(error=f"{type(exc).__name__}: {exc}", ok=False)
        rows.append(row)
    return {"variant": "multitask", "precision": "fp32", "steps": size["launch_steps"],
            "reference_batch": size["batch_size"], "atol": atol, "moved_from_init": moved, "moved_ok": moved > atol,
            "memory": "GPU max allocated" if cuda else "process peak RSS", "backends": rows,
            "ok": moved > atol and all(r["ok"] for r in rows),
            "note": None if processes > 1 else "1 GPU: every launch is 1 process, so this compares the backends' "
                                               "code paths, not 2 processes against 1"}


# --- precision: bf16 against fp32 loss curves ------------------------------------------------------------

def loss_curve(model: Path, size: dict, work: Path, bf16: bool) -> tuple[list[str], list[float]]:
    from harness.runs.loop import train_step

    steps = size["precision_steps"]
    run = in_process_run(model, "multitask", steps, size, work, "bf16" if bf16 else "no")
    tasks, losses = [], []
    for _ in range(steps):
        task = run.sampler.sample(1)
        losses.append(train_step(run, [task])[task])
        tasks.append(task)
        run.state.step += 1
    run.tracker.finish()
    return tasks, losses


def precision(size: dict, model: Path, work: Path, rtol: float) -> dict:
    tasks, fp32 = loss_curve(model, size, work, bf16=False)
    bf16_tasks, bf16 = loss_curve(model, size, work, bf16=True)
    if tasks != bf16_tasks:
        raise RuntimeError("the fp32 and bf16 runs drew different tasks: the curves are not comparable")
    window = size["window"]
    windows = []
    for start in range(0, len(fp32), window):
        a, b = float(np.mean(fp32[start:start + window])), float(np.mean(bf16[start:start + window]))
        windows.append({"steps": f"{start + 1}-{min(start + window, len(fp32))}", "fp32": a, "bf16": b,
                        "rel_diff": abs(b - a) / abs(a)})
    finite = bool(np.isfinite(fp32).all() and np.isfinite(bf16).all())
    equal = fp32 == bf16
    worst = max(w["rel_diff"] for w in windows)
    return {"variant": "multitask", "steps": len(fp32), "window": window, "rtol": rtol, "tasks": tasks,
            "fp32": fp32, "bf16": bf16, "windows": windows,
            "first_step_rel_diff": abs(bf16[0] - fp32[0]) / abs(fp32[0]),
            "max_window_rel_diff": worst, "finite": finite, "equal": equal,
            "autocast": "the harness's mixed_precision=bf16 (Accelerate's autocast)",
            "ok": finite and not equal and worst <= rtol}


# --- throughput and MFU ------------------------------------------------------------------------------------

def step_parameters(model, tasks: list[str]) -> dict[str, int]:
    """Non-embedding parameters a step of each task uses: the shared ones, its own parts and head."""
    from harness.model.params import grouped_parameters

    counts = dict.fromkeys(tasks, 0)
    for name, parameter, _, owner in grouped_parameters(model):
        if name.startswith("encoder.embeddings."):
            continue
        for task in tasks:
            counts[task] += parameter.numel() if owner in (None, task) else 0
    return counts


def throughput(variant: str, bf16: bool, size: dict, model: Path, work: Path, peak_tflops: float | None) -> dict:
    import torch

    from harness.runs.loop import train_step

    warmup, steps = size["warmup"], size["throughput_steps"]
    run = in_process_run(model, variant, warmup + steps, size, work, "bf16" if bf16 else "no")
    encoder_config = run.accelerator.unwrap_model(run.model).encoder.config
    layers, hidden = encoder_config.num_hidden_layers, encoder_config.hidden_size
    used = step_parameters(run.accelerator.unwrap_model(run.model), run.tasks)
    seconds, tokens, flops, lengths = 0.0, 0, 0.0, []
    with recorded_batches() as batches:
        for i in range(warmup + steps):
            task = run.sampler.sample(1)
            synchronize()
            started = time.perf_counter()
            train_step(run, [task])
            synchronize()
            elapsed = time.perf_counter() - started
            run.state.step += 1
            if i < warmup:
                continue
            seconds += elapsed
            for key in ("input_ids", "input_ids_b"):  # input_ids_b: the second sentences of separate encoding
                if key in batches[i]:
                    rows, length = batches[i][key].shape
                    tokens += rows * length
                    flops += rows * length * (6 * used[task] + 12 * layers * hidden * length)
                    lengths.append(length)
    run.tracker.finish()
    achieved = flops / seconds / 1e12
    return {"variant": variant, "precision": "bf16" if bf16 else "fp32", "steps": steps,
            "batch_size": size["batch_size"], "mean_padded_length": float(np.mean(lengths)),
            "step_ms": 1000 * seconds / steps, "tokens_per_s": tokens / seconds, "tflops": achieved,
            "mfu": achieved / peak_tflops if peak_tflops else None,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
            "step_parameters": used}


# --- the report ------------------------------------------------------------------------------------------------

def fmt(value, spec: str = ".1f") -> str:
    return "n/a" if value is None else format(value, spec)


def tables(results: dict) -> str:
    d = results["device"]
    lines = [f"device {d['name']} x {d['count']} ({d['kind']}), bf16 peak {fmt(d['peak_bf16_tflops'], '.0f')} TFLOP/s "
             f"({d['peak_source']}); torch {d['torch']}; size {results['size']} "
             f"({results['model']['non_embedding_parameters']:,} non-embedding parameters); commit {results['commit']}"]
    part = results.get("launches")
    if part and "error" not in part:
        lines += ["", f"### fp32, {part['steps']} steps of {part['variant']}: 1 process x {part['reference_batch']} "
                      f"against each backend (max parameter difference, atol {part['atol']:g}); training moved "
                      f"parameters up to {part['moved_from_init']:.2e}" + (f". {part['note']}" if part["note"] else ""),
                  f"| backend | processes x batch | max abs difference | peak memory MB per rank ({part['memory']}) "
                  "| step ms (median, rank 0) | check |", "|---|---|---|---|---|---|"]
        for row in part["backends"]:
            if "error" in row:
                lines.append(f"| {row['backend']} | {row['processes']} x {row['batch_per_process']} | | | | FAILED: "
                             f"{row['error'].splitlines()[0][:200]} |")
                continue
            memory = " / ".join(fmt(r["peak_gpu_mb"] if r["peak_gpu_mb"] is not None else r["peak_rss_mb"], ".0f")
                                for r in row["ranks"])
            lines.append(f"| {row['backend']} | {row['processes']} x {row['batch_per_process']} | "
                         f"{row['max_abs_diff']:.2e} | {memory} | {row['ranks'][0]['step_ms']:.0f} | "
                         f"{'ok' if row['ok'] else 'FAILED'} |")
    part = results.get("precision")
    if part and "error" not in part:
        lines += ["", f"### bf16 (autocast) against fp32, {part['steps']} steps of {part['variant']}: mean loss per "
                      f"window, rtol {part['rtol']:g}; first step differs by {part['first_step_rel_diff']:.1e}; "
                      f"check {'ok' if part['ok'] else 'FAILED'}" + (" (the curves are equal: bf16 did not run)"
                                                                     if part["equal"] else ""),
                  "| steps | fp32 | bf16 | relative difference |", "|---|---|---|---|"]
        lines += [f"| {w['steps']} | {w['fp32']:.4f} | {w['bf16']:.4f} | {w['rel_diff']:.2%} |"
                  for w in part["windows"]]
    part = results.get("throughput")
    if part and "error" not in part:
        lines += ["", "### Training throughput (harness.runs.loop.train_step, padded tokens; MFU against the bf16 peak)",
                  "| variant | precision | batch x mean length | step ms | tokens/s | TFLOP/s | MFU | peak GPU MB |",
                  "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {r['variant']} | {r['precision']} | {r['batch_size']} x {r['mean_padded_length']:.0f} | "
                  f"{r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r['tflops']:.3g} | {fmt(r['mfu'], '.1%')} | "
                  f"{fmt(r['peak_gpu_mb'], '.0f')} |" for r in part["rows"]]
    part = results.get("overhead")
    if part and "error" not in part:
        lines += ["", "### Harness overhead (benchmarks/overhead.py)", overhead_report(part)]
    part = results.get("compile")
    if part and "error" not in part:
        lines += ["", "### --compile against uncompiled (benchmarks/compile.py)", compile_report(part)]
    for name in PARTS:
        if name in results and "error" in results[name]:
            lines += ["", f"### {name}: FAILED", "```", results[name]["error"][-3000:], "```"]
    lines += ["", "checks: " + ", ".join(f"{k} {'ok' if v else 'FAILED'}" for k, v in results["checks"].items())]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["auto", *SIZES], default="auto", help="auto: base with a GPU, else tiny")
    parser.add_argument("--parts", default="", help=f"comma-separated, of {', '.join(PARTS)} (default: all; "
                        f"without a GPU all but {', '.join(GPU_ONLY_PARTS)})")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak, TFLOP/s")
    parser.add_argument("--atol", type=float, default=5e-5, help="parameter tolerance, backends against 1 process")
    parser.add_argument("--rtol", type=float, default=0.1, help="window mean loss tolerance, bf16 against fp32")
    parser.add_argument("--out", default=None, help="write the results here as JSON")
    args = parser.parse_args()

    import torch

    parts = [p for p in args.parts.split(",") if p] or [p for p in PARTS if torch.cuda.is_available()
                                                        or p not in GPU_ONLY_PARTS]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts: unknown {unknown}; known: {', '.join(PARTS)}")

    from harness.tracking.tracker import git_commit

    size_name = args.size if args.size != "auto" else ("base" if torch.cuda.is_available() else "tiny")
    size = SIZES[size_name]
    device = device_info(args.peak_tflops)
    results = {"device": device, "size": size_name, "settings": size, "commit": git_commit(), "parts": parts}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_small_data(work / "data", size["rows"])
        model, exact = write_bert(work / "model", size, 0.1), write_bert(work / "model-no-dropout", size, 0.0)
        from transformers import BertModel

        encoder = BertModel.from_pretrained(model, add_pooling_layer=False)
        results["model"] = {k: size[k] for k in ("hidden", "layers", "heads", "intermediate")}
        results["model"]["non_embedding_parameters"] = sum(p.numel() for n, p in encoder.named_parameters()
                                                           if not n.startswith("embeddings."))
        del encoder

        def overhead() -> dict:
            fresh_accelerate()
            return measure(str(model), "multitask", size["overhead_steps"], size["warmup"], size["batch_size"],
                           size["max_length"], torch.get_num_threads(), str(work / "data"), str(work / "cache"))

        jobs = {
            "launches": lambda: launches(size, exact, work, args.atol),
            "precision": lambda: precision(size, exact, work, args.rtol),
            "throughput": lambda: {"rows": [throughput(v, bf16, size, model, work, device["peak_bf16_tflops"])
                                            for v in ("multitask", "pals-parallel") for bf16 in (True, False)]},
            "overhead": overhead,
            "compile": lambda: (fresh_accelerate(), compile_measure(
                str(model), "multitask", size["throughput_steps"], size["warmup"], size["batch_size"],
                size["max_length"], torch.get_num_threads(), device["kind"], "bf16", str(work / "data"),
                str(work / "cache")))[1],
        }
        for name in parts:
            print(f"{name}: running", file=sys.stderr, flush=True)
            try:
                results[name] = jobs[name]()
            except Exception as exc:  # one failed part must not hide the others
                traceback.print_exc()
                results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    results["checks"] = {name: bool(results[name].get("ok", "error" not in results[name]))
                         for name in parts}
    print(tables(results))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    sys.exit(0 if all(results["checks"].values()) else 1)


if __name__ == "__main__":
    main()
