"""What a task's file reader returns (`TaskRows`) and raises (`DataError`): the types a task plugin
with its own reader uses (TaskSpec.reader), re-exported by harness.tasks. No torch."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """A data file that cannot be used as it is. The message names the file and line."""


@dataclass
class TaskRows:
    """The validated rows of one file, plus what the lenient mode skipped."""

    path: Path | None  # None: texts that came from no file
    ids: list[str] = field(default_factory=list)
    texts: list[tuple[str, ...]] = field(default_factory=list)
    labels: list[float] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, problem)

    def __len__(self) -> int:
        return len(self.ids)
