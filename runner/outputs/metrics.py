"""``metrics.jsonl``: one JSON object per logged step, append-only.

It is a log, not a database: each line is written with a single unbuffered
``write`` (so it is on its way to the OS when ``append`` returns) but not
fsynced.  A crash can therefore leave a torn last line; readers ignore it and
the next writer trims it before appending, so the file stays valid JSONL
across resumes.

Non-finite floats (a NaN loss is exactly what you want to see) are written as
Python's ``NaN``/``Infinity`` tokens, which ``json.loads`` reads back.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from runner.fsutil import atomic_write_text

__all__ = ["MetricsFormatError", "MetricsLog"]


class MetricsFormatError(ValueError):
    """A line other than the last one is not a JSON object: real corruption, not a crash."""


def _parse_line(line: str) -> dict[str, Any] | None:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _split_records(text: str, path: Path) -> list[dict[str, Any]]:
    """Parse JSONL; drop an unparseable *unterminated* last line (a torn write)."""
    lines = text.split("\n")
    tail = lines.pop()  # text after the last newline: "" if the file ends cleanly
    records: list[dict[str, Any]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        obj = _parse_line(line)
        if obj is None:
            raise MetricsFormatError(f"{path}:{lineno}: not a JSON object: {line[:80]!r}")
        records.append(obj)
    if tail.strip():
        obj = _parse_line(tail)
        if obj is not None:  # complete record whose newline never made it
            records.append(obj)
    return records


def _json_default(value: Any) -> Any:
    """numpy/torch scalars (anything with ``.item()``) become Python numbers; duck-typed, no torch import."""
    item = getattr(value, "item", None)
    if callable(item):
        return item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _step_of(record: Mapping[str, Any]) -> int | None:
    step = record.get("step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


class MetricsLog:
    """Append and read a run's ``metrics.jsonl``.

    Use as a context manager (or call :meth:`close`) in the writer; readers
    need no cleanup.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._fh: BinaryIO | None = None

    def __repr__(self) -> str:
        return f"MetricsLog({str(self.path)!r})"

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def _repair_tail(self) -> None:
        """Make the file end with a newline so our first line is not glued to a torn one.

        A parseable tail (record written, newline lost) is kept; a torn one is cut.
        """
        try:
            with open(self.path, "rb+") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                if size == 0:
                    return
                f.seek(size - 1)
                if f.read(1) == b"\n":
                    return
                # Find the start of the last line without reading the whole log.
                pos, chunk = size, 1 << 16
                start = 0
                while pos > 0:
                    pos = max(0, pos - chunk)
                    f.seek(pos)
                    buf = f.read(min(chunk, size - pos))
                    nl = buf.rfind(b"\n")
                    if nl >= 0:
                        start = pos + nl + 1
                        break
                f.seek(start)
                tail = f.read().decode("utf-8", errors="replace")
                if _parse_line(tail) is not None:
                    f.seek(size)
                    f.write(b"\n")
                else:
                    f.truncate(start)
        except FileNotFoundError:
            return

    def _handle(self) -> BinaryIO:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._repair_tail()
            self._fh = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held for the log's life, closed by close()
        return self._fh

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line.

        Serialised before anything is written, so an unserialisable record
        raises without leaving a partial line.
        """
        if not isinstance(record, Mapping):
            raise TypeError(f"a metrics record must be a mapping, got {type(record).__name__}")
        line = json.dumps(dict(record), ensure_ascii=False, separators=(",", ":"), default=_json_default)
        data = (line + "\n").encode()
        fh = self._handle()
        view = memoryview(data)
        while view:
            written = fh.write(view)
            view = view[written or 0 :]

    def read(self, since_step: int | None = None) -> list[dict[str, Any]]:
        """All records in file order; with ``since_step``, only those with ``step > since_step``.

        ``since_step`` is for tailing ("what is new after the step I showed"),
        so records without an integer ``step`` are left out when it is given.
        A missing file reads as no records.
        """
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []
        records = _split_records(text, self.path)
        if since_step is None:
            return records
        return [r for r in records if (s := _step_of(r)) is not None and s > since_step]

    def last_step(self) -> int | None:
        """Highest ``step`` logged so far (None if none): where a resumed run's log continues."""
        steps = [s for r in self.read() if (s := _step_of(r)) is not None]
        return max(steps) if steps else None

    def rewind_to(self, step: int) -> int:
        """Drop records with ``step > step``; returns how many were dropped.

        For resuming from a checkpoint older than the log's end: those steps
        will be trained (and logged) again, and duplicates would make the
        curve go back in time.  Rewrites the file atomically.
        """
        self.close()
        records = self.read()
        kept = [r for r in records if (s := _step_of(r)) is None or s <= step]
        dropped = len(records) - len(kept)
        if dropped:
            text = "".join(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n" for r in kept)
            atomic_write_text(self.path, text)
        return dropped
