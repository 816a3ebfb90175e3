"""Projected attention layers (PALs; Stickland & Murray 2019), on top and/or in parallel.

A PAL is TS(h) = gelu(V_D g(V_E h)): V_E projects the hidden size H down to a small size P
(204 in the PALs paper), g is multi-head self-attention in that space (6 heads and no output
matrix, as `BERTPals` in the PALs code), V_D projects back up. In parallel, layer l's PAL
reads the layer's input and its output is added inside the layer's output residual, before
the final LayerNorm: LayerNorm(FFN(a) + a + TS_l(h)) (the PALs code's BERTLayer). On top, a
PAL sits between the last layer and the task head.

The top PAL, `top_mode` (which source each choice follows):
- "bert-layer" (default): the seed study's "task-specific, miniature BERT layers between the
  last base BERT layer and the classification heads". Like a BERT layer's attention block, the
  PAL's output enters a residual connection and a task-specific LayerNorm:
  top(h) = LayerNorm_t(h + TS(h)), LayerNorm_t initialised to (1, 0). At initialisation TS is
  small, so the pretrained representation passes through (renormalised). The seed does not say
  whether its miniature layer also has a feed-forward block; this one has none (a PAL is an
  attention layer).
- "pals-code": the PALs code's top (Bert-n-Pals modeling.py, BERTEncoder with config.top):
  V_E down to P, then `top_blocks` BERT attention blocks in that space (self-attention with
  `top_heads` heads, an output projection, residual and LayerNorm each; the code has 6 blocks
  of 12 heads), then V_D back up without gelu, replacing the last hidden states. In that code
  the pretrained pooler follows and the heads read its output: use `--head-input pooler` with
  it. Departure: the code's init_weights draws LayerNorm gains from N(0, 0.02); here they
  start at 1, as transformers' BERT initialises a new LayerNorm.
- "replace": top(h) = TS(h), the PAL's output replacing the last hidden states. With every
  Linear drawn from N(0, 0.02) this shrinks the [CLS] state about 170x at initialisation on
  the packaged MiniLM, and training collapses on a short budget (docs/results-quick.md, the
  first study table). Kept for comparison; neither source does this.
- "residual": top(h) = h + TS(h), without a LayerNorm.

Other choices the study leaves open, taken from the PALs code and exposed as config fields:
- init="bert": every Linear N(0, 0.02), biases 0 (the PALs code's init_bert_weights).
  init="zero-decoder" zeroes V_D, so parallel PALs add exactly 0 at initialisation.
- parallel_sharing: "per-layer" (separate V_E, g, V_D per layer: the study's choice),
  "projections" (V_E and V_D shared across layers, g per layer: the PALs code), or
  "shared" (one whole PAL per task used in every layer).
- layer_scale: one learned scalar per layer and task multiplying the parallel PAL's output,
  initialised to scale_init (the study's "weighted" twist).

Top + Parallel and Combined: the seed says "one PAL per task used in both places" (Same) and
"two PALs per task" (Different), and does not say whether the parallel PAL is one per layer or
one for all layers; here it is one for all layers (parallel_sharing="shared"), as "one PAL ...
in both places" reads. The seed credits "the scalar multipliers" with moderating its combined
models, so those variants scale their parallel PALs by default (layer_scale=true); it does not
say so outright: `-o layer_scale=false` gives the unscaled reading.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from variants.base import TaskAdapter, VariantConfig, check_choice, check_positive
from variants.encoders import BERT_STYLE, BERT_STYLE_NEEDS, bert_style_layers, encoder_sizes
from variants.registry import register_variant

INITS = ("bert", "zero-decoder")
SHARING = ("per-layer", "projections", "shared")
TOP_MODES = ("bert-layer", "pals-code", "replace", "residual")


@dataclass
class PALsConfig(VariantConfig):
    pal_size: int = 204
    pal_heads: int = 6
    top: bool = False
    parallel: bool = False
    parallel_sharing: str = "per-layer"
    top_shares_parallel: bool = False  # the top PAL is the task's (shared) parallel PAL
    top_mode: str = "bert-layer"
    top_blocks: int = 6  # top_mode="pals-code": attention blocks in the projected space
    top_heads: int = 12  # top_mode="pals-code": their heads
    layer_scale: bool = False
    scale_init: float = 0.01
    init: str = "bert"
    init_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        check_positive(self, "pal_size", "pal_heads", "init_std", "top_blocks", "top_heads")
        for heads in ("pal_heads", "top_heads"):
            if self.pal_size % getattr(self, heads):
                raise ValueError(f"pal_size: {self.pal_size} is not divisible by {heads}={getattr(self, heads)}")
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
        if self.top_shares_parallel and self.top_mode == "pals-code":
            raise ValueError("top_mode: 'pals-code' builds a top of its own (attention blocks in the projected "
                             "space), so it cannot share the parallel PAL (top_shares_parallel=true)")


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


class ProjectedAttentionBlock(nn.Module):
    """A BERT attention block in the projected space (the PALs code's top): self-attention, an
    output projection, dropout, residual and LayerNorm."""

    def __init__(self, size: int, heads: int, dropout: float, eps: float):
        super().__init__()
        self.attention = ProjectedSelfAttention(size, heads, dropout)
        self.dense = nn.Linear(size, size)
        self.dropout = nn.Dropout(dropout)
        self.norm = nn.LayerNorm(size, eps=eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.norm(x + self.dropout(self.dense(self.attention(x, mask))))


class PALsCodeTop(nn.Module):
    """The PALs code's top: V_E, `blocks` attention blocks in the projected space, V_D (no gelu)."""

    def __init__(self, hidden: int, config: "PALsConfig", dropout: float, eps: float):
        super().__init__()
        self.encode = nn.Linear(hidden, config.pal_size)
        self.blocks = nn.ModuleList(ProjectedAttentionBlock(config.pal_size, config.top_heads, dropout, eps)
                                    for _ in range(config.top_blocks))
        self.decode = nn.Linear(config.pal_size, hidden)

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.encode(hidden_states)
        for block in self.blocks:
            x = block(x, mask)
        return self.decode(x)


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


def init_pal(pal: nn.Module, init: str, std: float) -> None:
    """Every Linear N(0, std), biases 0; with init="zero-decoder" the up-projection(s) V_D start at 0."""
    for module in pal.modules():
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            nn.init.zeros_(module.bias)
    if init == "zero-decoder":
        decoders = pal["decode"] if isinstance(pal, nn.ModuleDict) else [pal.decode]
        for decode in decoders:
            nn.init.zeros_(decode.weight)


def padding_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """A (batch, 1, 1, length) boolean mask for scaled_dot_product_attention (True: attend)."""
    return None if attention_mask is None else attention_mask[:, None, None, :].bool()


class PALsAdapter(TaskAdapter):
    """Projected attention layers per task, on top and/or in parallel (configurable)."""

    identity_options = {"init": "zero-decoder", "top_mode": "residual"}
    architectures = BERT_STYLE  # the parallel PALs hook into the layers (a top PAL alone would not need it)
    architecture_needs = BERT_STYLE_NEEDS
    hook_state = TaskAdapter.hook_state + ("_layer_input",)  # a parallel PAL reads its layer's input

    def __init__(self, config: PALsConfig, encoder_config, tasks):
        super().__init__(config, encoder_config, tasks)
        sizes = encoder_sizes(encoder_config)
        hidden, layers, dropout, eps = sizes.hidden, sizes.layers, sizes.attention_dropout, sizes.eps
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
                parts["top"] = (PALsCodeTop(hidden, config, dropout, eps) if config.top_mode == "pals-code"
                                else make_pal(hidden, config, dropout, (1, 1, 1)))
            for name in ("parallel", "top"):
                if name in parts:
                    init_pal(parts[name], config.init, config.init_std)
            if config.top and config.top_mode == "bert-layer":
                parts["top_norm"] = nn.LayerNorm(hidden, eps=eps)
            self.per_task[task] = parts
        self.dropout = nn.Dropout(sizes.hidden_dropout)  # the top block's, as a BERT layer's
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
        for index, layer in enumerate(bert_style_layers(encoder, type(self).__name__)):
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
        parts, mode = self.per_task[self.task], self.config.top_mode
        if mode == "pals-code":
            return parts["top"](hidden_states, padding_mask(self._attention_mask))
        pal = parts["parallel"] if self.config.top_shares_parallel else parts["top"]
        out = self.run_pal(pal, 0, hidden_states)
        if mode == "bert-layer":
            return parts["top_norm"](hidden_states + self.dropout(out))
        return hidden_states + out if mode == "residual" else out


@dataclass
class PALsTopConfig(PALsConfig):
    top: bool = True


@register_variant("pals-top", config=PALsTopConfig)
class PALsTop(PALsAdapter):
    """A PAL per task between the last layer and the head."""

    architectures = None  # a top PAL reads the last hidden states only (-o parallel=true needs BERT-style layers)


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
    layer_scale: bool = True  # see the module docstring: the seed's "scalar multipliers"


@register_variant("pals-top-parallel-same", config=PALsTopParallelSameConfig)
class PALsTopParallelSame(PALsAdapter):
    """One PAL per task, used in parallel in every layer and again on top."""


@dataclass
class PALsTopParallelDifferentConfig(PALsConfig):
    top: bool = True
    parallel: bool = True
    parallel_sharing: str = "shared"
    layer_scale: bool = True  # see the module docstring: the seed's "scalar multipliers"


@register_variant("pals-top-parallel-different", config=PALsTopParallelDifferentConfig)
class PALsTopParallelDifferent(PALsAdapter):
    """Two PALs per task: one in parallel in every layer, one on top."""
