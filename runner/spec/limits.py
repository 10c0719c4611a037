"""Limits on what a job file (and a data record) may be, checked before any full parse.

One place for every bound, so the command line, the daemon's scan and the HTTP API refuse the same
inputs with the same numbers. A real job file is a few kilobytes, four levels deep at most
(`resources.slurm.options[0]`, `loss.tasks.NAME.type`) and holds a few dozen keys; the defaults
leave a wide margin above that while keeping the cost of a hostile file small (parsing, the
position map and the schema check all grow with nesting, and Python's TOML and JSON parsers
recurse once per level).

Import the constants (`from runner.spec.limits import MAX_JOB_FILE_BYTES`); the README's limits
table lists them.
"""

from __future__ import annotations

# ---- job files (TOML) ------------------------------------------------------------------------

MAX_JOB_FILE_BYTES = 1024 * 1024
"""A job file larger than this (1 MiB) is refused unread."""

MAX_NESTING_DEPTH = 32
"""Levels of tables, dotted-key parts and arrays around any value (`a.b.c = [[1]]` is 5)."""

MAX_KEYS = 1_000
"""Key parts in the whole file: `a.b = 1` counts 2, a header `[x.y]` counts 2."""

MAX_ARRAY_ITEMS = 10_000
"""Array items in the whole file (e.g. the entries of `data.train`)."""

MAX_BARE_VALUE_CHARS = 100
"""Characters of one unquoted value (number, date, boolean): bounds the cost of int()."""

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
"""TOML integers are 64-bit (TOML 1.0); tomllib accepts any size, so the loader checks."""

# ---- data records (JSON / JSONL) -------------------------------------------------------------

MAX_RECORD_DEPTH = 64
"""Nesting of objects and arrays in one data record (tool schemas in chat data nest ~10 deep)."""

MAX_RECORD_INT_DIGITS = 30
"""Digits of one integer in a data record (a score, an id); larger ones are refused, not parsed."""

MAX_ABS_SCORE = 1_000.0
"""Scored pairs: a score is a finite number within ±1,000 (0-1, 0-5, -1-1, 0-100 all fit; only
their order matters to CoSENT). A dataset whose scores mix scales gets a warning."""
