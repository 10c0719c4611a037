"""Validation problems of a job file, each pointing at a file, line, column and key path."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, order=True)
class SpecIssue:
    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        return f"{where}: {self.path}: {self.message}" if self.path else f"{where}: {self.message}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class JobSpecError(Exception):
    """Every problem found in one job file; raised only after the whole file was checked."""

    file: str
    issues: list[SpecIssue] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.file)

    def __str__(self) -> str:
        return "\n".join(str(issue) for issue in self.issues)


def dotted(path: tuple[str | int, ...] | list[str | int]) -> str:
    """`("data", "train", 1)` -> `data.train[1]`: the form users write in docs and errors."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += ("." if text else "") + str(part)
    return text
