"""Shared fixtures: a tiny random BERT saved as a checkpoint folder, a small slice of the real data, a
real MLflow store or server (the builders themselves: harness/testing.py)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# The helpers live in harness/testing.py (benchmarks/ use them too); tests import them from here or there.
from harness.testing import DATA, REPO, free_port, make_small_data, make_tiny_bert  # noqa: F401

# The README's out-of-tree example variant, registered for this test session as an installed
# plugin would be, so the registry-parametrized tests (tests/test_variants.py) check it too.
sys.path.insert(0, str(REPO / "tests" / "plugin_example"))
import mtl_bench_lowrank  # noqa: E402,F401  (registers "lowrank")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return make_small_data(tmp_path_factory.mktemp("small-data"))


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A real MLflow SQLite store of the test's own."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 with a SQLite backend, stoppable and restartable."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self, timeout: float = 90) -> "MlflowServer":
        import subprocess
        import sys
        import time
        import urllib.request

        self.folder.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--backend-store-uri", f"sqlite:///{self.folder / 'server.db'}",
             "--artifacts-destination", str(self.folder / "artifacts"), "--workers", "1"],
            stdout=open(self.folder / "server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"mlflow server did not come up: {(self.folder / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        import os
        import signal

        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=30)
        self.process = None
