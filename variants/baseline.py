"""The study's two baselines: everything shared but the heads."""
from __future__ import annotations

from dataclasses import dataclass

from variants.base import TaskAdapter, VariantConfig
from variants.registry import register_variant


@dataclass
class MultitaskConfig(VariantConfig):
    pass


@register_variant("multitask", config=MultitaskConfig)
class Multitask(TaskAdapter):
    """All encoder parameters shared across tasks; only the heads are task-specific."""


@dataclass
class SingleTaskConfig(VariantConfig):
    tasks: tuple[str, ...] = ("sst", "cfimdb")


@register_variant("single-task", config=SingleTaskConfig)
class SingleTask(TaskAdapter):
    """Fine-tuned on sentiment only (SST and CFIMDB); only the heads are task-specific."""
