"""Read plain text files (``.txt``) into ``{"text": ...}`` records for the text format.

``data.text_unit`` says what one document is:
- ``paragraph`` (default): a block of lines separated by one or more blank lines;
- ``file``: the whole file;
- ``line``: each non-blank line (as the ``datasets`` text loader and LLaMA-Factory read .txt).

Each record is located by the line its document starts on. Line ends are kept inside a document
(a paragraph's lines stay separate lines); the blank lines between documents are not part of them.
"""

from __future__ import annotations

import re
from pathlib import Path

from runner.data.records import DataFileError, ReadResult, Record, read_text
from runner.data.report import Location

TEXT_SUFFIXES = (".txt",)
TEXT_UNITS = ("paragraph", "file", "line")
_BLANK_LINES = re.compile(r"\n[ \t\r\f\v]*\n(?:[ \t\r\f\v]*\n)*")


def read_text_file(path: str | Path, *, unit: str = "paragraph") -> ReadResult:
    if unit not in TEXT_UNITS:
        raise ValueError(f"text_unit must be one of {TEXT_UNITS}, got {unit!r}")
    name = str(path)
    text = read_text(Path(path)).replace("\r\n", "\n")
    if not text.strip():
        raise DataFileError(name, "file is empty", "add text to it, or remove it from the list of data files", 1, 1)
    result = ReadResult()
    for line, document in _documents(text, unit):
        result.records.append(Record({"text": document}, Location(name, line=line)))
    return result


def _documents(text: str, unit: str) -> list[tuple[int, str]]:
    """(first line, document) pairs; documents are stripped of surrounding blank space."""
    if unit == "file":
        return [(_line_of(text, len(text) - len(text.lstrip())), text.strip())]
    if unit == "line":
        return [(n, line.strip()) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    out = []
    start = 0
    for match in [*_BLANK_LINES.finditer(text), None]:
        end = match.start() if match is not None else len(text)
        block = text[start:end]
        if block.strip():
            lead = len(block) - len(block.lstrip())
            out.append((_line_of(text, start + lead), block.strip()))
        if match is not None:
            start = match.end()
    return out


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1
