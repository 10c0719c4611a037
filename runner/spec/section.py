"""The strict base of every spec section and the value types several sections share."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
ALIAS_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
SOURCE_PATTERN = r"^(hf|local|gguf|pkg|registry|job):[^\x00-\x1f\x7f]+$"
PATH_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # no control characters: no file system takes NUL, none should take the rest
BIG = 1_000_000_000  # the upper bound of counts (steps, records): large enough for any run, small enough to be sane
MODULE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.]*$"


def _one_or_many(value: object) -> object:
    """TOML users write a single path as a string; the loader sees a list either way."""
    return [value] if isinstance(value, str) else value


StrList = Annotated[list[str], BeforeValidator(_one_or_many), Field(json_schema_extra={"x-one-or-many": True})]
PathStr = Annotated[
    str, Field(min_length=1, pattern=PATH_PATTERN, json_schema_extra={"x-hint": "a file path (no control characters)"})
]
PathList = Annotated[list[PathStr], BeforeValidator(_one_or_many), Field(json_schema_extra={"x-one-or-many": True})]


class Section(BaseModel):
    """Strict base: unknown keys are errors, fields are documented, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=False, allow_inf_nan=False)
