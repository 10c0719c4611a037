"""Read CSV, TSV and Parquet data files into records, through pyarrow.

- CSV (``.csv``): the delimiter is sniffed from the first lines (``,`` ``;`` ``|`` or tab); quoted
  fields may hold delimiters and newlines. Every cell is read as a string, as written: a CSV has no
  types, and an answer column of "42"s must stay text (scores are parsed where they are used).
- TSV (``.tsv``, or a ``.csv`` whose delimiter is a tab): tab-separated, no quoting (the TSV
  convention: a quote is an ordinary character), so the STS Benchmark's raw quotes read as written.
- The first row is a header when every cell is a distinct, non-numeric name (``data.csv_header =
  "auto"``), or as set; without one the columns are named ``column1``, ``column2``, ... up to the
  widest row, and a shorter row has empty cells at its end (the STS Benchmark's rows have 7 or 9).
- Parquet (``.parquet``): the columns keep their types (lists of messages stay lists of objects).

A row with more or fewer cells than the header is a bad record located by its row (the header is
row 1, as in a spreadsheet); a file that cannot be parsed at all raises `DataFileError`. Floats
that are NaN or infinite make their row bad, as in JSON.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any, Literal

from runner.data.records import DataFileError, ReadResult, Record, read_text
from runner.data.report import BadRecord, Location

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
_DELIMITERS = ",\t;|"
_NAME = re.compile(r"^[A-Za-z_][\w .-]{0,63}$")
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def read_table(path: str | Path, *, header: str = "auto") -> ReadResult:
    """One CSV/TSV/Parquet file -> records located by row."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        return read_parquet(path)
    return read_csv(path, header=header)


def read_csv(path: Path, *, header: str = "auto") -> ReadResult:
    import pyarrow as pa
    import pyarrow.csv as pcsv

    name = str(path)
    text = read_text(path).lstrip("\r\n")  # rows are the file's non-empty lines (records), the first is row 1
    if not text.strip():
        raise DataFileError(name, "file is empty", "add rows to it, or remove it from the list of data files", 1, 1)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else _sniff_delimiter(text)
    quoted = delimiter != "\t"
    quoting: Literal[0, 1, 2, 3] = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
    try:
        first = next(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting))
    except csv.Error as exc:
        raise DataFileError(
            name,
            f"cannot be read as {'CSV' if quoted else 'TSV'}: {exc}",
            "check the quoting and the line ends of the first row",
            1,
            1,
        ) from None
    has_header = _is_header(first) if header == "auto" else header == "yes"
    if has_header:
        duplicates = sorted({c for c in first if first.count(c) > 1})
        if duplicates or any(not c.strip() for c in first):
            problem = f"duplicate column names {duplicates}" if duplicates else "an empty column name"
            raise DataFileError(name, f"the header row has {problem}", "give every column its own name", 1, 1)
        names = [c.strip() for c in first]
    else:  # as wide as the widest row (a second pass, C-speed): no cell is left without a column
        try:
            width = max(
                len(cells) for cells in csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
            )
        except csv.Error as exc:
            raise DataFileError(
                name, f"cannot be read as {'CSV' if quoted else 'TSV'}: {exc}", "check the quoting of the file"
            ) from None
        names = [f"column{i}" for i in range(1, width + 1)]
    invalid: list[BadRecord] = []
    short: list[tuple[int, dict[str, str]]] = []

    def on_invalid(row: Any) -> str:
        if not has_header and row.actual_columns < row.expected_columns:  # padded with empty cells
            try:
                cells = next(csv.reader(io.StringIO(row.text, newline=""), delimiter=delimiter, quoting=quoting), [])
            except csv.Error:
                cells = []
            short.append((row.number, dict(zip(names, [*cells, *[""] * (len(names) - len(cells))], strict=False))))
            return "skip"
        invalid.append(
            BadRecord(
                Location(name, row=row.number),
                (
                    f"has {row.actual_columns} cells; the {'header names' if has_header else 'first row has'} "
                    f"{row.expected_columns} (a stray delimiter{' or an unclosed quote' if quoted else ''}?)"
                ),
            )
        )
        return "skip"

    try:
        table = pcsv.read_csv(
            io.BytesIO(text.encode("utf-8")),
            read_options=pcsv.ReadOptions(column_names=names, skip_rows=1 if has_header else 0, use_threads=False),
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if quoted else False,
                newlines_in_values=quoted,
                invalid_row_handler=on_invalid,
            ),
            convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowException) as exc:
        raise DataFileError(
            name,
            f"cannot be read as {'CSV' if quoted else 'TSV'}: {exc}",
            "check the quoting and the delimiter of the file",
        ) from None
    rows = _row_numbers(1 + has_header, {b.location.row for b in invalid} | {number for number, _ in short})
    kept = [*zip(rows, table.to_pylist(), strict=False), *short]
    result = ReadResult(bad=invalid)
    for number, values in sorted(kept, key=lambda item: item[0]):
        result.records.append(Record(values, Location(name, row=number)))
    if not result.records and not result.bad:
        raise DataFileError(name, "file holds a header and no rows", "add rows below the header", 1, 1)
    return result


def read_parquet(path: Path) -> ReadResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    name = str(path)
    if not path.is_file():
        raise DataFileError(
            name,
            "file not found" if not path.exists() else "is not a file",
            f"check the path (resolved to {path.resolve()})",
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFileError(
            name, f"cannot be read as Parquet: {exc}", "regenerate the file, or export it as JSONL"
        ) from None
    if table.num_rows == 0:
        raise DataFileError(name, "holds no rows", "add rows, or remove the file")
    result = ReadResult()
    for index, values in enumerate(table.to_pylist()):
        location = Location(name, row=index + 1)
        reason = non_finite(values)
        if reason is not None:
            result.bad.append(BadRecord(location, reason))
        else:
            result.records.append(Record(values, location))
    return result


def non_finite(value: Any, where: str = "") -> str | None:
    """Where a decoded row holds NaN or an infinity (refused as in JSON records), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or 'a value'} is {value}; numbers must be finite (write null or a number)"
    if isinstance(value, dict):
        for key, inner in value.items():
            found = non_finite(inner, f"{where}.{key}" if where else repr(key))
            if found:
                return found
    elif isinstance(value, list):
        for i, inner in enumerate(value):
            found = non_finite(inner, f"{where}[{i}]")
            if found:
                return found
    return None


def _sniff_delimiter(text: str) -> str:
    sample = text[:16384]
    try:
        return csv.Sniffer().sniff(sample, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        return ","


def _is_header(cells: list[str]) -> bool:
    """A header names columns: every cell a short, distinct name (at most three words, no punctuation
    but '.', '_', '-'), none of them a number."""
    stripped = [c.strip() for c in cells]
    return len(set(stripped)) == len(stripped) and all(
        _NAME.match(c) and not _NUMBER.match(c) and len(c.split()) <= 3 for c in stripped
    )


def _row_numbers(first: int, skipped: set[int | None]) -> Any:
    """File row numbers of the rows pyarrow kept: counting from `first`, past the skipped ones."""
    number = first
    while True:
        while number in skipped:
            number += 1
        yield number
        number += 1
