"""What the variants read of an encoder: its sizes (from its config) and, for the hook-based
variants (PALs in parallel, EmBERT), its BERT-style layers (from its module tree).

BERT-style layers: one list of layers, each with `attention.self.query/key/value` (Linear layers
of the hidden size, whose outputs EmBERT's task vectors are added to) and `output.LayerNorm`
(the layer's final LayerNorm, post-LN: its output is the layer's output and its input is
FFN(a) + a, to which a parallel PAL's output is added). `BERT_STYLE` names the transformers
model types checked to have exactly that (tests/test_variant_architectures.py builds a tiny
random one of each, finds its layers, checks the LayerNorm's place by running it, and runs every
variant on it). RoFormer rotates the query and key after their Linear, so EmBERT's vectors are
rotated with them; YOSO approximates the attention of the encoder's own heads (not a PAL's).
Left out, checked in transformers 5.25:
- the same module names, another layer: MobileBERT (bottleneck layers, `output.LayerNorm` of the
  bottleneck width), Canine (three stacks of layers), RoBERTa-PreLayerNorm, XLM-RoBERTa-XL, ESM and
  Megatron-BERT (pre-LN: no LayerNorm at the layer's end), ConvBERT (a narrower query), I-BERT
  (quantised Linear and LayerNorm): `bert_style_layers` finds none;
- BERT-style layers, other inputs: Longformer (pads the sequence to its attention window inside,
  so a parallel PAL's padding mask no longer fits), Nystromformer (failed on a tiny config here,
  not investigated), MRA (its attention gave the query, key and value no gradient here, on CPU),
  BigBird (untested in its block-sparse attention), and task-specific
  inputs (LayoutLM, TAPAS, LUKE, MarkupLM, VisualBERT, X-MOD's languages);
- other module names: DeBERTa(-v2), DistilBERT, ModernBERT, ALBERT, MPNet.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

# transformers model_types whose layers have BERT's structure (checked in transformers 5.25).
BERT_STYLE = ("bert", "camembert", "data2vec-text", "electra", "ernie", "rembert", "roberta", "roformer",
              "xlm-roberta", "yoso")

BERT_STYLE_NEEDS = ("hooks into BERT-style layers (encoder.layer[i].attention.self.query/key/value, "
                    "encoder.layer[i].output.LayerNorm)")

# A config's name for each size the variants read, first match wins (configs name them differently:
# ModernBERT's attention_dropout and norm_eps, DistilBERT's dim and n_layers behind its attribute_map).
FIELDS = {
    "hidden": ("hidden_size",),
    "layers": ("num_hidden_layers",),
    "attention_dropout": ("attention_probs_dropout_prob", "attention_dropout"),
    "hidden_dropout": ("hidden_dropout_prob", "hidden_dropout", "dropout", "mlp_dropout"),
    "eps": ("layer_norm_eps", "norm_eps", "layer_norm_epsilon"),
}
DEFAULT_EPS = 1e-12  # BERT's, for a config that names no LayerNorm epsilon (DistilBERT hard-codes it)


@dataclass(frozen=True)
class EncoderSizes:
    hidden: int
    layers: int
    attention_dropout: float
    hidden_dropout: float
    eps: float


def encoder_sizes(encoder_config) -> EncoderSizes:
    """The sizes a variant builds its parts with, read from a transformers config of any encoder."""
    values = {}
    for key, names in FIELDS.items():
        found = [getattr(encoder_config, name) for name in names if getattr(encoder_config, name, None) is not None]
        if found:
            values[key] = found[0]
        elif key == "eps":
            values[key] = DEFAULT_EPS
        else:
            raise ValueError(f"encoder config {type(encoder_config).__name__} (model_type "
                             f"{getattr(encoder_config, 'model_type', '?')!r}) has none of {list(names)}")
    return EncoderSizes(**values)


def is_bert_style_layer(layer: nn.Module, hidden: int) -> bool:
    attention = getattr(getattr(layer, "attention", None), "self", None)
    projections = [getattr(attention, name, None) for name in ("query", "key", "value")]
    norm = getattr(getattr(layer, "output", None), "LayerNorm", None)
    return (all(isinstance(p, nn.Linear) and p.in_features == p.out_features == hidden for p in projections)
            and isinstance(norm, nn.LayerNorm) and tuple(norm.normalized_shape) == (hidden,))


def bert_style_layers(encoder: nn.Module, variant: str) -> nn.ModuleList:
    """The encoder's list of BERT-style layers, found in its module tree: the one ModuleList whose
    every item is such a layer, of the config's number of layers. A clear error where there is none
    (or more than one), naming the variant and the encoder's model_type."""
    sizes = encoder_sizes(encoder.config)
    found = [(name, module) for name, module in encoder.named_modules() if isinstance(module, nn.ModuleList)
             and len(module) and all(is_bert_style_layer(layer, sizes.hidden) for layer in module)]
    if len(found) == 1 and len(found[0][1]) == sizes.layers:
        return found[0][1]
    model_type = getattr(encoder.config, "model_type", "?")
    lists = ", ".join(f"{name} ({len(module)} layers)" for name, module in found) or "none"
    raise ValueError(f"variant {variant!r} {BERT_STYLE_NEEDS}: the {type(encoder).__name__} (model_type "
                     f"{model_type!r}) has {lists} of the {sizes.hidden} hidden size, expected one list of its "
                     f"{sizes.layers} layers")
