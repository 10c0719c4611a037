"""Whatever a data file holds, the reader answers with records it can vouch for or its own errors.

Generated files mix ordinary records with hostile ones: nesting thousands deep, integers of
thousands of digits, NaN / Infinity / overflowing numbers, lone surrogate escapes. The reader must
never raise anything but `DataFileError`, and every record it returns must be usable downstream:
an object, nested within the limit, every string encodable as UTF-8, every number finite and short.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.data.reading import read_file
from runner.data.records import DataFileError
from runner.spec.limits import MAX_RECORD_DEPTH, MAX_RECORD_INT_DIGITS

plain = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8,
)


@st.composite
def hostile_value(draw: st.DrawFn) -> str:
    """JSON text of one value that a record must not hold (or may, when it is harmless)."""
    kind = draw(st.sampled_from(["deep", "int", "constant", "overflow", "surrogate", "pair"]))
    if kind == "deep":
        depth = draw(st.integers(1, 5_000))
        brackets = draw(st.lists(st.sampled_from(["[", '{"k": ']), min_size=depth, max_size=depth))
        return "".join(brackets) + "1" + "".join("]" if b == "[" else "}" for b in reversed(brackets))
    if kind == "int":
        return draw(st.sampled_from(["", "-"])) + "9" * draw(st.integers(1, 6_000))
    if kind == "constant":
        return draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
    if kind == "overflow":
        return f"{draw(st.integers(1, 9))}e{draw(st.integers(309, 5_000))}"
    if kind == "surrogate":
        return f'"a\\u{draw(st.integers(0xD800, 0xDFFF)):04x}b"'
    return '"\\ud83d\\ude00"'  # a valid pair: one character


@st.composite
def record_lines(draw: st.DrawFn) -> list[str]:
    lines = []
    for _ in range(draw(st.integers(1, 6))):
        record: dict[str, Any] = draw(st.dictionaries(st.text(max_size=4), plain, max_size=3))
        text = json.dumps(record)
        if draw(st.booleans()):
            value = draw(hostile_value())
            text = '{"x": ' + value + (", " + text[1:] if len(text) > 2 else "}")
        lines.append(text)
    return lines


def _depth(value: Any) -> int:
    depth, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            depth = max(depth, level)
            stack.extend((inner, level + 1) for inner in (item.values() if isinstance(item, dict) else item))
    return depth


def _usable(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")
        elif isinstance(item, float):
            assert math.isfinite(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            assert len(str(abs(item))) <= MAX_RECORD_INT_DIGITS
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check(path: Path) -> None:
    try:
        result = read_file(path)
    except DataFileError as exc:
        assert str(exc).startswith(str(path))
        return
    for record in result.records:
        assert isinstance(record.data, dict)
        assert _depth(record.data) <= MAX_RECORD_DEPTH
        _usable(record.data)
    for bad in result.bad:
        assert bad.location.file == str(path) and bad.reason


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(lines=record_lines(), layout=st.sampled_from(["jsonl", "json-array", "json-object", "json-as-jsonl"]))
def test_hostile_records_are_refused_or_read_clean(tmp_path: Path, lines: list[str], layout: str) -> None:
    if layout == "jsonl":
        path, text = tmp_path / "d.jsonl", "\n".join(lines)
    elif layout == "json-array":
        path, text = tmp_path / "d.json", "[\n" + ",\n".join(lines) + "\n]"
    elif layout == "json-object":
        path, text = tmp_path / "d.json", '{"data": [\n' + ",\n".join(lines) + "\n]}"
    else:
        path, text = tmp_path / "d.json", "\n".join(lines)
    path.write_text(text, encoding="utf-8")
    _check(path)
