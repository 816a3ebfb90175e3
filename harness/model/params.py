"""Exact parameter accounting for any built MultitaskModel, DeepSpeed ZeRO-3 included.

The layout a variant follows (see variants.base) decides each parameter's group:
  encoder.*                    -> encoder (the pretrained encoder), except what the variant
                                  injected there (a peft adapter), which is its task's
  variant.per_task.<task>.*    -> task-specific parameters of <task>
  variant.* (anything else)    -> shared added parameters
  heads.<task>.*               -> head of <task>
A parameter shared between modules is counted once (named_parameters deduplicates).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from harness.core.names import RATIO_TO_ENCODER, TASK_SPECIFIC_TOTAL, params_key


def numel(parameter: nn.Parameter) -> int:
    """True size even when ZeRO-3 has partitioned the tensor (its numel() is then 0)."""
    return int(getattr(parameter, "ds_numel", parameter.numel()))


@dataclass
class ParameterCounts:
    encoder: int = 0
    shared_added: int = 0
    task_specific: dict[str, int] = field(default_factory=dict)
    heads: dict[str, int] = field(default_factory=dict)
    trainable: int = 0

    @property
    def total(self) -> int:
        return self.encoder + self.shared_added + sum(self.task_specific.values()) + sum(self.heads.values())

    @property
    def ratio(self) -> float:
        """Total parameters over the encoder's (the PALs paper's "1.13x")."""
        return self.total / self.encoder

    def as_metrics(self) -> dict[str, float]:
        """Flat names for MLflow, the same for every variant so runs line up in the UI."""
        out = {params_key("total"): self.total, params_key("encoder"): self.encoder,
               params_key("trainable"): self.trainable, params_key("shared_added"): self.shared_added,
               RATIO_TO_ENCODER: self.ratio, TASK_SPECIFIC_TOTAL: sum(self.task_specific.values()),
               params_key("heads_total"): sum(self.heads.values())}
        for task, n in self.task_specific.items():
            out[params_key(f"task_specific/{task}")] = n
        for task, n in self.heads.items():
            out[params_key(f"head/{task}")] = n
        return out


def parameter_group(name: str, variant: nn.Module | None = None) -> tuple[str, str | None]:
    """(group, task) of a parameter (or state-dict) name of a MultitaskModel: ("encoder"|"shared_added",
    None) or ("task_specific"|"head", task). `variant` (the model's TaskAdapter) says which names
    under the encoder it injected; without it every encoder.* name is the encoder's."""
    parts = name.split(".")
    if parts[0] == "encoder":
        task = variant.encoder_parameter_task(name.removeprefix("encoder.")) if variant is not None else None
        return ("task_specific", task) if task else ("encoder", None)
    if parts[0] == "heads":
        return "head", parts[1]
    if parts[0] == "variant":
        return ("task_specific", parts[2]) if parts[1] == "per_task" else ("shared_added", None)
    raise ValueError(f"parameter {name!r} is outside encoder/variant/heads; cannot account for it")


def grouped_parameters(model: nn.Module):
    """(name, parameter, group, task) for every parameter of a MultitaskModel (wrapped or not)."""
    model = getattr(model, "module", model)  # DDP / DeepSpeed engine wrappers
    for name, parameter in model.named_parameters():
        yield (name, parameter, *parameter_group(name, model.variant))


def count_parameters(model: nn.Module) -> ParameterCounts:
    model = getattr(model, "module", model)
    tasks = tuple(model.tasks)
    counts = ParameterCounts(task_specific=dict.fromkeys(tasks, 0), heads=dict.fromkeys(tasks, 0))
    for _, parameter, group, task in grouped_parameters(model):
        n = numel(parameter)
        if parameter.requires_grad:
            counts.trainable += n
        if group == "encoder":
            counts.encoder += n
        elif group == "shared_added":
            counts.shared_added += n
        elif group == "head":
            counts.heads[task] += n
        else:
            counts.task_specific[task] += n
    return counts


def random_encoder(random_config: str, arch: str = "bert"):
    """A randomly initialised encoder of architecture `arch` (a transformers model_type: bert,
    roberta, electra, deberta-v2, modernbert, ...) and shape "H,L,A" (hidden size, layers, heads;
    intermediate size 4H), the config class's defaults for everything else; and its description."""
    from transformers import CONFIG_MAPPING

    from harness.model.encoders import ModelError, encoder_from_config

    try:
        hidden, layers, heads = (int(x) for x in random_config.split(","))
    except ValueError:
        raise ValueError(f"--random-config {random_config!r}: expected H,L,A such as 768,12,12") from None
    if arch not in CONFIG_MAPPING:
        raise ModelError(f"--arch {arch!r}: not a model_type this transformers knows (e.g. bert, roberta, electra, "
                         "deberta-v2, modernbert)")
    config = CONFIG_MAPPING[arch](hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                                  intermediate_size=4 * hidden)
    encoder = encoder_from_config(config, pooler=False, where=f"--arch {arch}")
    return encoder, f"random {arch} (hidden {hidden}, {layers} layers, {heads} heads)"


def parameter_table(model: str = "default", random_config: str = "", pair_encoding: str = "joint",
                    arch: str = "bert") -> str:
    """A Markdown table of the counts of every registered variant that supports the encoder,
    built without training with its default options (a variant that cannot hook into the
    encoder, or whose default options do not fit it, is listed with the reason).

    `random_config` "H,L,A" builds a randomly initialised encoder of architecture `arch` and that
    shape instead of loading `model` (bert with hidden 768, 12 layers, 12 heads is BERT-base).
    """
    import copy

    from harness.model.network import build_model, load_encoder
    from variants import list_variants, make_config
    from variants.registry import supports

    if random_config:
        encoder, source = random_encoder(random_config, arch)
    else:
        encoder, _ = load_encoder(model)
        source = f"model {model} ({encoder.config.model_type})"
    lines = [f"Parameter counts on {source}, pair encoding {pair_encoding}.", "",
             "| variant | encoder | task-specific per task | heads | total | ratio to encoder |",
             "|---|---|---|---|---|---|"]
    for variant in list_variants():
        if not supports(variant, encoder.config.model_type):
            lines.append(f"| {variant.name} | not available on {encoder.config.model_type} | | | | |")
            continue
        try:
            model = build_model(copy.deepcopy(encoder), variant.name, make_config(variant.name), pair_encoding)
        except (ValueError, AttributeError) as exc:  # its defaults do not fit this encoder (LoRA's sites on
            # ModernBERT), or a plugin that declares no architectures looks for BERT's modules
            lines.append(f"| {variant.name} | not with its default options: {type(exc).__name__}: {exc} | | | | |")
            continue
        counts = count_parameters(model)
        per_task = ", ".join(f"{t} {n:,}" for t, n in counts.task_specific.items())
        lines.append(f"| {variant.name} | {counts.encoder:,} | {per_task} | {sum(counts.heads.values()):,} | "
                     f"{counts.total:,} | {counts.ratio:.4f}x |")
    return "\n".join(lines)
