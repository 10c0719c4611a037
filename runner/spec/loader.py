"""TOML job file -> validated, typed JobSpec, or a JobSpecError listing every problem at once.

Order: the size and shape limits (`runner.spec.limits`, checked by a pre-scan before any parser
recurses), TOML syntax, numbers no schema can judge (nan, inf, integers beyond 64 bits), then the
JSON Schema (the public contract; every violation collected), then the typed model (defaults
applied), then cross-field rules. Each problem is located in the source
with `SourceMap` so users see `jobs/x.toml:12:3: adapter.rnak: unknown key 'rnak' (did you mean 'r'?)`.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import math
import re
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import pydantic

from runner.spec.data_source import is_hub_data
from runner.spec.errors import JobSpecError, SpecIssue, dotted
from runner.spec.limits import INT64_MAX, INT64_MIN, MAX_JOB_FILE_BYTES
from runner.spec.model import JobSpec
from runner.spec.positions import SourceMap
from runner.spec.prescan import prescan
from runner.spec.rules import check_rules
from runner.spec.schema import job_schema
from runner.spec.toml_errors import explain

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "true or false",
    "array": "an array",
    "object": "a table",
}


@dataclass(frozen=True)
class LoadedJob:
    """A valid job with what the pipeline needs to know about its file."""

    spec: JobSpec
    path: Path
    sha256: str
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        assert self.spec.name is not None
        return self.spec.name

    def resolve_path(self, relative: str) -> Path:
        """Data paths in a job file are relative to the file's folder."""
        candidate = Path(relative).expanduser()
        return candidate if candidate.is_absolute() else (self.path.parent / candidate)

    def resolve_data(self, entry: str) -> str:
        """A `data.train` / `data.eval` entry as the data layer reads it: an hf: data set as written,
        a file path resolved against the job file's folder."""
        return entry if is_hub_data(entry) else str(self.resolve_path(entry))


@lru_cache(maxsize=1)
def _validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(job_schema())


def load_job(path: str | Path) -> LoadedJob:
    """Read and validate a job file; raises JobSpecError with every problem found."""
    path = Path(path)
    display = str(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_JOB_FILE_BYTES + 1)  # a larger file is refused unread
    except FileNotFoundError:
        raise JobSpecError(display, [SpecIssue(display, 1, 1, "", "file not found")]) from None
    except IsADirectoryError:
        raise JobSpecError(display, [SpecIssue(display, 1, 1, "", "is a folder, not a job file")]) from None
    except OSError as exc:
        raise JobSpecError(display, [SpecIssue(display, 1, 1, "", f"cannot read the file: {exc.strerror}")]) from None
    return parse_job(data, display=display, default_name=path.stem, path=path)


def read_toml(data: bytes | str, *, display: str) -> tuple[dict[str, Any], str]:
    """Job-file bytes -> (the TOML document, its text), or JobSpecError naming the place and the fix.

    Bounded before anything recurses (see `runner.spec.limits`): size, nesting depth, key and
    item counts and the length of unquoted values are measured by a non-recursive pre-scan, so a
    hostile file costs milliseconds. A UTF-8 byte-order mark at the start is accepted.
    """
    raw_bytes = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    if len(raw_bytes) > MAX_JOB_FILE_BYTES:
        raise JobSpecError(
            display,
            [
                SpecIssue(
                    display,
                    1,
                    1,
                    "",
                    f"the file is larger than {MAX_JOB_FILE_BYTES // 1024} KiB; a job file is a few "
                    "kilobytes of settings: keep data in data files",
                )
            ],
        )
    try:
        text = raw_bytes.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as exc:
        line = raw_bytes[: exc.start].count(b"\n") + 1
        column = exc.start - (raw_bytes.rfind(b"\n", 0, exc.start) + 1) + 1
        raise JobSpecError(
            display, [SpecIssue(display, line, column, "", "the file is not valid UTF-8; save it as UTF-8")]
        ) from None
    shape = prescan(text)
    if shape.problem is not None:
        line, column = _position(text, shape.problem[0])
        raise JobSpecError(display, [SpecIssue(display, line, column, "", shape.problem[1])])
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        line, column, message = explain(text, exc, shape)
        raise JobSpecError(display, [SpecIssue(display, line, column, "", message)]) from None
    except (RecursionError, ValueError) as exc:  # the pre-scan should make this unreachable
        raise JobSpecError(display, [SpecIssue(display, 1, 1, "", f"cannot parse the file: {exc}")]) from None


def parse_job(data: bytes | str, *, display: str, default_name: str, path: Path | None = None) -> LoadedJob:
    """Validate job text; `display` names the file in messages, `default_name` is the job name fallback."""
    raw_bytes = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    raw, text = read_toml(raw_bytes, display=display)
    positions = SourceMap(text)
    # Values no schema keyword can judge (nan compares false with every bound, and an integer
    # beyond 64 bits is not TOML) are reported first and removed, so they hide no other problem.
    odd = odd_numbers(raw)
    if odd:  # an array loses the whole array, so no later index shifts
        raw = _without(raw, [p[: next((i for i in range(len(p)) if isinstance(p[i], int)), len(p))] for p, _ in odd])
    located = [_schema_issue(display, positions, error) for error in _validator().iter_errors(raw)]
    issues = [SpecIssue(display, *_at(positions, p), dotted(p), m) for p, m in odd] + [issue for issue, _ in located]
    spec: JobSpec | None = None
    try:
        # With schema errors, the rules still run on the file minus its bad values, so a user
        # sees every problem in one pass rather than fixing them in rounds.
        prune_paths = [path for _, path in located]
        spec = JobSpec.model_validate(_without(raw, prune_paths) if prune_paths else raw)
    except _CannotPrune:
        pass
    except pydantic.ValidationError as exc:  # the schema should have caught it; never leak pydantic
        if not issues:
            issues = [_pydantic_issue(display, positions, error) for error in exc.errors()]
    if spec is not None:
        if spec.name is None:
            spec = spec.model_copy(update={"name": default_name})
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", default_name):
                issues.append(
                    SpecIssue(
                        display,
                        1,
                        1,
                        "name",
                        f"the file name '{default_name}' is not a valid job name; "
                        "set name = \"...\" (letters, digits, '.', '_', '-')",
                    )
                )
        for rule_path, message in check_rules(spec):
            if len(rule_path) == 3 and isinstance(rule_path[2], int) and not positions.has(rule_path):
                rule_path = rule_path[:2]  # `train = "x.txt"`: one item written as a plain value
            where = positions.value(rule_path) if positions.has(rule_path) else positions.key(rule_path)
            issues.append(SpecIssue(display, where.line, where.column, dotted(rule_path), message))
    if issues:
        raise JobSpecError(display, sorted(set(issues)))
    assert spec is not None
    return LoadedJob(spec=spec, path=path or Path(display), sha256=hashlib.sha256(raw_bytes).hexdigest(), raw=raw)


def odd_numbers(raw: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """(path, message) of every non-finite float and every integer beyond 64 bits in a document."""
    found: list[tuple[tuple[str | int, ...], str]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), raw)]
    while stack:  # iterative: depth is bounded by the pre-scan, but a walk need not rely on it
        path, value = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            found.append(
                (path, f"{value} is not a finite number; write a number such as 0.1 (nan and inf are not settings)")
            )
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            found.append((path, f"integer {value} is out of range: TOML integers are 64-bit (at most {INT64_MAX})"))
        elif isinstance(value, dict):
            stack.extend(((*path, key), item) for key, item in value.items())
        elif isinstance(value, list):
            stack.extend(((*path, index), item) for index, item in enumerate(value))
    return sorted(found, key=lambda found_item: str(found_item[0]))


def _at(positions: SourceMap, path: tuple[str | int, ...]) -> tuple[int, int]:
    where = positions.value(path)
    return where.line, where.column


def _position(text: str, offset: int) -> tuple[int, int]:
    line = text.count("\n", 0, offset) + 1
    return line, offset - (text.rfind("\n", 0, offset) + 1) + 1


class _CannotPrune(Exception):
    """A missing required key: no partial spec can be built, so rules wait for the next pass."""


def _without(raw: dict[str, Any], paths: list[tuple[str | int, ...] | None]) -> dict[str, Any]:
    """A deep copy of `raw` with the values at `paths` removed (defaults then fill them in)."""

    present = [path for path in paths if path]
    if len(present) < len(paths):
        raise _CannotPrune
    pruned = copy.deepcopy(raw)
    # deepest and highest list index first, so earlier removals never shift later paths
    for path in sorted(present, key=lambda p: (len(p), p[-1] if isinstance(p[-1], int) else -1), reverse=True):
        node: Any = pruned
        try:
            for part in path[:-1]:
                node = node[part]
            if isinstance(node, dict):
                node.pop(path[-1], None)
            elif isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
                del node[path[-1]]
        except (KeyError, IndexError, TypeError):
            raise _CannotPrune from None
    return pruned


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return f"an array of {len(value)}"
    return f"{type(value).__name__} {value}"


def _expected_type(schema_type: object) -> str:
    """`type` of a JSON Schema: a name or a list of names."""
    if isinstance(schema_type, list):
        if set(schema_type) == {"string", "array"}:
            return "a string or an array of strings"
        return " or ".join(_TYPE_NAMES.get(str(t), str(t)) for t in schema_type)
    return _TYPE_NAMES.get(str(schema_type), str(schema_type))


def _did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if not close:
        # short keys such as `r` are too short for a ratio match; a typo usually keeps the start
        close = sorted((o for o in options if word.startswith(o) or o.startswith(word)), key=len, reverse=True)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _schema_issue(
    display: str, positions: SourceMap, error: jsonschema.ValidationError
) -> tuple[SpecIssue, tuple[str | int, ...] | None]:
    """The issue, and the path to drop to get a file without it (None when nothing can be dropped)."""
    path = tuple(error.absolute_path)
    prune_path: tuple[str | int, ...] | None = ()
    schema = error.schema if isinstance(error.schema, dict) else {}
    instance = error.instance
    at_key = False
    validator = "propertyNames" if "propertyNames" in error.relative_schema_path else error.validator
    match validator:
        case "additionalProperties":
            known = sorted(schema.get("properties", {}))
            extras = [key for key in (instance if isinstance(instance, dict) else {}) if key not in known]
            key = extras[0] if extras else "?"
            path = (*path, key)
            at_key = True
            message = f"unknown key '{key}'{_did_you_mean(key, known)}"
            if known and not _did_you_mean(key, known):
                message += f"; expected one of: {', '.join(known)}"
        case "propertyNames":
            # jsonschema reports the offending key as the instance, at the parent table's path
            bad = str(instance)
            path = (*path, bad)
            at_key = True
            options = [str(o) for o in schema.get("enum") or []]
            if options:
                hint = _did_you_mean(bad, options)
                message = f"unknown key '{bad}'{hint}" + ("" if hint else f"; expected one of: {', '.join(options)}")
            else:
                message = (
                    f"invalid key '{bad}': expected {schema.get('x-hint') or 'a name of letters, digits, ., _ or -'}"
                )
        case "required":
            missing = error.message.split("'")[1] if "'" in error.message else error.message
            message = f"missing required key '{missing}'"
            at_key = True
            prune_path = None
        case "type":
            message = f"expected {_expected_type(error.validator_value)}, found {_describe(instance)}"
        case "enum":
            options = (
                [str(option) for option in error.validator_value] if isinstance(error.validator_value, list) else []
            )
            hint = _did_you_mean(instance, options) if isinstance(instance, str) else ""
            message = f"expected one of {', '.join(repr(o) for o in options)}, found {_describe(instance)}{hint}"
        case "pattern":
            hint = schema.get("x-hint") or f"a string matching {error.validator_value}"
            message = f"expected {hint}, found {_describe(instance)}"
        case "minimum":
            message = f"expected a value >= {error.validator_value}, found {_describe(instance)}"
        case "maximum":
            message = f"expected a value <= {error.validator_value}, found {_describe(instance)}"
        case "exclusiveMinimum":
            message = f"expected a value > {error.validator_value}, found {_describe(instance)}"
        case "exclusiveMaximum":
            message = f"expected a value < {error.validator_value}, found {_describe(instance)}"
        case "minLength":
            message = f"expected a non-empty string, found {_describe(instance)}"
        case "minItems":
            message = f"expected at least {error.validator_value} item(s), found {_describe(instance)}"
        case _:
            message = error.message
    where = positions.key(path) if at_key else positions.value(path)
    if prune_path is not None:
        prune_path = path
    return SpecIssue(display, where.line, where.column, dotted(path), message), prune_path


def _pydantic_issue(display: str, positions: SourceMap, error: Any) -> SpecIssue:
    path = tuple(error.get("loc", ()))
    where = positions.value(path)
    return SpecIssue(display, where.line, where.column, dotted(path), str(error.get("msg", "invalid value")))


def find_job_files(paths: list[str | Path]) -> list[Path]:
    """Expand folders into their *.toml files (recursively, sorted) and keep files as given."""
    found: list[Path] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            found.extend(sorted(p for p in item.rglob("*.toml") if p.is_file()))
        else:
            found.append(item)
    return found
