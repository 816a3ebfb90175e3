"""Per-task LoRA and (IA)^3, built by the `peft` library: one adapter per task, selected for its pass.

`peft.inject_adapter_in_model` is called once per task with the task's name as the adapter
name, so every targeted Linear of the encoder holds one adapter per task (peft's own
multi-adapter layers). Before each encoder pass the task's adapter is made the active one.

What the harness's invariants need, and how they are kept:
- The set of trainable parameters never changes after the model is built (DDP and DeepSpeed
  fix it when they wrap the model). peft's `set_adapter` sets `requires_grad` on the active
  adapter only, so it is not used: a forward pre-hook on each adapted layer sets the layer's
  active adapter (`_active_adapter`) to the task of the pass. Every task's adapter stays
  trainable; an inactive task's adapter gets no gradient, and the optimizer's per-task groups
  leave it and its optimizer state untouched (harness.training.optim). peft's injection also freezes
  everything but the adapters; the encoder's own `requires_grad` is restored afterwards, so
  `--freeze-encoder` decides whether the encoder trains, as for every variant.
- The adapters live inside the encoder's modules, under peft's names
  (`...query.lora_A.<task>.weight`, `...key.ia3_l.<task>`); `encoder_parameter_task` maps
  those names to their task, so the parameter accounting counts them as the task's specific
  parameters, not as the encoder's, and the optimizer puts them in the task's group. The
  wrapped Linear's own weights move to `...query.base_layer.weight` (peft's layout).
- Gradient checkpointing: the pre-hook reads the adapter's `_task`, which a recomputed layer
  gets back from `checkpoint_context`.

Where in each layer (`sites`): query, key, value (the attention's projections; qkv where one
Linear computes all three), attention-output (its output projection), ffn-in and ffn-out (the
feed-forward block's two Linear layers), found by module name in the encoder's architecture's table
(variants/peft_sites.py: BERT-style encoders, DeBERTa-v2, DistilBERT, ModernBERT, MPNet). On
another architecture, or to adapt other modules, `target_modules` names them (a regex of module
names, peft's full match), and for (IA)^3 `feedforward_modules` those of them whose input is scaled.

LoRA (Hu et al. 2021): W x + (alpha / r) B A x, B zero at initialisation (the pretrained
function at the start). Defaults are the LoRA paper's and peft's: W_q and W_v, r = 8,
alpha = 8, no dropout; peft's default BERT targets are the same two ("query", "value").

(IA)^3 (Liu et al. 2022): learned vectors rescale the keys, the values and the feed-forward
block's inner activation (l_k, l_v, l_ff), all ones at initialisation. peft scales a
"feed-forward" layer's input and any other layer's output; here ffn-out and attention-output
are feed-forward layers (their inputs are scaled), the others are not. Default: key, value,
ffn-out, the paper's three. peft's own default for BERT targets every module whose name ends
in "output.dense", which also rescales the input of each attention output projection:
`-o sites=key,value,attention-output,ffn-out` gives that reading.

Departures and open choices: peft initialises LoRA's A Kaiming-uniform (as Microsoft's loralib
does), where the LoRA paper's text says Gaussian. Weight decay (--weight-decay, default 0)
applies to the adapters as to every parameter: for (IA)^3 it pulls the vectors toward 0, not
toward their identity value 1.

Bottleneck adapters (Houlsby or Pfeiffer placement) are not in `peft`; AdapterHub's `adapters`
library has them, but its current release (1.3.0) requires transformers ~= 4.57.6 and the
harness runs transformers 5; installed beside transformers 5.24 regardless (pip --no-deps), it
fails at import (`cannot import name 'HfFolder' from 'huggingface_hub'`). So no variant offers
them yet.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from torch import nn

from variants.base import TaskAdapter, VariantConfig, check_positive
from variants.peft_sites import FEEDFORWARD_SITES, check_sites, site_pattern
from variants.registry import register_variant

@dataclass
class LoRAConfig(VariantConfig):
    rank: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    sites: tuple[str, ...] = ("query", "value")
    target_modules: str = ""  # a regex of module names (peft full-matches it); given, it replaces sites

    def validate(self) -> None:
        super().validate()
        check_positive(self, "rank", "alpha")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int):
            raise ValueError(f"rank: expected a whole number, got {self.rank!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: expected a value in [0, 1), got {self.dropout!r}")
        check_sites(self)
        check_targets(self, "target_modules")

    def peft_config(self, model_type: str = "bert"):
        """peft's config for an encoder of `model_type` (whose table locates the sites)."""
        from peft import LoraConfig

        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules or site_pattern(self.sites, model_type), bias="none")


@dataclass
class IA3Config(VariantConfig):
    sites: tuple[str, ...] = ("key", "value", "ffn-out")
    target_modules: str = ""  # a regex of module names; given, it replaces sites
    feedforward_modules: str = ""  # with target_modules: those of them whose input is scaled ("": none)

    def validate(self) -> None:
        super().validate()
        check_sites(self)
        check_targets(self, "target_modules", "feedforward_modules")
        if self.feedforward_modules and not self.target_modules:
            raise ValueError("feedforward_modules: given with target_modules only (sites decide it otherwise)")

    def peft_config(self, model_type: str = "bert"):
        """peft's config for an encoder of `model_type` (whose table locates the sites)."""
        from peft import IA3Config as PeftIA3Config

        if self.target_modules:
            target, feedforward = self.target_modules, self.feedforward_modules
        else:
            scaled_inputs = tuple(s for s in self.sites if s in FEEDFORWARD_SITES)
            target = site_pattern(self.sites, model_type)
            feedforward = site_pattern(scaled_inputs, model_type) if scaled_inputs else ""
        # peft requires feedforward_modules to be a subset of target_modules; a pattern matching no
        # module stands for "none".
        return PeftIA3Config(target_modules=target, feedforward_modules=feedforward or r"(?!)",
                             init_ia3_weights=True)


def check_targets(config, *names: str) -> None:
    """Each named option compiles as a regex; target_modules, given, is not meant beside sites."""
    if config.target_modules and config.sites != type(config).sites:
        raise ValueError(f"target_modules: replaces sites, so it is not given with sites {list(config.sites)} "
                         "(name every module in target_modules)")
    for name in names:
        try:
            re.compile(getattr(config, name))
        except re.error as exc:
            raise ValueError(f"{name}: {getattr(config, name)!r} is not a regular expression ({exc})") from None


class PeftTaskAdapter(TaskAdapter):
    """Base of the peft variants: one peft adapter per task, injected into the encoder."""

    identity_options = {}  # LoRA's B and (IA)^3's vectors start at the identity

    def __init__(self, config, encoder_config, tasks: tuple[str, ...]):
        super().__init__(config, encoder_config, tasks)
        self._adapter_names: tuple[str, ...] = ()  # peft's per-adapter attribute names (lora_A, ia3_l, ...)

    @classmethod
    def check_encoder(cls, config, model_type: str) -> None:
        """The sites (or target_modules) can be located in an encoder of `model_type`."""
        config.peft_config(model_type)

    def attach(self, encoder: nn.Module) -> None:
        from peft import inject_adapter_in_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        model_type = getattr(encoder.config, "model_type", "?")
        try:
            peft_config = self.config.peft_config(model_type)
        except ValueError as exc:
            raise ValueError(f"variant {type(self).__name__} on the {type(encoder).__name__}: {exc}") from None
        trainable = {id(p): p.requires_grad for p in encoder.parameters()}
        for task in self.tasks:
            try:
                inject_adapter_in_model(peft_config, encoder, adapter_name=task)
            except ValueError as exc:  # peft's own: no module matched, or one it cannot adapt
                targets = (f"target_modules '{self.config.target_modules}'" if self.config.target_modules
                           else f"sites {list(self.config.sites)}")
                raise ValueError(f"variant {type(self).__name__}, {targets} on the {type(encoder).__name__} "
                                 f"(model_type {model_type!r}): {exc}") from None
            # peft's record of its configs, which would make the next injection warn of several adapters
            # (what is meant here); the harness keeps its own record (the variant config).
            vars(encoder).pop("peft_config", None)
        layers = [m for m in encoder.modules() if isinstance(m, BaseTunerLayer)]
        names = set()
        for layer in layers:
            names.update(layer.adapter_layer_names)
            layer.register_forward_pre_hook(self._activate)
        self._adapter_names = tuple(sorted(names))
        for parameter in encoder.parameters():
            # The encoder's own weights as they were; every task's adapter (new here) trainable, always.
            parameter.requires_grad = trainable.get(id(parameter), True)

    def _activate(self, layer, args) -> None:
        layer._active_adapter = self.task

    def encoder_parameter_task(self, name: str) -> str | None:
        """The task owning encoder parameter `name` (peft's `<module>.<adapter attr>.<task>[.<param>]`)."""
        parts = name.split(".")
        for i, part in enumerate(parts[:-1]):
            if part in self._adapter_names and parts[i + 1] in self.tasks:
                return parts[i + 1]
        return None


@register_variant("lora", config=LoRAConfig)
class LoRA(PeftTaskAdapter):
    """Per-task LoRA (peft) on the attention's query and value projections; rank, alpha, sites are options."""


@register_variant("ia3", config=IA3Config)
class IA3(PeftTaskAdapter):
    """Per-task (IA)^3 (peft): learned rescaling of keys, values and the feed-forward activation."""

