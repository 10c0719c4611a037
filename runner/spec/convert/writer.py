"""A `Conversion` as job-file text: a header naming the source, every key not carried over with its
reason and the notes as comments, then the job's tables, each value marked with the key it came from.

Values are written by tomli_w (quoting and escapes as TOML wants them); the comments are added line
by line afterwards, since no TOML writer at hand places comments.
"""

from __future__ import annotations

import re

import tomli_w

from runner.spec.convert.common import Conversion

ORDER = ("model", "data", "adapter", "loss", "train", "eval", "resources", "output", "tracking")
_KEY_LINE = re.compile(r"^([A-Za-z0-9_-]+) = ")
_TABLE = re.compile(r"^\[([A-Za-z0-9_.-]+)\]$")


def to_toml(conv: Conversion) -> str:
    job = {table: conv.job[table] for table in (*ORDER, *conv.job) if conv.job.get(table)}
    body = tomli_w.dumps(
        {"description": f"Converted by runner convert from the {conv.tool} config {conv.source.name}", **job}
    )
    origins: dict[str, str] = {}
    for origin, key in conv.mapped:
        origins.setdefault(key, origin)
    lines, table = [], ""
    for line in body.splitlines():
        header = _TABLE.match(line)
        if header:
            table = header.group(1)
        assignment = _KEY_LINE.match(line)
        name = assignment.group(1) if assignment else None
        note = origins.get(f"{table}.{name}" if table else name) if name else None
        lines.append(f"{line}  # {note}" if note and "\n" not in line else line)
    return "\n".join([*_header(conv), "", *lines]) + "\n"


def _header(conv: Conversion) -> list[str]:
    out = [
        f"# Converted by `runner convert` from the {conv.tool} config {conv.source}.",
        "# Each value names the key it came from; check the result with `runner validate` and",
        "# `runner data validate --job` (it shows how the records are read and rendered).",
    ]
    if conv.unmapped:
        out += ["#", f"# Not carried over ({len(conv.unmapped)}):"]
        out += [f"#   {key}: {reason}" for key, reason in conv.unmapped]
    if conv.notes:
        out += ["#", "# Notes:"] + [f"#   {note}" for note in conv.notes]
    return out
