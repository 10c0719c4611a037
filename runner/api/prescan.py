"""Cheap bounds on a request body before a full parse: nesting depth and key count of a job file.

`tomllib` is a recursive pure-Python parser, and a dotted key 30,000 levels deep (`a.a.a...`,
60 KB) costs it time and memory that grow with the square of the depth; arrays nested a
thousand deep exhaust the recursion limit. One linear pass over the text's tokens (strings and
comments skipped whole) measures the deepest nesting of tables, dotted keys, arrays and inline
tables, and counts keys and table headers; a body over a limit is refused with where it goes
over, before any parser allocates anything.

The scan is lenient: on text that is not valid TOML it keeps going, and the real parser reports
the syntax error. It only has to never under-count what `tomllib` would build, so a string is
skipped only where TOML has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["TooDeep", "scan_toml"]

_TOKEN = re.compile(
    r'''(?P<space>[ \t\r]+)
      |(?P<newline>\n)
      |(?P<comment>\#[^\n]*)
      |(?P<string>"""(?:[^\\]|\\.)*?"""(?:"{1,2})?|\'\'\'.*?\'\'\'(?:'{1,2})?|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')
      |(?P<punct>\[\[|\]\]|[\[\]{}=,.])
      |(?P<word>[^\s\[\]{}=,.\#"']+)
      |(?P<other>.)''',
    re.VERBOSE | re.DOTALL,
)


@dataclass
class TooDeep(Exception):
    """The body is over a limit: `what` says which, `line` where it went over."""

    what: str
    line: int

    def __str__(self) -> str:
        return self.what


def scan_toml(text: str, *, max_depth: int, max_keys: int) -> None:
    """Raise `TooDeep` when `text` nests deeper than `max_depth` or defines more than `max_keys` keys.

    Depth counts what the parser builds: a key is one level below its table (each segment of a
    dotted key or a table header one more); an array is one level below what holds it; the keys
    of an inline table are one level below the key that holds the table.
    """
    line = 1
    table = 0  # depth of the current [table] / [[array.of.tables]]
    stack: list[tuple[str, int]] = []  # open '[' / '{' of a value, with their depth
    keys = 0
    segments = 0  # segments of the dotted key (or header) being read
    value_depth = 0  # depth of the key whose value is being read
    header: str | None = None  # inside a table header: '[' or '[['
    expect_key = True  # at a line start (top level), after '{' or ',' in an inline table

    def check(depth: int) -> None:
        if depth > max_depth:
            raise TooDeep(f"nested {depth} levels deep at line {line} (tables, dotted keys, arrays and inline "
                          f"tables count); a job file may nest at most {max_depth}", line)

    def key_base() -> int:
        return stack[-1][1] if stack else table

    for match in _TOKEN.finditer(text):
        kind, token = match.lastgroup, match.group()
        if kind == "newline":
            line += 1
            if not stack:
                expect_key, header, segments = True, None, 0
            continue
        if kind in ("space", "comment"):
            continue
        if kind == "string":
            line += token.count("\n")
        if header is not None:
            if kind in ("word", "string"):
                segments += 1
                check(segments + (header == "[["))
            elif token in ("]", "]]"):
                table, header = segments + (header == "[["), None
                keys += 1
        elif expect_key:
            if not stack and token in ("[", "[[") and segments == 0:
                header = token
            elif kind in ("word", "string"):
                segments += 1
                check(key_base() + segments)
            elif token == "=":
                keys += 1
                value_depth = key_base() + segments
                expect_key, segments = False, 0
            elif token == "}" and stack:
                stack.pop()
                expect_key = False
        elif token in ("[", "[[", "{"):
            for opened in token:  # '[[' is two arrays
                base = stack[-1][1] if stack and stack[-1][0] == "[" else value_depth
                stack.append((opened, base + (opened == "[")))
                check(stack[-1][1])
            expect_key = token == "{"
        elif token in ("]", "]]", "}"):
            for _ in token:
                if stack:
                    stack.pop()
        elif token == "," and stack and stack[-1][0] == "{":
            expect_key = True
        if keys > max_keys:
            raise TooDeep(f"more than {max_keys} keys (at line {line}); a job file may define at most {max_keys}", line)
