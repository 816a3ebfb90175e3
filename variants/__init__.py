"""Variant plugins: each method of adding task-specific parameters to a shared BERT.

Register one with `@register_variant(name, config=ConfigDataclass)` on a TaskAdapter subclass
and expose its module in the `bert_mtl_bench.variants` entry-point group.
"""
from variants.base import TaskAdapter, VariantConfig
from variants.registry import (
    ENTRY_POINT_GROUP,
    VariantError,
    get_variant,
    list_variants,
    make_config,
    register_variant,
)

__all__ = [
    "ENTRY_POINT_GROUP", "TaskAdapter", "VariantConfig", "VariantError", "get_variant", "list_variants",
    "make_config", "register_variant",
]
