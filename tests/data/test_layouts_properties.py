"""Whatever a chat record or a CSV holds, the layouts answer with a clean conversation or their own errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.data import RecordError, normalize_record, resolve_fields
from runner.data.conversation import RecordOptions
from runner.data.reading import read_file
from runner.data.records import DataFileError

scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6)
)
part = st.one_of(
    st.text(max_size=6),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["text", "reasoning", "tool_call", "image", "video", "odd", 3]),
            "value": st.one_of(st.text(max_size=6), scalar, st.just('{"name": "f", "arguments": {}}')),
        }
    ),
    st.dictionaries(st.sampled_from(["type", "text", "value", "image"]), scalar, max_size=3),
    scalar,
)
content = st.one_of(
    st.text(max_size=8), st.lists(part, max_size=4), scalar, st.dictionaries(st.text(max_size=3), scalar)
)
message = st.fixed_dictionaries(
    {"role": st.one_of(st.sampled_from(["user", "assistant", "system", "tool", "human", "gpt", "bot"]), scalar)},
    optional={
        "content": content,
        "loss_weight": scalar,
        "train": scalar,
        "reasoning_content": scalar,
        "tool_calls": st.one_of(scalar, st.lists(st.dictionaries(st.text(max_size=3), scalar), max_size=2)),
    },
)
record = st.fixed_dictionaries(
    {"messages": st.one_of(st.lists(message, max_size=5), scalar)},
    optional={
        "images": st.one_of(st.lists(st.text(max_size=3), max_size=2), scalar),
        "tools": st.one_of(st.just('[{"name": "f"}]'), scalar),
    },
)


@settings(max_examples=300, deadline=None)
@given(data=record, drop=st.booleans())
def test_a_chat_record_normalises_cleanly_or_is_a_record_error(data: dict[str, Any], drop: bool) -> None:
    try:
        conv = normalize_record(
            data,
            "messages",
            resolve_fields("messages", [data]),
            options=RecordOptions.of(images="drop" if drop else "refuse"),
        )
    except RecordError:
        return
    for m in conv.messages:
        assert m["role"] in ("system", "user", "assistant", "tool") and isinstance(m["content"], str)
        assert m.get("loss_weight", 0.0) in (0.0, 1.0) and isinstance(m.get("reasoning", ""), str)
    assert conv.messages[-1]["role"] == "assistant"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet=st.sampled_from(list('ab,;\t"\n\r 1.')), min_size=1, max_size=60),
    suffix=st.sampled_from([".csv", ".tsv"]),
)
def test_any_csv_text_reads_into_string_cells_or_a_located_file_error(tmp_path: Path, text: str, suffix: str) -> None:
    path = tmp_path / f"d{suffix}"
    path.write_text(text, encoding="utf-8")
    try:
        result = read_file(path)
    except DataFileError as exc:
        assert str(exc).startswith(str(path))
        return
    for item in result.records:
        assert item.location.file == str(path) and item.location.row >= 1
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in item.data.items())
    for bad in result.bad:
        assert bad.location.row >= 1 and bad.reason
