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

    def add(self, example_id: str, texts: tuple[str, ...], label: float) -> None:
        self.ids.append(example_id)
        self.texts.append(texts)
        self.labels.append(label)

    def reject(self, position: int, where: str, problem: Exception | str, lenient: bool) -> None:
        """A bad row at `position` (a line or row index): a DataError naming `where` (the file and
        line), or with `lenient` the row is skipped and recorded."""
        if not lenient:
            raise DataError(f"{where}: {problem}") from None  # the message says it all
        self.skipped.append((position, str(problem)))
