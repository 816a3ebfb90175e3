"""A low-rank adapter per task in every layer (Houlsby-style, added before the final LayerNorm)."""
from dataclasses import dataclass

from torch import nn

from variants import TaskAdapter, VariantConfig, register_variant
from variants.encoders import BERT_STYLE, BERT_STYLE_NEEDS, bert_style_layers


@dataclass
class LowRankConfig(VariantConfig):
    rank: int = 8

    def validate(self):
        super().validate()
        if self.rank <= 0:
            raise ValueError(f"rank: expected a positive integer, got {self.rank!r}")


@register_variant("lowrank", config=LowRankConfig)
class LowRank(TaskAdapter):
    """A rank-r adapter per task per layer, added inside each layer's output residual."""

    architectures = BERT_STYLE  # the encoders whose layers it hooks: bert, roberta, electra, ...
    architecture_needs = BERT_STYLE_NEEDS  # what the refusal of any other encoder says it needs
    identity_options = {}  # the up-projection starts at zero

    def __init__(self, config, encoder_config, tasks):
        super().__init__(config, encoder_config, tasks)
        hidden, layers = encoder_config.hidden_size, encoder_config.num_hidden_layers
        for task in self.tasks:
            adapters = nn.ModuleList(nn.Sequential(nn.Linear(hidden, config.rank), nn.GELU(),
                                                   nn.Linear(config.rank, hidden)) for _ in range(layers))
            for adapter in adapters:
                nn.init.zeros_(adapter[2].weight)
                nn.init.zeros_(adapter[2].bias)
            self.per_task[task] = adapters

    def attach(self, encoder):
        for index, layer in enumerate(bert_style_layers(encoder, "lowrank")):
            def add(module, args, index=index):
                return (args[0] + self.per_task[self.task][index](args[0]),)

            layer.output.LayerNorm.register_forward_pre_hook(add)
