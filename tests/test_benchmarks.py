"""Every benchmark script runs in a tiny configuration, so none can rot unnoticed."""
import subprocess
import sys

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
    assert set(rows) == {"plain PyTorch", "harness"} and all(float(r[1]) > 0 for r in rows.values())
    assert "harness / plain step time:" in out


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
