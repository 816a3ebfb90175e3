"""The study's two baselines: everything shared but the heads. They differ only by their task set:
`single-task` trains the task group `sentiment` unless --tasks names another set."""
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


@register_variant("single-task", config=MultitaskConfig, tasks="sentiment")
class SingleTask(TaskAdapter):
    """Fine-tuned on sentiment only (SST and CFIMDB); only the heads are task-specific."""
