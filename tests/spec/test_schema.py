"""The committed schema is generated from the typed spec and documents every field."""

from __future__ import annotations

import json
import typing
from typing import Any

import jsonschema
from pydantic import BaseModel

from runner.spec.model import JobSpec
from runner.spec.schema import SCHEMA_PATH, job_schema, render_schema


def test_committed_schema_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == render_schema(), (
        "schemas/job.schema.json is stale: run `python -m runner.spec.schema`"
    )


def test_schema_is_valid_draft_2020_12() -> None:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def _objects(node: Any) -> typing.Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if "properties" in node:
            yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def test_every_property_is_documented_and_typed_and_closed() -> None:
    schema = job_schema()
    assert "anyOf" not in json.dumps(schema) and "oneOf" not in json.dumps(schema)
    for obj in _objects(schema):
        assert obj.get("additionalProperties") is False
        for name, prop in obj["properties"].items():
            assert prop.get("description"), name
            assert "type" in prop or "$ref" in prop, name


def _model_fields(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        fields[prefix + name] = info
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            fields.update(_model_fields(annotation, prefix + name + "."))
    return fields


def _schema_fields(schema: dict[str, Any], node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, prop in node.get("properties", {}).items():
        fields[prefix + name] = prop
        if "$ref" in prop:
            target = schema["$defs"][prop["$ref"].split("/")[-1]]
            fields.update(_schema_fields(schema, target, prefix + name + "."))
    return fields


def test_schema_and_typed_model_agree_field_by_field() -> None:
    schema = job_schema()
    model_fields = _model_fields(JobSpec)
    schema_fields = _schema_fields(schema, schema)
    assert set(model_fields) == set(schema_fields)
    for name, info in model_fields.items():
        prop = schema_fields[name]
        if not info.is_required() and info.default is not None and not callable(info.default_factory):
            default = info.default
            assert prop.get("default") == default, name
        literal_args = (
            typing.get_args(info.annotation) if typing.get_origin(info.annotation) is typing.Literal else None
        )
        if literal_args:
            assert prop["enum"] == list(literal_args), name
        assert info.description == prop["description"], name
