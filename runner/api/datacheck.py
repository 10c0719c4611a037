"""`POST /datasets/validate`: a data file checked as a job would read it, one record at a time.

The same format detection (on the first records), field mapping and per-record checks as
`runner data validate` (`runner.data.kinds`, `runner.data.formats`, `runner.data.embedding`), over
`runner.data.stream.iter_records`: the memory of a check is one record, the detection sample
and the listed bad records (`--api-max-errors`), whatever the file's size. Plain text, CSV, TSV
and Parquet go through the command line's readers, which read a file whole (bounded by
`--api-max-table`); preference data is detected and checked as a preference job reads it. An upload is read
from the spooled file the multipart parser wrote to disk, under the name the client gave it:
answers never show a server-side temporary path. Image paths of image-text records resolve
under `image_root`, which must lie under a data root (default: the file's folder, or for an
upload the first data root), and are refused before any file is looked at when they lead out
of it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any, BinaryIO, get_args

from runner.api.confine import BadPath, OutsideRoots, confine
from runner.api.errors import ApiError, cut
from runner.api.limits import Limits
from runner.api.settings import ApiSettings
from runner.data.plaintext import TEXT_SUFFIXES
from runner.data.records import DataFileError, Record
from runner.data.report import BadRecord, DataError
from runner.data.stream import iter_records
from runner.data.tables import TABLE_SUFFIXES
from runner.spec.data_section import CANONICAL_FIELDS, DataFormat

__all__ = ["DATA_FORMATS", "Source", "ValidateRequest", "check", "parse_json_request", "path_sources"]

DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
WHOLE_FILE_SUFFIXES = TEXT_SUFFIXES + TABLE_SUFFIXES  # read whole by their readers (pyarrow, paragraphs)
SAMPLE_BYTES = 2 << 20  # the detection sample stops after this much of the input (and at DETECT_SAMPLE records)
_EXAMPLE = '{"path": "data/train.jsonl", "format": "auto"}'


def _open_binary(path: Path) -> BinaryIO:
    return path.open("rb")


@dataclass(frozen=True)
class Source:
    """One file to check: the name answers show, how to open it, its suffix (JSON or JSONL)."""

    name: str
    open: Callable[[], AbstractContextManager[IO[bytes]]]
    suffix: str
    folder: Path | None = None  # the default image root, for a file on the server


@dataclass(frozen=True)
class ValidateRequest:
    paths: list[str]
    data_format: str = "auto"
    fields: dict[str, str] | None = None
    image_root: str | None = None


def parse_json(data: bytes, what: str) -> Any:
    """JSON from a request; 422 (never a 500) for broken, non-UTF-8 or absurdly nested text."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ApiError(422, f"{what} is nested too deeply (hundreds of levels); send a flat JSON object") from None
    except ValueError as exc:
        raise ApiError(422, f"{what} is not JSON: {cut(str(exc), 200)}") from None


def parse_json_request(data: bytes) -> ValidateRequest:
    payload = parse_json(data, "the body")
    if not isinstance(payload, dict):
        raise ApiError(422, f"send a JSON object: {_EXAMPLE}")
    unknown = sorted(set(payload) - {"path", "format", "fields", "image_root"})
    if unknown:
        raise ApiError(
            422, f"unknown key(s) {cut(', '.join(map(repr, unknown)), 200)}; expected path, format, fields, image_root"
        )
    path = payload.get("path")
    paths = [path] if isinstance(path, str) else path
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise ApiError(422, '"path" must be a string or a list of strings')
    data_format, image_root = payload.get("format", "auto"), payload.get("image_root")
    if not isinstance(data_format, str):
        raise ApiError(422, '"format" must be a string')
    if image_root is not None and not isinstance(image_root, str):
        raise ApiError(422, '"image_root" must be a string: a folder under a data root')
    return ValidateRequest(paths, data_format, _fields(payload.get("fields")), image_root)


def parse_form_fields(raw: str | None) -> dict[str, str] | None:
    return _fields(parse_json(raw.encode("utf-8", "replace"), "'fields'") if raw else None)


def _fields(fields: Any) -> dict[str, str] | None:
    if fields is None:
        return None
    if not isinstance(fields, dict):
        raise ApiError(422, '\'fields\' must be a JSON object: {"instruction": "question"}')
    for key, value in fields.items():
        if key not in CANONICAL_FIELDS or not isinstance(value, str) or not value:
            raise ApiError(
                422,
                cut(
                    f"fields: {key!r} -> {value!r} is not a mapping of a canonical field "
                    f"({', '.join(CANONICAL_FIELDS)}) to a field name of your records"
                ),
            )
    return dict(fields)


def _check_format(data_format: str) -> None:
    if data_format not in DATA_FORMATS:
        raise ApiError(422, f"format {cut(repr(data_format), 100)} is not one of: {', '.join(DATA_FORMATS)}")


def _under_roots(settings: ApiSettings, given: str, what: str) -> Path:
    candidate = Path(given)
    if not candidate.is_absolute():
        candidate = settings.data_roots[0] / candidate
    try:
        return confine(candidate, settings.data_roots, shown=cut(given, 200))
    except BadPath as exc:
        raise ApiError(422, f"{what}: {exc}") from None
    except OutsideRoots as exc:
        raise ApiError(403, str(exc)) from None


def path_sources(settings: ApiSettings, paths: list[str]) -> list[Source]:
    """Files on the server, relative to the first data root; 403 outside the roots (decided on the
    path alone), 404 / 422 inside them."""
    if not paths:
        raise ApiError(422, f'name at least one data file in "path": {_EXAMPLE}')
    if len(paths) > settings.limits.max_files:
        raise ApiError(
            422,
            f'"path" names {len(paths)} files; one request may name at most '
            f"{settings.limits.max_files} (--api-max-files)",
        )
    sources = []
    for given in paths:
        resolved = _under_roots(settings, given, "path")
        try:
            if not resolved.exists():
                raise ApiError(404, f"{cut(given, 200)}: no such file under {settings.data_roots[0]}")
            if not resolved.is_file():
                raise ApiError(422, f"{cut(given, 200)} is not a file; name a .json or .jsonl data file")
        except OSError as exc:
            raise ApiError(422, f"{cut(given, 200)}: cannot be read ({exc.strerror})") from None
        sources.append(Source(given, partial(_open_binary, resolved), resolved.suffix, resolved.parent))
    return sources


def upload_name(filename: str | None) -> str:
    """The client's file name, reduced to a safe base name (it is only ever shown, never opened)."""
    base = Path((filename or "").replace("\\", "/").replace("\x00", "")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return cleaned[:100] or "upload.jsonl"


def check(settings: ApiSettings, sources: list[Source], request: ValidateRequest) -> dict[str, Any]:
    """The report: detected format, counts, the first bad records with their locations."""
    _check_format(request.data_format)
    limits = settings.limits
    if request.image_root is not None:
        image_root: Path | None = _under_roots(settings, request.image_root, "image_root")
    else:
        image_root = None if all(s.folder for s in sources) else settings.data_roots[0]
    sample = [r.data for r in _records(sources, limits, sample=True) if not isinstance(r, BadRecord)]
    checker, fmt, reason = _checker(request, sample, image_root)
    total = ok = 0
    bad: list[dict[str, Any]] = []
    bad_count = 0
    for source, item in _records_with_source(sources, limits):
        total += 1
        problem = item.reason if isinstance(item, BadRecord) else checker(item.data, source)
        if problem is None:
            ok += 1
            continue
        bad_count += 1
        if len(bad) < limits.max_errors:
            location = item.location
            bad.append(
                {
                    "file": location.file,
                    "line": location.line,
                    "index": location.index,
                    "reason": cut(problem),
                    "location": str(location),
                }
            )
    return {
        "files": [s.name for s in sources],
        "format": fmt,
        "format_reason": reason,
        "records": total,
        "records_ok": ok,
        "bad_count": bad_count,
        "bad_records": bad,
        "bad_records_truncated": bad_count > len(bad),
        "image_root": str(image_root) if image_root is not None else None,
        "valid": bad_count == 0,
    }


def _checker(
    request: ValidateRequest, sample: list[dict[str, Any]], image_root: Path | None
) -> tuple[Callable[[Mapping[str, Any], Source], str | None], str | None, str | None]:
    """The per-record check of the format (detected on the sample when "auto")."""
    from runner.data import embedding, formats, kinds

    fields = dict(request.fields or {})
    try:
        if request.data_format in embedding.FORMATS:
            fmt, reason = request.data_format, "given"

            def embedded(data: Mapping[str, Any], source: Source) -> str | None:
                root = image_root or source.folder or Path(".")
                try:
                    embedding.to_example(data, fmt, fields=fields, image_root=root, tasks=None)
                except formats.RecordError as exc:
                    return str(exc)
                return None

            return embedded, fmt, reason
        if not sample:  # no record could be read: the bad records say why
            return (lambda data, source: None), None, "no readable record to detect the format from"
        preference = _preference_checker(request.data_format, sample, fields or None)
        if preference is not None:
            return preference
        if request.data_format == "auto":
            fmt, reason = kinds.detect_format(sample, fields or None)
        else:
            fmt, reason = request.data_format, "given"
        resolved = formats.resolve_fields(fmt, sample, fields or None)
    except (DataError, ValueError) as exc:
        raise ApiError(422, cut(str(exc))) from None

    def causal(data: Mapping[str, Any], source: Source) -> str | None:
        try:
            formats.normalize_record(data, fmt, resolved)
        except formats.RecordError as exc:
            return str(exc)
        return None

    return causal, fmt, reason


def _preference_checker(
    data_format: str, sample: list[dict[str, Any]], fields: dict[str, str] | None
) -> tuple[Callable[[Mapping[str, Any], Source], str | None], str, str] | None:
    """Preference data (given, or detected as `runner data validate` detects it): each pair normalised
    as a preference job reads it; None for any other data."""
    from runner.data import preference

    if data_format == "auto" and preference.preference_vote(sample, fields) is None:
        return None
    if data_format != "auto" and data_format not in preference.FORMATS:
        return None
    fmt, reason = preference.detect_format(sample, fields) if data_format == "auto" else (data_format, "given")
    resolved = preference.resolve_preference_fields(fmt, sample, fields)

    def pair(data: Mapping[str, Any], source: Source) -> str | None:
        try:
            preference.normalize_preference(data, fmt, resolved)
        except DataError as exc:
            return str(exc)
        return None

    return pair, fmt, reason


def _records(sources: list[Source], limits: Limits, *, sample: bool = False) -> Iterator[Any]:
    for _, item in _records_with_source(sources, limits, sample=sample):
        yield item


def _records_with_source(
    sources: list[Source], limits: Limits, *, sample: bool = False
) -> Iterator[tuple[Source, Any]]:
    """Every record of every source in order; with `sample`, only the detection sample."""
    from runner.data.detection import DETECT_SAMPLE

    taken = 0
    for source in sources:
        try:
            with source.open() as stream:
                whole = source.suffix.lower() in WHOLE_FILE_SUFFIXES
                items = (
                    _whole_file(stream, source.name, limits.max_table)
                    if whole
                    else iter_records(stream, source.name, suffix=source.suffix, max_record=limits.max_record)
                )
                for item in items:
                    yield source, item
                    taken += not isinstance(item, BadRecord)
                    if sample and (taken >= DETECT_SAMPLE or (not whole and stream.tell() > SAMPLE_BYTES)):
                        return
        except DataError as exc:
            raise ApiError(422, cut(str(exc))) from None
        except OSError as exc:
            raise ApiError(422, f"{source.name}: cannot be read ({exc.strerror})") from None


def _whole_file(stream: IO[bytes], name: str, limit: int) -> list[Record | BadRecord]:
    """A plain-text, CSV, TSV or Parquet file read by the command line's own readers, which take a
    file and read it whole (pyarrow, the paragraph splitter): so its size is bounded (--api-max-table).
    It is copied into a private folder under a fixed name, and every location and message of the
    answer names it as the request did, never by the server's temporary path."""
    from runner.data.reading import read_file

    size = stream.seek(0, os.SEEK_END)
    stream.seek(0)
    if size > limit:
        raise ApiError(
            413,
            f"{cut(name, 200)} is {size} bytes; a plain-text, CSV, TSV or Parquet file is read "
            f"whole, and this server checks at most {limit} bytes of one (--api-max-table); check "
            "a larger one with `runner data validate`, or send it as JSONL",
        )
    with tempfile.TemporaryDirectory(prefix="runner-api-check-") as folder:
        path = Path(folder) / f"data{Path(name).suffix.lower()}"
        with open(path, "wb") as copy:
            while chunk := stream.read(1 << 20):
                copy.write(chunk)
        try:
            read = read_file(path)
        except DataFileError as exc:
            raise DataFileError(
                name, exc.problem.replace(str(path), name), exc.fix.replace(str(path), name), exc.line, exc.column
            ) from None
    items: list[Record | BadRecord] = [*read.records, *read.bad]
    items.sort(key=lambda item: (item.location.row or 0, item.location.line or 0, item.location.index or 0))
    return [
        Record(item.data, dataclasses.replace(item.location, file=name))
        if isinstance(item, Record)
        else BadRecord(dataclasses.replace(item.location, file=name), item.reason)
        for item in items
    ]
