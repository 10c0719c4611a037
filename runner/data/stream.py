"""Read a JSON / JSONL data file one record at a time, in bounded memory.

The layouts and messages of `runner.data.records` (a JSON array, an object holding one list,
JSONL, a `.json` file that is really JSONL), but from a binary stream: at most one record (up
to `max_record` bytes) and one read chunk are held at a time, so a 64 MiB upload is checked
with the memory of one record rather than of the whole file as Python objects. Each record is
decoded within the bounds `read_file` applies (`BoundedJSON`, `too_deep`: nesting, integer
digits, non-finite numbers, lone surrogates); a record over them, and a JSONL line over
`max_record`, is a bad record with its location, never an exception from the decoder.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Iterator
from typing import IO, Any

from runner.data.records import JSONL_SUFFIXES, BoundedJSON, DataFileError, Record, lone_surrogate, too_deep
from runner.data.report import BadRecord, Location
from runner.spec.limits import MAX_RECORD_DEPTH

__all__ = ["iter_records"]

CHUNK = 1 << 16
_WS = " \t\n\r"


def iter_records(stream: IO[bytes], name: str, *, suffix: str, max_record: int) -> Iterator[Record | BadRecord]:
    """Records (and bad records) of one file in order; `DataFileError` when the file as a whole
    cannot be read. `name` is what locations and messages show; `stream` must be seekable."""
    if suffix.lower() in JSONL_SUFFIXES or _first_line_is_a_record(stream, max_record):
        yield from _jsonl(stream, name, max_record)
        return
    stream.seek(0)
    yield from _JsonReader(stream, name, max_record).records()


def _first_line_is_a_record(stream: IO[bytes], max_record: int) -> bool:
    """A `.json` file holding one object per line: its first line is a whole object and more follows."""
    stream.seek(0)
    first = stream.readline(max_record + 1).decode("utf-8", "replace").removeprefix("\ufeff").strip()
    if not first.startswith("{") or len(first) > max_record:
        return False
    if too_deep(first, MAX_RECORD_DEPTH) is not None:
        return True  # one (too deep) record per line: JSONL, whose reader reports the line
    try:
        _, end = BoundedJSON().decoder.raw_decode(first)
    except ValueError:
        return False
    if end != len(first):
        return False
    rest = stream.read(CHUNK)
    while rest and not rest.strip():
        rest = stream.read(CHUNK)
    return bool(rest.strip())


def _decode_line(raw: bytes, name: str, lineno: int) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        column = len(raw[: e.start].decode("utf-8", "replace")) + 1
        raise DataFileError(
            name,
            f"not valid UTF-8 (byte 0x{raw[e.start]:02x})",
            "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
            lineno,
            column,
        ) from None


_TOO_DEEP = f"nested more than {MAX_RECORD_DEPTH} levels deep; records are objects of text fields: flatten it"


def _value(value: Any, location: Location, bounded: BoundedJSON, raw: str) -> Record | BadRecord:
    """The decoded value as a record, or the bad record it is (over a bound, not an object)."""
    reason = bounded.take()
    if reason is None and "\\u" in raw:
        where = lone_surrogate(value)
        if where is not None:
            reason = f"{where}: half of a UTF-16 pair is not a character; write both halves or the character itself"
    if reason is None and too_deep(raw, MAX_RECORD_DEPTH) is not None:
        reason = _TOO_DEEP
    if reason is not None:
        return BadRecord(location, reason)
    if isinstance(value, dict):
        return Record(value, location)
    kind = "null" if value is None else type(value).__name__
    return BadRecord(location, f"record is a JSON {kind}; expected an object {{...}}")


def _jsonl(stream: IO[bytes], name: str, max_record: int) -> Iterator[Record | BadRecord]:
    stream.seek(0)
    seen = False
    lineno = 0
    bounded = BoundedJSON()
    while True:
        raw = stream.readline(max_record + 1)
        if not raw:
            break
        lineno += 1
        location = Location(name, line=lineno)
        if len(raw) > max_record and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the line without keeping it
                raw = stream.readline(CHUNK)
            seen = True
            yield BadRecord(location, f"the line is longer than {max_record} bytes, the limit for one record here")
            continue
        line = _decode_line(raw, name, lineno)
        if lineno == 1:
            line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        seen = True
        if too_deep(line, MAX_RECORD_DEPTH) is not None:  # before the decoder recurses
            yield BadRecord(location, _TOO_DEEP)
            continue
        try:
            value = bounded.decoder.decode(line)
        except json.JSONDecodeError as e:
            bounded.take()
            yield BadRecord(location, f"invalid JSON at column {e.colno}: {e.msg}")
            continue
        yield _value(value, location, bounded, line)
    if not seen:
        raise DataFileError(
            name,
            "file is empty",
            "add records to it (one JSON object per line), or remove it from the list of data files",
            1,
            1,
        )


class _JsonReader:
    """A JSON array of records, or an object holding one list of them, parsed element by element
    from a sliding window of text (`raw_decode` on one element at a time)."""

    def __init__(self, stream: IO[bytes], name: str, max_record: int) -> None:
        self.stream, self.name, self.max_record = stream, name, max_record
        self.decoder = codecs.getincrementaldecoder("utf-8")()
        self.text = ""
        self.pos = 0  # in self.text
        self.line = 1  # line of self.text[0]
        self.eof = False
        self.first = True
        self.bounded = BoundedJSON()

    # ---- the window

    def _more(self) -> bool:
        if self.eof:
            return False
        raw = self.stream.read(CHUNK)
        try:
            chunk = self.decoder.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            line = self.line + self.text.count("\n") + raw[: max(e.start, 0)].count(b"\n")
            raise DataFileError(
                self.name,
                "not valid UTF-8",
                "re-encode the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`",
                line,
            ) from None
        if self.first:
            chunk, self.first = chunk.removeprefix("\ufeff"), False
        self.eof = not raw
        self.line += self.text.count("\n", 0, self.pos)
        self.text = self.text[self.pos :] + chunk
        self.pos = 0
        return True

    def _skip_ws(self) -> str:
        """The next non-blank character ("" at the end of the file)."""
        while True:
            while self.pos < len(self.text) and self.text[self.pos] in _WS:
                self.pos += 1
            if self.pos < len(self.text):
                return self.text[self.pos]
            if not self._more():
                return ""

    def _line_at(self, pos: int) -> int:
        return self.line + self.text.count("\n", 0, pos)

    def _error(self, problem: str, fix: str) -> DataFileError:
        return DataFileError(self.name, problem, fix, self._line_at(self.pos))

    def _decode_value(self) -> tuple[Any, str]:
        """The JSON value at the cursor and its text, reading more text while it may be cut off by the
        window's end (up to `max_record` characters)."""
        while True:
            room = len(self.text) - self.pos <= self.max_record
            try:
                value, end = self.bounded.decoder.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as e:
                at_tail = e.pos >= len(self.text) - 5 or e.msg.startswith("Unterminated string")
                if at_tail and room and self._more():
                    continue
                if at_tail and not self.eof:
                    raise self._error(
                        f"a record larger than {self.max_record} bytes, the limit for one record here",
                        "split the record, or check the file with `runner data validate`",
                    ) from None
                raise DataFileError(
                    self.name,
                    f"invalid JSON: {e.msg}",
                    "fix the JSON syntax at that position (a missing comma or quote is the usual cause)",
                    self._line_at(e.pos),
                ) from None
            except RecursionError:
                raise self._error(
                    f"JSON nested more than {MAX_RECORD_DEPTH} levels deep inside a record",
                    "records are objects of text fields (and turns, tools); flatten this value",
                ) from None
            if end == len(self.text) and room and self._more():  # a number may go on in the next chunk
                self.bounded.take()
                continue
            raw, self.pos = self.text[self.pos : end], end
            return value, raw

    def _expect(self, char: str, what: str) -> None:
        if self._skip_ws() != char:
            found = self.text[self.pos] if self.pos < len(self.text) else "the end of the file"
            raise self._error(
                f"invalid JSON: expected {what}, found {found!r}",
                "fix the JSON syntax at that position (a missing comma or quote is the usual cause)",
            )
        self.pos += 1

    # ---- the layouts

    def records(self) -> Iterator[Record | BadRecord]:
        first = self._skip_ws()
        if not first:
            raise DataFileError(
                self.name, "file is empty", "add records to it, or remove it from the list of data files", 1, 1
            )
        if first == "[":
            yield from self._array()
        elif first == "{":
            yield from self._object()
        else:
            raise self._error(
                "top-level JSON value is not an array; expected an array of records",
                "wrap the records in a JSON array: [ {...}, {...} ]",
            )
        if self._skip_ws():
            raise self._error(
                "invalid JSON: extra data after the records",
                "remove what follows the closing bracket, or write one record per line (JSONL)",
            )

    def _array(self) -> Iterator[Record | BadRecord]:
        start = self._line_at(self.pos)
        self.pos += 1  # '['
        index = 0
        if self._skip_ws() == "]":
            raise DataFileError(self.name, "holds an empty list of records", "add records, or remove the file", start)
        while True:
            self._skip_ws()
            line = self._line_at(self.pos)
            value, raw = self._decode_value()
            yield _value(value, Location(self.name, line=line, index=index), self.bounded, raw)
            index += 1
            after = self._skip_ws()
            self.pos += 1
            if after == "]":
                return
            if after != ",":
                self.pos -= 1
                raise self._error(
                    "invalid JSON: expected ',' or ']' between records",
                    "fix the JSON syntax at that position (a missing comma is the usual cause)",
                )

    def _object(self) -> Iterator[Record | BadRecord]:
        self.pos += 1  # '{'
        lists: list[str] = []
        if self._skip_ws() == "}":
            self.pos += 1
        else:
            while True:
                self._skip_ws()
                key, _ = self._decode_value()
                self.bounded.take()
                self._expect(":", "':'")
                if self._skip_ws() == "[":
                    lists.append(str(key))
                    if len(lists) > 1:
                        break
                    yield from self._array()
                else:
                    self._decode_value()  # another member: read and dropped
                    self.bounded.take()
                after = self._skip_ws()
                self.pos += 1
                if after == "}":
                    break
                if after != ",":
                    self.pos -= 1
                    raise self._error("invalid JSON: expected ',' or '}'", "fix the JSON syntax at that position")
        if len(lists) != 1:
            found = "no list" if not lists else "several lists (keys " + ", ".join(map(repr, lists)) + ")"
            raise DataFileError(
                self.name,
                f"top-level object holds {found}; expected an array of records or an object holding one list",
                'keep the records in a single list, e.g. {"data": [...]}, or split them into separate files',
                1,
                1,
            )
