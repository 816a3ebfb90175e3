"""Typed values from strings: the one converter behind command-line flags, sweep files, variant
options and job config files.

`convert(hint, raw, where)` turns a string (or an already-typed value from YAML or JSON) into
the annotated type of a dataclass field, or raises with a message that names `where` and what
was expected. Nothing here imports more than the standard library.
"""
from __future__ import annotations

import types
import typing
from typing import Any

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


def parse_pair(pair: str, flag: str, error: type[Exception] = ValueError) -> tuple[str, str]:
    """NAME=VALUE (as --option, --set, --grid take it) as (name with '-' read as '_', value)."""
    key, sep, value = pair.partition("=")
    if not sep or not key.strip():
        raise error(f"{flag} {pair!r}: expected NAME=VALUE")
    return key.strip().replace("-", "_"), value


def describe(hint: Any) -> str:
    """What a value of this type looks like, for error and help texts."""
    if typing.get_origin(hint) is typing.Literal:
        return f"one of {list(typing.get_args(hint))}"
    if typing.get_origin(hint) is tuple:
        return "a comma-separated list"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(hint, str(hint))


def convert(hint: Any, raw: Any, where: str, error: type[Exception] = ValueError) -> Any:
    """`raw` as a value of type `hint` (bool, int, float, str, Literal[...], tuple[str, ...], or
    dict, which passes through); raises `error("<where>: expected ..., got ...")` otherwise."""
    def fail() -> Exception:
        return error(f"{where}: expected {describe(hint)}, got {raw!r}")

    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        if raw not in typing.get_args(hint):
            raise fail()
        return raw
    if origin is tuple:
        if not isinstance(raw, (str, list, tuple)):
            raise fail()
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return tuple(str(item).strip() for item in items if str(item).strip())
    if origin in (typing.Union, types.UnionType):
        raise error(f"{where}: union-typed settings are not supported; use a single type")
    if hint is dict or origin is dict:
        if not isinstance(raw, dict):
            raise fail()
        return dict(raw)
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in TRUE + FALSE:
            return raw.strip().lower() in TRUE
        raise fail()
    if hint in (int, float):
        if isinstance(raw, bool) or (hint is int and isinstance(raw, float)):
            raise fail()
        try:
            return hint(raw)
        except (TypeError, ValueError):
            raise fail() from None
    if hint is str:
        if not isinstance(raw, str):
            raise fail()
        return raw
    raise error(f"{where}: settings of type {hint} are not supported")
