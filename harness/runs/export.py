"""`mtl-bench export RUN_ID DIR`: a saved run's model as standard folders, usable without the harness.

DIR holds `encoder/` (a plain transformers model of the encoder's own class, BertModel, RobertaModel,
..., which `AutoModel.from_pretrained` loads; none if the encoder was frozen), per task
`<task>/head.safetensors` and `head.json` (and, for lora and ia3, the task's peft adapter), and
for every variant `parts.safetensors` (every weight that is not the encoder's own) and
`export.json` (the variant, its options, the tasks, the base checkpoint by name, package and
SHA-256; and copies of the run's --task-file files in `task-files/`). `load_export(DIR)` rebuilds
the harness's model from these wherever the variant (and the tasks, unless a task file declared
them) are installed. The layout in full: docs/using-a-trained-run.md.

examples/load_exported_lora.py loads a LoRA task with transformers, peft and safetensors alone.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from harness.runs.trained import (FORMAT_VERSION, TrainedModelError, Trained, downloaded_model, load_model, resolve_base,
                                  save_task_files)

EXPORT_FORMAT = "bert-mtl-bench-export"
EXPORT_VERSION = 1
PARTS_FILE = "parts.safetensors"


def export_run(run_id: str, dst: str | Path, tracking_uri: str = "", base: str = "", out=print) -> Path:
    """Loads a run's saved model (a frozen encoder's base as `load_model` finds it) and exports it to `dst`."""
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise TrainedModelError(f"{dst}: not empty; export writes into a new or empty folder")
    with downloaded_model(run_id, tracking_uri) as (folder, _):
        trained = load_model(folder, base=base)
    export_model(trained, dst, run_id)
    for path in sorted(p for p in dst.rglob("*") if p.is_file()):
        out(f"wrote {path}")
    return dst


def _is_peft(variant) -> bool:
    from variants.peft_adapters import PeftTaskAdapter

    return isinstance(variant, PeftTaskAdapter)


def _contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # safetensors refuses tensors that share memory (tied or views): each gets its own copy.
    return {k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}


def _bare_encoder(encoder):
    """A new encoder of `encoder`'s class and config (with a pooler if it has one), randomly initialised."""
    from harness.model.encoders import encoder_from_config

    return encoder_from_config(encoder.config, pooler=getattr(encoder, "pooler", None) is not None)


def plain_encoder(model):
    """The encoder's own weights in a plain transformers model of its class (a peft variant's
    adapters left out and its wrapped layers' `base_layer` names undone)."""
    encoder, variant = model.encoder, model.variant
    plain = _bare_encoder(encoder)
    own = {k.replace(".base_layer.", "."): v for k, v in encoder.state_dict().items()
           if variant.encoder_parameter_task(k) is None}
    plain.load_state_dict(own, strict=True)
    return plain.eval()


def _peft_adapter(model, task: str, folder: Path, base_name: str) -> None:
    """Task `task`'s adapter as a standard peft folder (peft's save_pretrained, adapter "default")."""
    from peft import get_peft_model

    encoder, variant = model.encoder, model.variant
    wrapped = get_peft_model(_bare_encoder(encoder), variant.config.peft_config(encoder.config.model_type))
    # Informational (PeftModel.from_pretrained takes the base model itself): the export's encoder/
    # folder, or the base checkpoint's name for a frozen encoder.
    wrapped.peft_config["default"].base_model_name_or_path = base_name
    weights = {}
    for key, value in encoder.state_dict().items():
        if variant.encoder_parameter_task(key) != task:
            continue
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in variant._adapter_names and parts[i + 1] == task:
                parts[i + 1] = "default"
                break
        weights[".".join(parts)] = value
    inner = wrapped.base_model.model
    expected = {k for k in inner.state_dict() if any(f".{n}.default" in f"{k}." for n in variant._adapter_names)}
    if set(weights) != expected:
        raise TrainedModelError(f"task {task}: its adapter's weights {sorted(set(weights) ^ expected)[:6]} do not "
                                "match the adapter peft builds from the variant's config")
    inner.load_state_dict(weights, strict=False)
    import warnings

    with warnings.catch_warnings():  # peft looks for the base's config by that name to see if its vocabulary changed
        warnings.filterwarnings("ignore", message="Could not find a config file")
        wrapped.save_pretrained(folder)


def head_config(model, task: str, config) -> dict:
    from harness.model.network import CosineHead

    spec = model.specs[task]
    separate = spec.is_pair and config.pair_encoding == "separate"
    return {"task": task, "kind": spec.kind, "num_classes": spec.num_classes, "binary_logit": spec.binary_logit,
            "label_range": list(spec.label_range), "outputs": spec.outputs, "text_columns": list(spec.text_columns),
            "input": "mean" if separate else config.head_input, "pair_encoding": config.pair_encoding,
            "head": "cosine" if isinstance(model.heads[task], CosineHead) else "linear",
            "max_length": config.max_length}


def export_model(trained: Trained, dst: Path, run_id: str = "") -> Path:
    from safetensors.torch import save_file

    from harness.model.params import parameter_group
    from harness.tasks import spec_summary

    model, config, meta = trained.model, trained.config, trained.meta
    dst.mkdir(parents=True, exist_ok=True)
    peft = _is_peft(model.variant)
    saved_encoder = meta["encoder"] == "saved"
    if saved_encoder:
        plain_encoder(model).save_pretrained(dst / "encoder")
        trained.tokenizer.save_pretrained(dst / "encoder")
    state = model.state_dict()
    parts = {k: v for k, v in state.items() if parameter_group(k, model.variant)[0] != "encoder"}
    save_file(_contiguous(parts), dst / PARTS_FILE, metadata={"format": EXPORT_FORMAT})
    base = dict(meta["base"])
    base_name = "encoder" if saved_encoder else base["name"]
    for task in model.tasks:
        folder = dst / task
        folder.mkdir(parents=True, exist_ok=True)
        head = {k.split(".", 2)[2].removeprefix("linear."): v for k, v in parts.items()
                if k.startswith(f"heads.{task}.")}
        if head:
            save_file(_contiguous(head), folder / "head.safetensors")
        (folder / "head.json").write_text(json.dumps(head_config(model, task, config), indent=2) + "\n")
        if peft:
            _peft_adapter(model, task, folder, base_name)
    variant_settings = dataclasses.asdict(model.variant.config)
    tasks = variant_settings.pop("tasks")
    manifest = {
        "format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model_format_version": FORMAT_VERSION,
        "run_id": run_id, "variant": config.variant, "options": variant_settings,
        "tasks": {t: spec_summary(model.specs[t]) for t in tasks},
        "pair_encoding": config.pair_encoding, "head_input": config.head_input, "max_length": config.max_length,
        "encoder": "encoder" if saved_encoder else None, "base": base,
        "peft_adapters": peft, "epoch": meta.get("epoch"), "dev_metrics": meta.get("dev_metrics", {}),
        # copies of the run's --task-file files (task-files/), so its tasks are known where the export goes
        "task_files": save_task_files(dst, config.task_file) if config.task_file else [],
    }
    (dst / "export.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return dst


def load_export(folder: str | Path, base: str = "", device: str | torch.device = "cpu") -> Trained:
    """The harness's MultitaskModel from an export folder (any variant installed here), in eval mode;
    a frozen encoder's base from `base` if given, else as harness.runs.trained.resolve_base finds it."""
    from safetensors.torch import load_file

    from harness.core.config import resolve_config
    from harness.model.network import build_model, load_encoder
    from harness.model.params import parameter_group
    from harness.tasks import spec_summary
    from harness.runs.trained import register_saved_task_files, registered
    from variants import make_config

    folder = Path(folder)
    try:
        manifest = json.loads((folder / "export.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TrainedModelError(f"{folder}: not a bert-mtl-bench export ({type(exc).__name__}: {exc})") from None
    if manifest.get("format") != EXPORT_FORMAT or manifest.get("version") != EXPORT_VERSION:
        raise TrainedModelError(f"{folder / 'export.json'}: format {manifest.get('format')!r} version "
                                f"{manifest.get('version')!r}; this harness reads {EXPORT_FORMAT!r} version "
                                f"{EXPORT_VERSION}")
    register_saved_task_files(folder, manifest)  # tasks declared in a file: from the export's copies
    for task, recorded in manifest["tasks"].items():
        now = spec_summary(registered(task))
        if now != recorded:
            raise TrainedModelError(f"task {task!r} is registered differently now than when it was exported "
                                    f"({recorded} then, {now} now)")
    pooler = manifest["head_input"] == "pooler"
    if manifest["encoder"]:
        encoder, tokenizer = load_encoder(str(folder / manifest["encoder"]), pooler=pooler)
    else:
        encoder, tokenizer = load_encoder(str(resolve_base(manifest["base"], base)), pooler=pooler)
    variant_config = make_config(manifest["variant"], {**manifest["options"], "tasks": list(manifest["tasks"])})
    model = build_model(encoder, manifest["variant"], variant_config, manifest["pair_encoding"],
                        manifest["head_input"])
    result = model.load_state_dict(load_file(folder / PARTS_FILE), strict=False)
    missing = [k for k in result.missing_keys if parameter_group(k, model.variant)[0] != "encoder"]
    if missing or result.unexpected_keys:
        raise TrainedModelError(f"{folder / PARTS_FILE} does not fit the model export.json describes: missing "
                                f"{missing[:10]}, unexpected {result.unexpected_keys[:10]}")
    model.to(device).eval()
    config = resolve_config({"variant": manifest["variant"], "tasks": ",".join(manifest["tasks"]),
                             "pair_encoding": manifest["pair_encoding"], "head_input": manifest["head_input"],
                             "max_length": manifest["max_length"]})
    return Trained(model, tokenizer, config, manifest)
