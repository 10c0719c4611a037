"""Data sources that are not files: ``hf:ORG/NAME`` data sets of the Hugging Face Hub.

Syntax, beside plain file paths in ``data.train`` / ``data.eval``::

    hf:ORG/NAME[@REVISION][?split=SPLIT&subset=SUBSET]

``split`` defaults to ``train``; ``subset`` is the data set's configuration (``name`` in
``datasets.load_dataset``); ``REVISION`` is a branch, tag or commit. The data set is read through
the ``datasets`` library and its cache (the ``hub`` extra), offline when it is cached.

Pure parsing, no I/O: the spec's rules use it to report a malformed source with its place, the
data layer to read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

HUB_PREFIX = "hf:"
_REPO = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
# a split as `datasets` takes it: a name, optionally sliced or combined ("train[:20%]", "train+validation")
_SPLIT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[0-9:%+-]*\])?(\+[A-Za-z0-9][A-Za-z0-9._-]*(\[[0-9:%+-]*\])?)*$")
OPTIONS = ("split", "subset")
SYNTAX = "hf:ORG/NAME[@REVISION][?split=SPLIT&subset=SUBSET]"


class DataSourceError(ValueError):
    """A malformed ``hf:`` data source; the message says what to write instead."""


@dataclass(frozen=True)
class HubDataSource:
    """A split of a Hub data set: what `datasets.load_dataset` needs to find it."""

    repo_id: str
    revision: str | None = None
    split: str = "train"
    subset: str | None = None

    def __str__(self) -> str:
        query = f"?split={self.split}" + (f"&subset={self.subset}" if self.subset else "")
        return f"{HUB_PREFIX}{self.repo_id}" + (f"@{self.revision}" if self.revision else "") + query


def is_hub_data(text: str) -> bool:
    """Whether a data entry names a Hub data set rather than a file."""
    return isinstance(text, str) and text.startswith(HUB_PREFIX)


def parse_hub_data(text: str) -> HubDataSource:
    """``hf:ORG/NAME[@REVISION][?split=...&subset=...]`` -> HubDataSource, or DataSourceError saying why."""
    if not is_hub_data(text):
        raise DataSourceError(f"{text!r} is not a Hub data source; write '{SYNTAX}'")
    rest = text[len(HUB_PREFIX) :]
    if rest.startswith(("http://", "https://", "//")) or "huggingface.co" in rest:
        raise DataSourceError(f"{text!r} is a URL; write the data set's id, e.g. 'hf:ORG/NAME' ({SYNTAX})")
    repo_and_revision, _, query = rest.partition("?")
    repo, at, revision = repo_and_revision.partition("@")
    if not _REPO.match(repo):
        raise DataSourceError(
            f"{text!r}: '{repo}' is not a data set id; write '{SYNTAX}', e.g. 'hf:HuggingFaceH4/no_robots?split=train'"
        )
    if at and not _REVISION.match(revision):
        raise DataSourceError(
            f"{text!r}: empty or malformed revision after '@'; write a branch, tag or commit, or drop the '@'"
        )
    options: dict[str, str] = {}
    for pair in query.split("&") if query else []:
        key, _, value = pair.partition("=")  # taken as written: no URL decoding ("train[:20%]" stays)
        if key not in OPTIONS:
            raise DataSourceError(f"{text!r}: unknown option '{key}'; the options are {', '.join(OPTIONS)} ({SYNTAX})")
        if key in options:
            raise DataSourceError(f"{text!r}: '{key}' is given twice")
        if not (_SPLIT if key == "split" else _NAME).match(value):
            raise DataSourceError(
                f"{text!r}: {key} '{value}' is empty or not a name (letters, digits, '.', '_', '-'"
                + (", a slice such as train[:20%]" if key == "split" else "")
                + ")"
            )
        options[key] = value
    if query and not options:
        raise DataSourceError(f"{text!r}: nothing after '?'; write e.g. '?split=train' or drop the '?'")
    return HubDataSource(repo, revision or None, options.get("split", "train"), options.get("subset"))
