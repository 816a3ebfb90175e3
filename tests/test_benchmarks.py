"""Every benchmark script runs in a tiny configuration, so none can rot unnoticed."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

pytestmark = pytest.mark.slow


@pytest.mark.distributed
def test_distributed_benchmark_prints_every_backend_for_both_ranks(tiny_bert):
    result = subprocess.run([sys.executable, "benchmarks/distributed.py", "--model", str(tiny_bert), "--steps", "2",
                             "--warmup", "1", "--batch-size", "2", "--rows", "16"],
                            cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ") and "ms" not in line]
    assert {tuple(r.split("|")[1:3]) for r in rows} == {(f" {b} ", f" {k} ") for b in ("DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3")
                                                       for k in (0, 1)}
    for row in rows:
        micro_ms, ratio, peak = row.split("|")[3:6]
        assert float(micro_ms) > 0 and float(ratio.strip(" x")) > 0 and float(peak) > 0


def run_benchmark(*args, timeout=900):
    result = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def table_rows(output: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in output.splitlines()
            if line.startswith("| ") and not line.startswith("| ---") and "---" not in line]


def test_overhead_benchmark_prints_both_loops_and_their_ratio(tiny_bert, small_data):
    out = run_benchmark("benchmarks/overhead.py", "--model", str(tiny_bert), "--data-dir", str(small_data),
                        "--steps", "3", "--warmup", "1", "--batch-size", "4")
    rows = {r[0]: r for r in table_rows(out)[1:]}
    assert set(rows) == {"minimal PyTorch", "harness"} and all(float(r[1]) > 0 for r in rows.values())
    assert "harness / minimal step time:" in out


def test_compile_benchmark_prints_both_models_their_ratio_and_the_compile_time(tiny_bert, small_data):
    """One task (one graph): inductor's compile of even the tiny BERT takes about 45 s on 2 cores."""
    out = run_benchmark("benchmarks/compile.py", "--model", str(tiny_bert), "--data-dir", str(small_data),
                        "--tasks", "sst", "--steps", "3", "--warmup", "1", "--batch-size", "4", "--max-length", "32")
    rows = {r[0]: r for r in table_rows(out)[1:]}
    assert set(rows) == {"uncompiled", "compiled (--compile)"} and all(float(r[1]) > 0 for r in rows.values())
    assert "compiled / uncompiled step time:" in out
    compile_line = next(line for line in out.splitlines() if line.startswith("compile time:"))
    assert float(compile_line.split()[2]) > 0 and "1 graph(s) compiled, 0 during the timed steps" in compile_line


def test_gpu_check_reports_the_compile_part(monkeypatch):
    """benchmarks/gpu.py's compile part is benchmarks/compile.py's measure, in its tables (run on a
    GPU: left out of its default parts without one, as its tiny version's test runs them)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import gpu

    result = {"model": "m", "variant": "multitask", "device": "cuda", "dtype": "bf16", "threads": 1, "batch_size": 32,
              "max_length": 128, "tasks": ["sst"], "steps": 30, "warmup": 5, "mean_padded_length": 100.0,
              "uncompiled_ms": 20.0, "compiled_ms": 15.0, "ratio": 0.75, "median_step_ratio": 0.76,
              "compile_seconds": 40.0, "graphs": 1, "graphs_during_timed_steps": 0, "inductor_cache": "empty",
              "torch": "2.13.0"}
    text = gpu.tables({"device": {"name": "GPU", "count": 1, "kind": "cuda", "peak_bf16_tflops": None,
                                  "peak_source": "unknown", "torch": "2.13.0"}, "size": "base", "commit": "c",
                       "model": {"non_embedding_parameters": 1}, "compile": result, "checks": {"compile": True}})
    assert "### --compile against uncompiled (benchmarks/compile.py)" in text
    assert "compiled / uncompiled step time: 0.750 (compiled 25.0% faster)" in text
    assert "compile" in gpu.PARTS and gpu.GPU_ONLY_PARTS == ("compile",)


def test_padding_benchmark_shows_length_grouping_cuts_padding(tiny_bert):
    out = run_benchmark("benchmarks/padding.py", "--model", str(tiny_bert))
    rows = {r[0]: r for r in table_rows(out)[1:]}
    assert set(rows) == {"sst", "cfimdb", "quora", "sts", "all"}
    shuffled, grouped = (float(rows["all"][i].rstrip("%")) for i in (2, 3))
    assert grouped < 10.0 < shuffled


def test_variants_benchmark_covers_every_variant_training_sst(tiny_bert):
    from variants import list_variants, make_config

    out = run_benchmark("benchmarks/variants.py", "--model", str(tiny_bert), "--steps", "1", "--warmup", "1",
                        "--eval-examples", "16", "--batch-size", "4")
    rows = {r[0]: r for r in table_rows(out)[1:]}
    # The benchmark's processes see the installed variants, not the example this test session registers.
    expected = {v.name for v in list_variants()
                if "sst" in make_config(v.name).tasks and v.source != "mtl_bench_lowrank"}
    assert set(rows) == expected
    assert rows["multitask"][3] == "1.00x"
    assert all(r[-1] == "sdpa" for r in rows.values())


def test_startup_benchmark_times_an_empty_and_a_filled_cache(tiny_bert, small_data):
    out = run_benchmark("benchmarks/startup.py", "--model", str(tiny_bert), "--data-dir", str(small_data),
                        "--repeats", "1")
    rows = table_rows(out)[1:]
    assert len(rows) == 2 and all(float(r[1]) > 0 for r in rows)


@pytest.mark.distributed
def test_gpu_check_runs_its_tiny_version_without_a_gpu(tmp_path):
    """benchmarks/gpu.py on CPU: tiny random BERT, 2 gloo processes per backend, bf16 autocast on CPU."""
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "benchmarks/gpu.py", "--out", str(out)], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["size"] == "tiny" and report["device"]["kind"] == "cpu"
    assert report["checks"] == {"launches": True, "precision": True, "throughput": True, "overhead": True}

    launches = report["launches"]
    assert [b["backend"] for b in launches["backends"]] == ["DDP", "ZeRO-1", "ZeRO-2", "ZeRO-3"]
    assert launches["moved_from_init"] > launches["atol"]  # training moved the parameters ...
    for backend in launches["backends"]:  # ... and every backend moved them as 1 process did
        assert backend["processes"] == 2 and backend["max_abs_diff"] <= launches["atol"]
        assert [r["rank"] for r in backend["ranks"]] == [0, 1]
        assert all(r["peak_rss_mb"] > 0 and r["step_ms"] > 0 for r in backend["ranks"])

    precision = report["precision"]
    fp32, bf16 = np.array(precision["fp32"]), np.array(precision["bf16"])
    assert len(fp32) == len(bf16) == precision["steps"] > 0
    assert np.isfinite(fp32).all() and np.isfinite(bf16).all()
    assert not np.array_equal(fp32, bf16)  # autocast really ran in bf16
    assert precision["max_window_rel_diff"] <= precision["rtol"] == 0.1

    rows = {(r["variant"], r["precision"]): r for r in report["throughput"]["rows"]}
    assert set(rows) == {(v, p) for v in ("multitask", "pals-parallel") for p in ("bf16", "fp32")}
    for row in rows.values():
        assert row["tokens_per_s"] > 0 and row["tflops"] > 0
        assert row["mfu"] is None  # no known peak on a CPU
    # pals-parallel's steps use more parameters than multitask's: its PALs count in the FLOPs.
    assert min(rows["pals-parallel", "fp32"]["step_parameters"].values()) > \
        max(rows["multitask", "fp32"]["step_parameters"].values())

    overhead = report["overhead"]
    assert overhead["plain_ms"] > 0 and overhead["harness_ms"] > 0 and overhead["device"] == "cpu"
    for title in ("| backend | processes x batch |", "| steps | fp32 | bf16 |", "| variant | precision |",
                  "| minimal PyTorch |", "checks: launches ok, precision ok, throughput ok, overhead ok"):
        assert title in result.stdout


def test_gpu_check_knows_the_bf16_peak_of_common_gpus(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu import known_peak

    assert known_peak("NVIDIA H200")[0] == known_peak("NVIDIA H100 80GB HBM3")[0] == 989.0
    assert known_peak("NVIDIA H100 PCIe")[0] == 756.0
    assert known_peak("NVIDIA A100-SXM4-80GB")[0] == 312.0
    assert known_peak("NVIDIA L40S")[0] == 362.0 and known_peak("NVIDIA L4")[0] == 121.0
    assert known_peak("Tesla V100-SXM2-16GB") == (None, "unknown")  # no bf16


def test_the_sts_equal_budget_benchmark_runs_both_loops_per_seed_and_reports_medians_and_differences(
        tiny_bert, small_data):
    out = run_benchmark("benchmarks/sts_equal_budget.py", "--model", str(tiny_bert), "--data-dir", str(small_data),
                        "--seeds", "0", "1", "--batches-per-epoch", "1",
                        "--runs", "plain", "plain:clip=1.0,head_dropout=0.1,sampling=epochs", "harness:max_grad_norm=0")
    per_seed = [line for line in out.splitlines() if " seed " in line and line.endswith(" s)")]
    assert [line.split()[0] for line in per_seed] == ["plain", "plain", "plain:clip=1.0,head_dropout=0.1,sampling=epochs",
                                                      "plain:clip=1.0,head_dropout=0.1,sampling=epochs",
                                                      "harness:max_grad_norm=0", "harness:max_grad_norm=0"]
    for line in per_seed:
        fields = line.split(" seed ")[1].split(":", 1)[1].split("(")[0].split()  # "sst 0.25  quora 0.6  sts 0.01"
        scores = dict(zip(fields[::2], map(float, fields[1::2])))
        assert set(scores) == {"sst", "quora", "sts"} and all(-1 <= v <= 1 for v in scores.values())
    summary = out.split("medians over seeds [0, 1]")[1].splitlines()
    assert summary[1].startswith("plain ") and "diff" not in summary[1]
    assert all(line.count("(diff ") == 3 for line in summary[2:4])


def test_the_sts_equal_budget_benchmark_refuses_a_setting_plain_does_not_have():
    result = subprocess.run([sys.executable, "benchmarks/sts_equal_budget.py", "--runs", "plain:dropout=0.1"],
                            cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "plain has no setting ['dropout']" in result.stderr
