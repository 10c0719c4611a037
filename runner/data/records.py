"""Read JSON / JSONL data files into records that remember where they came from.

Accepted layouts:
- a JSON array of objects;
- a JSON object holding exactly one list of objects (e.g. ``{"data": [...]}``);
- JSONL (one object per line; blank lines ignored). A ``.json`` file whose content is
  really JSONL is read as JSONL.

A file that cannot be read at all (missing, empty, not UTF-8, broken JSON) raises
`DataFileError` naming file, line and column and how to fix it. Inside a readable file,
a JSONL line that is not valid JSON, or an element that is not an object, is a *bad
record*: it is returned with its location and handled by the on_bad_record policy.
"""

from __future__ import annotations

import bisect
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.data.report import BadRecord, DataError, Location

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class DataFileError(DataError):
    """A data file that cannot be read as a whole."""

    def __init__(
        self, path: str | Path, problem: str, fix: str, line: int | None = None, column: int | None = None
    ) -> None:
        self.path, self.problem, self.fix, self.line, self.column = str(path), problem, fix, line, column
        where = self.path
        if line is not None:
            where += f":{line}" + (f":{column}" if column is not None else "")
        super().__init__(f"{where}: {problem}\n  fix: {fix}")


@dataclass(frozen=True)
class Record:
    """One JSON object from a data file, with its location for error messages."""

    data: dict[str, Any]
    location: Location


@dataclass
class ReadResult:
    """Records read in order, plus the records that could not be parsed."""

    records: list[Record] = field(default_factory=list)
    bad: list[BadRecord] = field(default_factory=list)

    def extend(self, other: ReadResult) -> None:
        self.records.extend(other.records)
        self.bad.extend(other.bad)


def read_records(paths: Iterable[str | Path]) -> ReadResult:
    """Read several files and merge their records in the order given."""
    result = ReadResult()
    for path in paths:
        result.extend(read_file(path))
    return result


def read_file(path: str | Path) -> ReadResult:
    """Read one JSON or JSONL file (see module docstring for the accepted layouts)."""
    name = str(path)
    text = _read_text(Path(path))
    if not text.strip():
        raise DataFileError(name, "file is empty", "add records to it, or remove it from the list of data files", 1, 1)
    if Path(path).suffix.lower() in JSONL_SUFFIXES:
        return _read_jsonl(name, text)
    try:
        top = json.loads(text)
    except json.JSONDecodeError as e:
        if _looks_like_jsonl(text, e):
            return _read_jsonl(name, text)
        raise _json_error(name, text, e) from None
    return _read_json(name, text, top)


def _read_text(path: Path) -> str:
    name = str(path)
    if not path.exists():
        raise DataFileError(name, "file not found", f"check the path (resolved to {path.resolve()})")
    if path.is_dir():
        raise DataFileError(name, "is a directory", "list the .json/.jsonl files inside it instead")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataFileError(name, f"cannot read file ({e.strerror})", "check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        column = len(raw[line_start : e.start].decode("utf-8")) + 1
        raise DataFileError(
            name,
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x})",
            "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
            line,
            column,
        ) from None
    return text.removeprefix("\ufeff")


def _looks_like_jsonl(text: str, e: json.JSONDecodeError) -> bool:
    """A .json file holding one object per line fails with 'Extra data' at a line start."""
    return e.msg == "Extra data" and e.colno == 1 and text.lstrip().startswith("{")


def _json_error(name: str, text: str, e: json.JSONDecodeError) -> DataFileError:
    if e.pos >= len(text.rstrip()):
        problem = f"file ends in the middle of a JSON value ({e.msg}); it looks truncated"
        fix = "regenerate or re-download the file; a complete JSON array ends with ']'"
    else:
        problem = f"invalid JSON: {e.msg}"
        fix = "fix the JSON syntax at that position (a missing comma or quote is the usual cause)"
    return DataFileError(name, problem, fix, e.lineno, e.colno)


def _read_jsonl(name: str, text: str) -> ReadResult:
    result = ReadResult()
    # split on "\n" only: str.splitlines() would also split on U+2028 inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        location = Location(name, line=lineno)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            result.bad.append(BadRecord(location, f"invalid JSON at column {e.colno}: {e.msg}"))
            continue
        _append(result, value, location)
    if not result.records and not result.bad:
        raise DataFileError(name, "file holds no records", "add one JSON object per line", 1, 1)
    return result


def _read_json(name: str, text: str, top: Any) -> ReadResult:
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset)

    start = _WS.match(text).end()
    if isinstance(top, list):
        elements = _array_elements(text, start)
    elif isinstance(top, dict):
        list_keys = [k for k, v in top.items() if isinstance(v, list)]
        if len(list_keys) != 1:
            found = "no list" if not list_keys else "several lists (keys " + ", ".join(map(repr, list_keys)) + ")"
            raise DataFileError(
                name,
                f"top-level object holds {found}; expected an array of records or an object holding one list",
                "keep the records in a single list, e.g. {\"data\": [...]}, or split them into separate files",
                1,
                start + 1,
            )
        elements = _array_elements(text, _object_value_offsets(text, start)[list_keys[0]])
    else:
        raise DataFileError(
            name,
            f"top-level JSON value is a {type(top).__name__}; expected an array of records",
            "wrap the records in a JSON array: [ {...}, {...} ]",
            1,
            start + 1,
        )
    if not elements:
        raise DataFileError(name, "holds an empty list of records", "add records, or remove the file", 1, start + 1)
    result = ReadResult()
    for index, (value, offset) in enumerate(elements):
        _append(result, value, Location(name, line=line_of(offset), index=index))
    return result


def _append(result: ReadResult, value: Any, location: Location) -> None:
    if isinstance(value, dict):
        result.records.append(Record(value, location))
    else:
        kind = "null" if value is None else type(value).__name__
        result.bad.append(BadRecord(location, f"record is a JSON {kind}; expected an object {{...}}"))


# The two scanners below walk text that json.loads already accepted, only to learn
# where each element starts (for line numbers); they never see invalid JSON.


def _array_elements(text: str, pos: int) -> list[tuple[Any, int]]:
    """(value, start offset) of each element of the array starting at text[pos] == '['."""
    pos = _WS.match(text, pos + 1).end()
    out: list[tuple[Any, int]] = []
    if text[pos] == "]":
        return out
    while True:
        value, end = _DECODER.raw_decode(text, pos)
        out.append((value, pos))
        pos = _WS.match(text, end).end()
        if text[pos] == "]":
            return out
        pos = _WS.match(text, pos + 1).end()  # skip ","


def _object_value_offsets(text: str, pos: int) -> dict[str, int]:
    """Start offset of each member value of the object starting at text[pos] == '{'."""
    pos = _WS.match(text, pos + 1).end()
    out: dict[str, int] = {}
    if text[pos] == "}":
        return out
    while True:
        key, end = json.decoder.scanstring(text, pos + 1)
        pos = _WS.match(text, end).end()  # at ":"
        pos = _WS.match(text, pos + 1).end()
        out[key] = pos
        _, end = _DECODER.raw_decode(text, pos)
        pos = _WS.match(text, end).end()
        if text[pos] == "}":
            return out
        pos = _WS.match(text, pos + 1).end()

