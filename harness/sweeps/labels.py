"""A sweep job's label, written and read here only: the variant, then its grid (or search) values as
`setting=value` tokens, "lora freeze_encoder=True lr=0.001 variant.rank=32". Training records it
as the run's tag sweep.label (harness/core/names.py); `mtl-bench compare` groups a sweep's seeds by it
and reads the values back from it (`--select-over`, the baseline's matching grid point).
"""
from __future__ import annotations

from collections.abc import Container, Mapping
from dataclasses import dataclass
from typing import Any


def label_value(value: Any) -> str:
    """A value as a job's label shows it: one token (a list option's items joined by commas)."""
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@dataclass(frozen=True)
class Label:
    """A label read back: its variant and its `setting=value` tokens, in the label's order."""
    variant: str
    tokens: tuple[str, ...] = ()

    @property
    def grid(self) -> list[tuple[str, str]]:
        """The grid values as (setting, "setting=value") pairs: "lora freeze_encoder=True lr=0.001"
        gives [("freeze_encoder", "freeze_encoder=True"), ("lr", "lr=0.001")]."""
        return [(token.partition("=")[0], token) for token in self.tokens]

    @property
    def settings(self) -> list[str]:
        return [setting for setting, _ in self.grid]

    @property
    def values(self) -> dict[str, str]:
        """setting -> value as the label shows it ({"lr": "0.001"})."""
        return {setting: token.partition("=")[2] for setting, token in self.grid}

    def keeping(self, settings: Container[str]) -> Label:
        """The label with only the values of these settings."""
        return Label(self.variant, tuple(token for setting, token in self.grid if setting in settings))

    def __str__(self) -> str:
        return " ".join([self.variant, *self.tokens])


def make_label(variant: str, values: Mapping[str, Any] | None = None) -> str:
    """The label of a job of `variant` at these grid (or search) values, in their order."""
    return str(Label(variant, _tokens(values or {})))


def extend_label(label: str, values: Mapping[str, Any]) -> str:
    """A label with more values after its own (a search trial's, after its grid point's)."""
    parsed = parse_label(label)
    return str(Label(parsed.variant, parsed.tokens + _tokens(values)))


def _tokens(values: Mapping[str, Any]) -> tuple[str, ...]:
    return tuple(f"{k}={label_value(v)}" for k, v in values.items())


def parse_label(label: str) -> Label:
    """A label read back (make_label's inverse): "lora lr=0.001" gives Label("lora", ("lr=0.001",))."""
    variant, *tokens = label.split() or [""]
    return Label(variant, tuple(tokens))
