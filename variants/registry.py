"""The variant registry: one decorator registers a method by name with its config dataclass.

In-tree variants and a user's own are found the same way, through the entry-point group
`bert_mtl_bench.variants`: each entry point names a module whose import registers variants.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from harness.core.plugins import load_entry_points
from harness.core.values import convert

ENTRY_POINT_GROUP = "bert_mtl_bench.variants"


class VariantError(ValueError):
    """An unknown variant or an invalid variant option. The message names the field."""


@dataclass(frozen=True)
class RegisteredVariant:
    name: str
    config_class: type
    adapter_class: type
    description: str
    source: str  # the module that registered it
    tasks: str = ""  # the task group it trains when --tasks names none ("": the default group)


_REGISTRY: dict[str, RegisteredVariant] = {}
_discovered = False


def register_variant(name: str, config: type, tasks: str = ""):
    """Class decorator: registers a TaskAdapter subclass under `name` with its config dataclass;
    `tasks` names the task group (harness.tasks.TaskGroup) it trains when the run names no task set
    (default: the default group)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"variant {name!r}: config must be a dataclass, got {config!r}")

    def decorate(adapter_class: type) -> type:
        from variants.base import TaskAdapter

        if not (isinstance(adapter_class, type) and issubclass(adapter_class, TaskAdapter)):
            raise TypeError(f"variant {name!r}: {adapter_class!r} is not a TaskAdapter subclass (variants/base.py)")
        doc = (adapter_class.__doc__ or "").strip()
        description = doc.splitlines()[0] if doc else name
        previous = _REGISTRY.get(name)
        if previous is not None and previous.adapter_class.__qualname__ != adapter_class.__qualname__:
            raise VariantError(f"variant {name!r} is registered twice: by {previous.source} and "
                               f"{adapter_class.__module__}")
        _REGISTRY[name] = RegisteredVariant(name, config, adapter_class, description, adapter_class.__module__, tasks)
        return adapter_class

    return decorate


def discover() -> None:
    """Imports every module named in the entry-point group (ours and any installed package's)."""
    global _discovered
    if _discovered:
        return
    load_entry_points(ENTRY_POINT_GROUP, "variant", VariantError)
    _discovered = True


def list_variants() -> list[RegisteredVariant]:
    discover()
    return [_REGISTRY[name] for name in sorted(_REGISTRY)]


def get_variant(name: str) -> RegisteredVariant:
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "(none: is the project installed?)"
        raise VariantError(f"unknown variant {name!r}; known variants: {known}") from None


def default_task_set(name: str) -> tuple[str, ...]:
    """The task set variant `name` trains when the run names none: its group's, else the default group's."""
    from harness.tasks import TaskError, default_tasks, get_group

    variant = get_variant(name)
    try:
        return get_group(variant.tasks).tasks if variant.tasks else default_tasks()
    except TaskError as exc:
        raise VariantError(f"variant {name!r}: {exc}") from None


def make_config(name: str, options: dict[str, Any] | None = None):
    """The validated config of variant `name` with `options` (strings or values) applied. `tasks`
    among them is the run's task set (TrainConfig.variant_settings passes --tasks); without it, the
    variant's default set (`default_task_set`)."""
    variant = get_variant(name)
    fields = {f.name: f for f in dataclasses.fields(variant.config_class)}
    hints = typing.get_type_hints(variant.config_class)
    values = {}
    for key, raw in (options or {}).items():
        if key not in fields:
            raise VariantError(f"variant {name!r} has no option {key!r}; its options: {', '.join(fields)}")
        values[key] = convert(hints[key], raw, f"variant {name!r} option {key!r}", VariantError)
    if "tasks" not in values and "tasks" in fields:
        values["tasks"] = default_task_set(name)
    try:
        return variant.config_class(**values)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, VariantError):
            raise
        raise VariantError(f"variant {name!r}: {exc}") from exc


def supports(variant: RegisteredVariant, model_type: str) -> bool:
    """Whether `variant` can be built on an encoder of `model_type` (its adapter's `architectures`)."""
    architectures = variant.adapter_class.architectures
    return architectures is None or model_type in architectures


def check_architecture(variant_name: str, model_type: str, config=None) -> None:
    """Raises VariantError (a ValueError) if variant `variant_name` cannot be built on an encoder of
    transformers `model_type` (e.g. 'deberta-v2'): the message says what the variant needs and
    which variants support that encoder. With the variant's `config`, its options are checked against
    the encoder too (TaskAdapter.check_encoder). Unknown variants raise get_variant's error."""
    variant = get_variant(variant_name)
    if supports(variant, model_type):
        if config is not None:
            try:
                variant.adapter_class.check_encoder(config, model_type)
            except ValueError as exc:
                raise VariantError(f"variant {variant_name!r} on a {model_type} encoder: {exc}") from None
        return
    adapter = variant.adapter_class
    if adapter.architecture_needs:
        why = f"{adapter.architecture_needs}; model_type {model_type!r} has none"
    else:
        why = f"supports the model_types {', '.join(adapter.architectures)} only, not {model_type!r}"
    others = ", ".join(v.name for v in list_variants() if supports(v, model_type)) or "none"
    raise VariantError(f"variant {variant_name!r} {why}. Variants that support {model_type}: {others}")
