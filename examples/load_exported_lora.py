"""Predict with one task of an exported LoRA (or (IA)^3) run using transformers, peft and safetensors alone.

    mtl-bench export RUN_ID exported/
    python examples/load_exported_lora.py exported/ sst "a gripping , beautifully acted film"
    python examples/load_exported_lora.py exported/ sts "A man plays a guitar." "A man is playing music."

Prints `prediction <tab> score <tab> input` per example as `mtl-bench predict` does (score: the
predicted class's probability, or a regression task's value), with the score to 6 decimals.
A run trained with --freeze-encoder exported no encoder: give its base checkpoint with --base.
Only the joint pair encoding (the default) is handled here.
"""
from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoTokenizer


def load(export: Path, task: str, base: str = ""):
    head_config = json.loads((export / task / "head.json").read_text())
    if head_config["input"] not in ("cls", "pooler") or head_config["head"] != "linear":
        raise SystemExit(f"{task}: head input {head_config['input']!r} (pair encoding "
                         f"{head_config['pair_encoding']!r}) is not handled by this example")
    base_folder = base or export / "encoder"
    tokenizer = AutoTokenizer.from_pretrained(base_folder)
    # The encoder's own class (BertModel, RobertaModel, DebertaV2Model, ...), with its pooler only
    # where the head reads it and the class has one.
    encoder_class = AutoModel._model_mapping[type(AutoConfig.from_pretrained(base_folder))]
    pooler = {"add_pooling_layer": head_config["input"] == "pooler"} \
        if "add_pooling_layer" in inspect.signature(encoder_class.__init__).parameters else {}
    encoder = AutoModel.from_pretrained(base_folder, **pooler)
    model = PeftModel.from_pretrained(encoder, export / task).eval()  # the task's adapter on the encoder
    head = load_file(export / task / "head.safetensors")  # the Linear head: weight, bias
    return tokenizer, model, head, head_config


@torch.inference_mode()
def predict(tokenizer, model, head, head_config, example: tuple[str, ...]) -> tuple[float, float]:
    inputs = tokenizer(*example, truncation=True, max_length=head_config["max_length"], return_tensors="pt")
    out = model(**inputs)
    state = out.pooler_output if head_config["input"] == "pooler" else out.last_hidden_state[:, 0]
    logits = torch.nn.functional.linear(state, head["weight"], head["bias"])[0]
    if head_config["kind"] == "regression":
        value = logits.squeeze(-1).item()
        return value, value
    if head_config["binary_logit"]:
        p = torch.sigmoid(logits.squeeze(-1)).item()
        return (1.0, p) if p > 0.5 else (0.0, 1 - p)
    probabilities = logits.softmax(-1)
    return float(probabilities.argmax()), probabilities.max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("export", type=Path, help="the folder `mtl-bench export` wrote")
    parser.add_argument("task")
    parser.add_argument("texts", nargs="+", help="sentences (a pair task: two per example)")
    parser.add_argument("--base", default="", help="the base checkpoint's folder (a frozen-encoder run)")
    args = parser.parse_args()
    tokenizer, model, head, head_config = load(args.export, args.task, args.base)
    width = len(head_config["text_columns"])
    for i in range(0, len(args.texts) - width + 1, width):
        example = tuple(args.texts[i:i + width])
        pred, score = predict(tokenizer, model, head, head_config, example)
        shown = int(pred) if head_config["kind"] == "classification" else round(pred, 4)
        print(f"{shown}\t{score:.6f}\t{' ||| '.join(example)}")


if __name__ == "__main__":
    main()
