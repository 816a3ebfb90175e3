"""Every benchmark script runs in a tiny configuration, so none can rot unnoticed."""
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = [pytest.mark.slow, pytest.mark.distributed]


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
