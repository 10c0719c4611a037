"""Read data files of every kind into records: the one entry point that picks a reader.

`read_file` picks the reader by the file's kind: ``hf:`` data sets (runner.data.hub), plain text
``.txt`` (runner.data.plaintext), CSV / TSV / Parquet (runner.data.tables); everything else is
JSON or JSONL (runner.data.records). The readers sit below this module and import only
runner.data.records, so no reader imports another through here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.data.plaintext import read_text_file
from runner.data.records import ReadResult, read_json_file
from runner.data.tables import read_table
from runner.fsutil import digest_file


@dataclass(frozen=True)
class ReadOptions:
    """How files without structure of their own are cut into records (data.text_unit, data.csv_header)."""

    text_unit: str = "paragraph"
    csv_header: str = "auto"


def read_records(paths: Iterable[str | Path], options: ReadOptions | None = None) -> ReadResult:
    """Read several files (or hf: data sets) and merge their records in the order given."""
    result = ReadResult()
    for path in paths:
        result.extend(read_file(path, options))
    return result


def read_file(path: str | Path, options: ReadOptions | None = None) -> ReadResult:
    """Read one data file, or one hf: data set, with the reader its kind needs."""
    options = options or ReadOptions()
    name = str(path)
    suffix = Path(name).suffix.lower()
    if name.startswith("hf:"):
        from runner.data.hub import read_hub  # lazy: the Hub libraries load only for hf: data sets

        return read_hub(name)
    if suffix == ".txt":
        return read_text_file(path, unit=options.text_unit)
    if suffix in (".csv", ".tsv", ".parquet"):
        return read_table(path, header=options.csv_header)
    return read_json_file(path)


def digest_source(digest: Any, source: str | Path) -> None:
    """Feed a data file's bytes (or, for an hf: data set, its cached Arrow files) to `digest`."""
    if str(source).startswith("hf:"):
        from runner.data.hub import hub_fingerprint  # lazy, as in read_file

        digest.update(hub_fingerprint(str(source)).encode())
    else:
        digest_file(digest, Path(source))
