"""Projected attention layers (PALs; Stickland & Murray 2019), on top and/or in parallel.

A PAL is TS(h) = gelu(V_D g(V_E h)): V_E projects the hidden size H down to a small size P
(204 in the PALs paper), g is multi-head self-attention in that space (6 heads and no output
matrix, as `BERTPals` in the PALs code), V_D projects back up. In parallel, layer l's PAL
reads the layer's input and its output is added inside the layer's output residual, before
the final LayerNorm: LayerNorm(FFN(a) + a + TS_l(h)). On top, a PAL sits between the last
layer and the task head.

Choices the study leaves open, taken from the PALs code and exposed as config fields:
- init="bert": every Linear N(0, 0.02), biases 0 (the PALs code's init_bert_weights).
  init="zero-decoder" zeroes V_D, so parallel PALs add exactly 0 at initialisation.
- top_mode="replace": the top PAL's output replaces the last hidden states, as the PALs code
  does with its top layers; "residual" adds it to them instead.
- parallel_sharing: "per-layer" (separate V_E, g, V_D per layer: the study's choice),
  "projections" (V_E and V_D shared across layers, g per layer: the PALs code), or
  "shared" (one whole PAL per task used in every layer).
- layer_scale: one learned scalar per layer and task multiplying the parallel PAL's output,
  initialised to scale_init (the study's "weighted" twist).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from variants.base import TaskAdapter, VariantConfig, check_choice, check_positive
from variants.registry import register_variant

INITS = ("bert", "zero-decoder")
SHARING = ("per-layer", "projections", "shared")
TOP_MODES = ("replace", "residual")


@dataclass
class PALsConfig(VariantConfig):
    pal_size: int = 204
    pal_heads: int = 6
    top: bool = False
    parallel: bool = False
    parallel_sharing: str = "per-layer"
    top_shares_parallel: bool = False  # the top PAL is the task's (shared) parallel PAL
    top_mode: str = "replace"
    layer_scale: bool = False
    scale_init: float = 0.01
    init: str = "bert"
    init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        check_positive(self, "pal_size", "pal_heads", "init_std")
        if self.pal_size % self.pal_heads:
            raise ValueError(f"pal_size: {self.pal_size} is not divisible by pal_heads={self.pal_heads}")
        check_choice(self, "parallel_sharing", SHARING)
        check_choice(self, "top_mode", TOP_MODES)
        check_choice(self, "init", INITS)
        if not (self.top or self.parallel):
            raise ValueError("top/parallel: a PALs variant needs top=true, parallel=true or both")
        if self.top_shares_parallel and not (self.top and self.parallel and self.parallel_sharing == "shared"):
            raise ValueError("top_shares_parallel: needs top=true, parallel=true and parallel_sharing='shared' "
                             "(one PAL per task, used in every layer and on top)")
        if self.layer_scale and not self.parallel:
            raise ValueError("layer_scale: scales parallel PALs, so it needs parallel=true")


class ProjectedSelfAttention(nn.Module):
    """g: multi-head self-attention in the projected space, without an output matrix."""

    def __init__(self, size: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(size, size)
        self.key = nn.Linear(size, size)
        self.value = nn.Linear(size, size)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, size = x.shape
        q, k, v = (proj(x).view(batch, length, self.heads, -1).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                             dropout_p=self.dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(batch, length, size)


class LayerScale(nn.Module):
    """One learned scalar per layer for one task."""

    def __init__(self, num_layers: int, init: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((num_layers,), float(init)))

    def forward(self, x: torch.Tensor, layer: int) -> torch.Tensor:
        return x * self.weight[layer]


def make_pal(hidden: int, config: PALsConfig, dropout: float, copies: tuple[int, int, int]) -> nn.ModuleDict:
    """A PAL's parts: `copies` V_E, g and V_D modules (one, or one per layer)."""
    n_encode, n_attention, n_decode = copies
    return nn.ModuleDict({
        "encode": nn.ModuleList(nn.Linear(hidden, config.pal_size) for _ in range(n_encode)),
        "attention": nn.ModuleList(ProjectedSelfAttention(config.pal_size, config.pal_heads, dropout)
                                   for _ in range(n_attention)),
        "decode": nn.ModuleList(nn.Linear(config.pal_size, hidden) for _ in range(n_decode)),
    })


def init_pal(pal: nn.ModuleDict, init: str, std: float) -> None:
    for module in pal.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
    if init == "zero-decoder":
        for decode in pal["decode"]:
            nn.init.zeros_(decode.weight)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A (batch, 1, 1, length) boolean mask for scaled_dot_product_attention (True: attend)."""
    return None if attention_mask is None else attention_mask[:, None, None, :].bool()


class PALsAdapter(TaskAdapter):
    """Projected attention layers per task, on top and/or in parallel (configurable)."""

    identity_options = {"init": "zero-decoder", "top_mode": "residual"}

    def __init__(self, config: PALsConfig, encoder_config, tasks):
        super().__init__(config, encoder_config, tasks)
        hidden, layers = encoder_config.hidden_size, encoder_config.num_hidden_layers
        dropout = encoder_config.attention_probs_dropout_prob
        self.num_layers = layers
        parallel_copies = {"per-layer": (layers, layers, layers), "projections": (1, layers, 1),
                           "shared": (1, 1, 1)}[config.parallel_sharing]
        for task in self.tasks:
            parts = nn.ModuleDict()
            if config.parallel:
                parts["parallel"] = make_pal(hidden, config, dropout, parallel_copies)
                if config.layer_scale:
                    parts["scale"] = LayerScale(layers, config.scale_init)
            if config.top and not config.top_shares_parallel:
                parts["top"] = make_pal(hidden, config, dropout, (1, 1, 1))
            for name in ("parallel", "top"):
                if name in parts:
                    init_pal(parts[name], config.init, config.init_std)
            self.per_task[task] = parts
        self._layer_input: torch.Tensor | None = None

    def run_pal(self, pal: nn.ModuleDict, layer: int, hidden_states: torch.Tensor) -> torch.Tensor:
        def pick(name: str) -> nn.Module:
            modules = pal[name]
            return modules[min(layer, len(modules) - 1)]

        x = pick("encode")(hidden_states)
        x = pick("attention")(x, padding_mask(self._attention_mask))
        return F.gelu(pick("decode")(x))

    def attach(self, encoder: nn.Module) -> None:
        super().attach(encoder)
        if not self.config.parallel:
            return
        for index, layer in enumerate(encoder.encoder.layer):
            layer.register_forward_pre_hook(self._remember_layer_input, with_kwargs=True)
            layer.output.LayerNorm.register_forward_pre_hook(self._parallel_hook(index))

    def _remember_layer_input(self, module, args, kwargs):
        self._layer_input = args[0] if args else kwargs["hidden_states"]

    def _parallel_hook(self, layer: int):
        def add_pal_output(module, args):
            # args[0] is FFN(a) + a, just before the layer's final LayerNorm.
            parts = self.per_task[self.task]
            extra = self.run_pal(parts["parallel"], layer, self._layer_input)
            if "scale" in parts:
                extra = parts["scale"](extra, layer)
            return (args[0] + extra,)

        return add_pal_output

    def top(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if not self.config.top:
            return hidden_states
        parts = self.per_task[self.task]
        pal = parts["parallel"] if self.config.top_shares_parallel else parts["top"]
        out = self.run_pal(pal, 0, hidden_states)
        return hidden_states + out if self.config.top_mode == "residual" else out


@dataclass
class PALsTopConfig(PALsConfig):
    top: bool = True


@register_variant("pals-top", config=PALsTopConfig)
class PALsTop(PALsAdapter):
    """A PAL per task between the last layer and the head."""


@dataclass
class PALsParallelConfig(PALsConfig):
    parallel: bool = True


@register_variant("pals-parallel", config=PALsParallelConfig)
class PALsParallel(PALsAdapter):
    """A PAL per task per layer, added before the layer's final LayerNorm."""


@dataclass
class PALsParallelWeightedConfig(PALsConfig):
    parallel: bool = True
    layer_scale: bool = True


@register_variant("pals-parallel-weighted", config=PALsParallelWeightedConfig)
class PALsParallelWeighted(PALsAdapter):
    """Parallel PALs, each scaled by a learned per-layer, per-task scalar initialised small."""


@dataclass
class PALsTopParallelSameConfig(PALsConfig):
    top: bool = True
    parallel: bool = True
    parallel_sharing: str = "shared"
    top_shares_parallel: bool = True


@register_variant("pals-top-parallel-same", config=PALsTopParallelSameConfig)
class PALsTopParallelSame(PALsAdapter):
    """One PAL per task, used in parallel in every layer and again on top."""


@dataclass
class PALsTopParallelDifferentConfig(PALsConfig):
    top: bool = True
    parallel: bool = True
    parallel_sharing: str = "shared"


@register_variant("pals-top-parallel-different", config=PALsTopParallelDifferentConfig)
class PALsTopParallelDifferent(PALsAdapter):
    """Two PALs per task: one in parallel in every layer, one on top."""
