"""Records that remember where they came from, and the JSON / JSONL reader.

`runner.data.reading.read_file` picks the reader by a file's kind (``hf:`` data sets, ``.txt``,
CSV / TSV / Parquet); everything else is JSON, read here. Accepted JSON layouts:
- a JSON array of objects;
- a JSON object holding exactly one list of objects (e.g. ``{"data": [...]}``);
- JSONL (one object per line; blank lines ignored). A ``.json`` file whose content is
  really JSONL is read as JSONL.

A file that cannot be read at all (missing, empty, not UTF-8, broken JSON) raises
`DataFileError` naming file, line and column and how to fix it. Inside a readable file,
a JSONL line that is not valid JSON, or an element that is not an object, is a *bad
record*: it is returned with its location and handled by the on_bad_record policy.

Every value is decoded within bounds (`runner.spec.limits`), checked before the decoder
recurses: nesting deeper than MAX_RECORD_DEPTH, integers longer than MAX_RECORD_INT_DIGITS,
NaN / Infinity / numbers that overflow to infinity, and lone UTF-16 surrogates ("\\ud800",
which no tokenizer can encode) make the record bad, with the reason, instead of raising from
deep inside `json` or a tokenizer later.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.data.report import BadRecord, DataError, Location
from runner.spec.limits import MAX_RECORD_DEPTH, MAX_RECORD_INT_DIGITS

JSONL_SUFFIXES = (".jsonl", ".ndjson")
_WS = re.compile(r"[ \t\n\r]*")


def _skip_ws(text: str, pos: int = 0) -> int:
    """The index of the first non-whitespace character at or after `pos`."""
    match = _WS.match(text, pos)
    return match.end() if match is not None else pos  # [ ...]* matches everywhere: never None


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string (the unrolled form: fast in `re`)
_STRING_OR_BRACKET = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{\]}]')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


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


def read_json_file(path: str | Path) -> ReadResult:
    """Read one JSON or JSONL file (see module docstring for the accepted layouts)."""
    name = str(path)
    text = read_text(Path(path))
    if not text.strip():
        raise DataFileError(name, "file is empty", "add records to it, or remove it from the list of data files", 1, 1)
    if Path(path).suffix.lower() in JSONL_SUFFIXES:
        return _read_jsonl(name, text)
    deep = too_deep(text, MAX_RECORD_DEPTH + 2)  # + the array and an object holding it
    try:
        top = BoundedJSON().decoder.decode(text) if deep is None else None
    except json.JSONDecodeError as e:
        if _looks_like_jsonl(text, e):
            return _read_jsonl(name, text)
        raise _json_error(name, text, e) from None
    if deep is not None:
        if text.lstrip().startswith("{") and "\n{" in text and _jsonl_shaped(text):
            return _read_jsonl(name, text)
        line, column = _line_column(text, deep)
        raise DataFileError(
            name,
            f"JSON nested more than {MAX_RECORD_DEPTH} levels deep inside a record",
            "records are objects of text fields (and turns, tools); flatten this value",
            line,
            column,
        )
    return _read_json(name, text, top)


class BoundedJSON:
    """A JSON decoder that refuses what a data record must not hold, and says why.

    Its hooks cannot raise through the C scanner with a position, so they note the reason and
    return a placeholder; the caller checks `take()` after each value it decodes.
    """

    def __init__(self) -> None:
        self.reasons: list[str] = []
        self.decoder = json.JSONDecoder(parse_int=self._int, parse_float=self._float, parse_constant=self._constant)

    def take(self) -> str | None:
        """The first reason noted since the last call (None: the value is clean)."""
        reasons, self.reasons = self.reasons, []
        return reasons[0] if reasons else None

    def _int(self, digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_RECORD_INT_DIGITS:
            self.reasons.append(
                f"an integer of {len(digits.lstrip('-'))} digits (at most {MAX_RECORD_INT_DIGITS}); "
                "write large numbers as strings"
            )
            return 0
        return int(digits)

    def _float(self, text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            self.reasons.append(f"the number {text[:40]} overflows to infinity; numbers must be finite")
        return value

    def _constant(self, name: str) -> float:
        self.reasons.append(f"{name} is not a JSON number; numbers must be finite (write null or a number)")
        return float("nan")


def too_deep(text: str, limit: int) -> int | None:
    """Offset of the first bracket nested deeper than `limit` in JSON `text` (strings ignored), or None.

    The common case costs two C-speed regex passes; the slow scan that finds the offset runs only
    when the limit is exceeded.
    """
    if text.count("[") + text.count("{") <= limit:  # an upper bound: brackets in strings count too
        return None
    brackets = _NOT_BRACKET.sub("", _STRING.sub("", text))
    if max(itertools.accumulate(1 if c in "[{" else -1 for c in brackets), default=0) <= limit:
        return None
    depth = 0
    for match in _STRING_OR_BRACKET.finditer(text):
        char = text[match.start()]
        if char in "[{":
            depth += 1
            if depth > limit:
                return match.start()
        elif char in "]}":
            depth -= 1
    return None


def lone_surrogate(value: Any) -> str | None:
    """Where `value` holds a string with a lone UTF-16 surrogate ("'field' turn 2"), or None."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as e:
                return f"{where or 'a value'} holds a lone surrogate ({item[e.start]!r})"
        elif isinstance(item, dict):
            for key, inner in item.items():
                stack.append((where or "a key", key))
                stack.append((f"{where}.{key}" if where else repr(key), inner))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", inner) for i, inner in enumerate(item))
    return None


def loads_bounded(text: str) -> Any:
    """One JSON value held in a string field (tool schemas written as JSON text), within the record
    bounds; raises json.JSONDecodeError for bad syntax and ValueError with the reason otherwise."""
    if too_deep(text, MAX_RECORD_DEPTH) is not None:
        raise ValueError(f"nested more than {MAX_RECORD_DEPTH} levels deep")
    bounded = BoundedJSON()
    value = bounded.decoder.decode(text)
    reason = _refusal(bounded, value, text)
    if reason is not None:
        raise ValueError(reason)
    return value


def _refusal(decoder: BoundedJSON, value: Any, raw: str) -> str | None:
    """Why a decoded record must not be used (bounds, surrogates), or None."""
    reason = decoder.take()
    if reason is None and _SURROGATE_ESCAPE.search(raw):
        where = lone_surrogate(value)
        if where is not None:
            reason = (
                f"{where}: half of a UTF-16 pair is not a character; write both halves "
                "(e.g. \\ud83d\\ude00) or the character itself"
            )
    return reason


def _line_column(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - (text.rfind("\n", 0, offset) + 1) + 1


def _jsonl_shaped(text: str) -> bool:
    """One object per line (a .json file holding JSONL), judged by the first line alone."""
    first = text.lstrip().split("\n", 1)[0]
    try:
        return (
            isinstance(BoundedJSON().decoder.decode(first), dict) if too_deep(first, MAX_RECORD_DEPTH) is None else True
        )
    except json.JSONDecodeError:
        return False


def read_text(path: Path) -> str:
    """A data file's text (UTF-8, BOM removed), or DataFileError naming the file and the byte at fault."""
    name = str(path)
    if not path.exists():
        raise DataFileError(name, "file not found", f"check the path (resolved to {path.resolve()})")
    if path.is_dir():
        raise DataFileError(name, "is a directory", "list the data files inside it instead")
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
    bounded = BoundedJSON()
    # split on "\n" only: str.splitlines() would also split on U+2028 inside JSON strings
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        location = Location(name, line=lineno)
        deep = too_deep(line, MAX_RECORD_DEPTH)
        if deep is not None:
            result.bad.append(
                BadRecord(
                    location,
                    f"nested more than {MAX_RECORD_DEPTH} levels deep at column "
                    f"{deep + 1}; records are objects of text fields: flatten it",
                )
            )
            continue
        try:
            value = bounded.decoder.decode(line)
        except json.JSONDecodeError as e:
            bounded.take()
            result.bad.append(BadRecord(location, f"invalid JSON at column {e.colno}: {e.msg}"))
            continue
        reason = _refusal(bounded, value, line)
        if reason is not None:
            result.bad.append(BadRecord(location, reason))
            continue
        _append(result, value, location)
    if not result.records and not result.bad:
        raise DataFileError(name, "file holds no records", "add one JSON object per line", 1, 1)
    return result


def _read_json(name: str, text: str, top: Any) -> ReadResult:
    line_starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def line_of(offset: int) -> int:
        return bisect.bisect_right(line_starts, offset)

    start = _skip_ws(text)
    if isinstance(top, list):
        elements = _array_elements(text, start)
    elif isinstance(top, dict):
        list_keys = [k for k, v in top.items() if isinstance(v, list)]
        if len(list_keys) != 1:
            found = "no list" if not list_keys else "several lists (keys " + ", ".join(map(repr, list_keys)) + ")"
            raise DataFileError(
                name,
                f"top-level object holds {found}; expected an array of records or an object holding one list",
                'keep the records in a single list, e.g. {"data": [...]}, or split them into separate files',
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
    for index, (value, offset, reason) in enumerate(elements):
        location = Location(name, line=line_of(offset), index=index)
        if reason is not None:
            result.bad.append(BadRecord(location, reason))
        else:
            _append(result, value, location)
    return result


def _append(result: ReadResult, value: Any, location: Location) -> None:
    if isinstance(value, dict):
        result.records.append(Record(value, location))
    else:
        kind = "null" if value is None else type(value).__name__
        result.bad.append(BadRecord(location, f"record is a JSON {kind}; expected an object {{...}}"))


# The two scanners below walk text that the bounded decoder already accepted, only to learn
# where each element starts (for line numbers); they never see invalid or too-deep JSON.


def _array_elements(text: str, pos: int) -> list[tuple[Any, int, str | None]]:
    """(value, start offset, reason to refuse it) of each element of the array at text[pos] == '['."""
    pos = _skip_ws(text, pos + 1)
    out: list[tuple[Any, int, str | None]] = []
    if text[pos] == "]":
        return out
    bounded = BoundedJSON()
    surrogates = _SURROGATE_ESCAPE.search(text) is not None
    while True:
        value, end = bounded.decoder.raw_decode(text, pos)
        out.append((value, pos, _refusal(bounded, value, text[pos:end] if surrogates else "")))
        pos = _skip_ws(text, end)
        if text[pos] == "]":
            return out
        pos = _skip_ws(text, pos + 1)  # skip ","


def _object_value_offsets(text: str, pos: int) -> dict[str, int]:
    """Start offset of each member value of the object starting at text[pos] == '{'."""
    pos = _skip_ws(text, pos + 1)
    out: dict[str, int] = {}
    if text[pos] == "}":
        return out
    skipper = BoundedJSON()  # decodes values only to skip them
    while True:
        key, end = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]  # public, absent from typeshed
        pos = _skip_ws(text, end)  # at ":"
        pos = _skip_ws(text, pos + 1)
        out[key] = pos
        _, end = skipper.decoder.raw_decode(text, pos)
        skipper.take()
        pos = _skip_ws(text, end)
        if text[pos] == "}":
            return out
        pos = _skip_ws(text, pos + 1)
