"""Plugins: variants and tasks are found through entry-point groups, in-tree ones included."""
from __future__ import annotations

import importlib.metadata


def load_entry_points(group: str, kind: str, error: type[Exception]) -> None:
    """Imports every module named in the entry-point group `group` (importing one registers its
    plugins); one that fails to import raises `error` naming the plugin and the failure."""
    for entry_point in importlib.metadata.entry_points(group=group):
        try:
            entry_point.load()
        except Exception as exc:  # a broken plugin must say which one it is
            raise error(f"{kind} plugin {entry_point.name!r} ({entry_point.value}) failed to import: "
                        f"{type(exc).__name__}: {exc}") from exc
