"""Task-embedded attention (EmBERT; Maziarka & Danel 2021), and EmBERT combined with PALs.

In every layer, each task has three vectors added to the query, key and value projections
of every head: Q + q_t, K + k_t, V + v_t (3 x hidden parameters per layer per task). They are
added to the outputs of the encoder's own query/key/value Linear layers by forward hooks,
so the encoder keeps using PyTorch's fused scaled-dot-product attention.

Initialisation: the EmBERT code builds on the PALs code, whose init_bert_weights draws every
nn.Embedding (the task vectors are one) from N(0, 0.02): init="bert". init="zeros" starts
from the unchanged pretrained encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from variants.base import TaskAdapter, VariantConfig, check_choice, check_positive
from variants.encoders import BERT_STYLE, BERT_STYLE_NEEDS, bert_style_layers, encoder_sizes
from variants.pals import PALsAdapter, PALsConfig
from variants.registry import register_variant

PROJECTIONS = ("query", "key", "value")


class TaskVectors(nn.Module):
    """One task's vectors: (layers, 3, hidden), added to Q, K and V."""

    def __init__(self, num_layers: int, hidden: int, init: str, std: float):
        super().__init__()
        self.vectors = nn.Parameter(torch.zeros(num_layers, len(PROJECTIONS), hidden))
        if init == "bert":
            nn.init.normal_(self.vectors, std=std)

    def forward(self, projected: torch.Tensor, layer: int, which: int) -> torch.Tensor:
        return projected + self.vectors[layer, which]


def attach_task_vectors(adapter: TaskAdapter, encoder: nn.Module, key: str) -> None:
    """Hooks every layer's query/key/value Linear to add `adapter.per_task[task][key]`'s vectors."""
    for layer_index, layer in enumerate(bert_style_layers(encoder, type(adapter).__name__)):
        attention = layer.attention.self
        for which, name in enumerate(PROJECTIONS):
            def add_vector(module, args, output, layer_index=layer_index, which=which):
                return adapter.per_task[adapter.task][key](output, layer_index, which)

            getattr(attention, name).register_forward_hook(add_vector)


@dataclass
class EmbertConfig(VariantConfig):
    embert_init: str = "bert"
    embert_std: float = 0.02

    def validate(self) -> None:
        super().validate()
        check_choice(self, "embert_init", ("bert", "zeros"))
        check_positive(self, "embert_std")


@register_variant("embert", config=EmbertConfig)
class Embert(TaskAdapter):
    """Task-embedded attention: per-task vectors added to Q, K and V in every layer."""

    identity_options = {"embert_init": "zeros"}
    architectures = BERT_STYLE
    architecture_needs = BERT_STYLE_NEEDS

    def __init__(self, config: EmbertConfig, encoder_config, tasks):
        super().__init__(config, encoder_config, tasks)
        sizes = encoder_sizes(encoder_config)
        for task in self.tasks:
            self.per_task[task] = nn.ModuleDict({"embert": TaskVectors(
                sizes.layers, sizes.hidden, config.embert_init, config.embert_std)})

    def attach(self, encoder: nn.Module) -> None:
        attach_task_vectors(self, encoder, "embert")


@dataclass
class CombinedConfig(PALsConfig, EmbertConfig):
    top: bool = True
    parallel: bool = True
    parallel_sharing: str = "shared"
    top_shares_parallel: bool = True
    layer_scale: bool = True  # see variants/pals.py's docstring: the seed's "scalar multipliers"
    # validate(): PALsConfig's, whose super() in this MRO is EmbertConfig's, covers both.


@register_variant("combined", config=CombinedConfig)
class Combined(PALsAdapter):
    """Task-embedded attention plus one PAL per task, in parallel in every layer and on top."""

    identity_options = {**PALsAdapter.identity_options, "embert_init": "zeros"}

    def __init__(self, config: CombinedConfig, encoder_config, tasks):
        super().__init__(config, encoder_config, tasks)
        sizes = encoder_sizes(encoder_config)
        for task in self.tasks:
            self.per_task[task]["embert"] = TaskVectors(
                sizes.layers, sizes.hidden, config.embert_init, config.embert_std)

    def attach(self, encoder: nn.Module) -> None:
        super().attach(encoder)
        attach_task_vectors(self, encoder, "embert")
