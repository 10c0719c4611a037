"""A cheap, non-recursive pass over TOML text that measures it before anything parses it.

tomllib recurses once per array or inline-table level (a RecursionError past ~1,000) and spends
time quadratic in the length of a dotted key (30,000 parts took 18 s and 3.5 GB); so does any
walk that builds the path of every key. This scanner reads the text once, with an explicit stack,
and stops at the first limit of `runner.spec.limits` that is exceeded: nesting depth, key count,
array items, length of an unquoted value. It also remembers what a syntax error message needs and
tomllib does not say: where an unterminated string starts, and which inline table was open.

It validates nothing else: on anything it does not expect it stops quietly, and tomllib then
reports the syntax error. Hand-written because no TOML library bounds its input this way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runner.spec.limits import MAX_ARRAY_ITEMS, MAX_BARE_VALUE_CHARS, MAX_KEYS, MAX_NESTING_DEPTH

_SPACE = re.compile(r"[ \t]*")
_SPACE_NL = re.compile(r"(?:[ \t\r\n]+|#[^\n]*)*")
_SPACE_COMMENT = re.compile(r"[ \t]*(?:#[^\n]*)?")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_BARE_VALUE = re.compile(r"[^ \t\r\n,\]}#]+")
# TOML strings; a multi-line string may end with up to two extra quotes ("""a"""" is 'a"')
_STRINGS = (
    ('"""', re.compile(r'"""(?:[^\\"]|\\.|"(?!""))*"""(?:"{1,2}(?!"))?', re.DOTALL)),
    ("'''", re.compile(r"'''(?:[^']|'(?!''))*'''(?:'{1,2}(?!'))?")),
    ('"', re.compile(r'"(?:[^"\\\n]|\\.)*"')),
    ("'", re.compile(r"'[^'\n]*'")),
)


@dataclass
class Shape:
    """What the scan found. Offsets index the text; None: not found."""

    depth: int = 0
    keys: int = 0
    items: int = 0
    problem: tuple[int, str] | None = None  # (offset, message): a limit exceeded
    unterminated: tuple[int, str] | None = None  # (offset, quote) of a string never closed
    open_inline: int | None = None  # the '{' of the inline table open where the scan stopped
    stopped: int | None = None  # where the scan stopped early (a syntax error tomllib will name)


class _Stop(Exception):
    pass


class _Scanner:
    def __init__(self, text: str) -> None:
        self.text = text
        self.shape = Shape()
        self.stack: list[tuple[str, int, int]] = []  # (bracket, level of the items/keys, offset)

    # ---- limits -------------------------------------------------------------------------

    def _depth(self, level: int, at: int) -> None:
        if level > self.shape.depth:
            self.shape.depth = level
            if level > MAX_NESTING_DEPTH:
                self._fail(
                    at,
                    f"nested more than {MAX_NESTING_DEPTH} levels deep (tables, dotted keys and arrays "
                    "together); job files are a few levels deep: flatten this value",
                )

    def _count_keys(self, parts: int, at: int) -> None:
        self.shape.keys += parts
        if self.shape.keys > MAX_KEYS:
            self._fail(at, f"more than {MAX_KEYS} keys in one job file; split the file or remove keys")

    def _fail(self, at: int, message: str) -> None:
        self.shape.problem = (at, message)
        raise _Stop

    def _stop(self, at: int) -> None:
        self.shape.stopped = at
        opened = [offset for bracket, _, offset in self.stack if bracket == "{"]
        self.shape.open_inline = opened[-1] if opened else None
        raise _Stop

    # ---- tokens -------------------------------------------------------------------------

    def _skip(self, i: int, newlines: bool) -> int:
        pattern = _SPACE_NL if newlines else _SPACE_COMMENT
        return pattern.match(self.text, i).end()  # type: ignore[union-attr]

    def _string_end(self, i: int) -> int | None:
        for quote, pattern in _STRINGS:
            if self.text.startswith(quote, i):
                match = pattern.match(self.text, i)
                if match is None:
                    self.shape.unterminated = (i, quote)
                    self._stop(i)
                return match.end()  # type: ignore[union-attr]
        return None

    def _key(self, i: int, base: int) -> tuple[int, int]:
        """Read a (dotted) key at `i`; returns (parts, offset after it). Counts as it goes."""
        parts = 0
        while True:
            i = _SPACE.match(self.text, i).end()  # type: ignore[union-attr]
            end = self._string_end(i)
            if end is None:
                match = _BARE_KEY.match(self.text, i)
                if match is None:
                    self._stop(i)
                end = match.end()  # type: ignore[union-attr]
            parts += 1
            self._count_keys(1, i)
            self._depth(base + parts, i)
            i = _SPACE.match(self.text, end).end()  # type: ignore[union-attr]
            if not self.text.startswith(".", i):
                return parts, i
            i += 1

    # ---- structure ----------------------------------------------------------------------

    def scan(self) -> Shape:
        try:
            self._statements()
        except _Stop:
            pass
        return self.shape

    def _statements(self) -> None:
        text, header = self.text, 0
        i = 0
        while True:
            i = self._skip(i, newlines=True)
            if i >= len(text):
                return
            if text[i] == "[":
                array = text.startswith("[[", i)
                parts, i = self._key(i + (2 if array else 1), 0)
                header = parts + (1 if array else 0)
                self._depth(header, i)
                closing = "]]" if array else "]"
                if not text.startswith(closing, i):
                    self._stop(i)
                i += len(closing)
                continue
            parts, i = self._key(i, header)
            if not text.startswith("=", i):
                self._stop(i)
            i = self._value(i + 1, header + parts)

    def _value(self, i: int, level: int) -> int:
        """Scan one value starting at `i` (iteratively, however deep); returns the offset after it."""
        text = self.text
        while True:
            i = self._skip(i, newlines=bool(self.stack) and self.stack[-1][0] == "[")
            if text.startswith("[", i):
                self._depth(level + 1, i)
                self.stack.append(("[", level + 1, i))
                i = self._skip(i + 1, newlines=True)
                if not text.startswith("]", i):
                    level = self._item(i)
                    continue
                i += 1
                self.stack.pop()
            elif text.startswith("{", i):
                self.stack.append(("{", level, i))
                i = self._skip(i + 1, newlines=False)
                if not text.startswith("}", i):
                    parts, i = self._key(i, level)
                    if not text.startswith("=", i):
                        self._stop(i)
                    i, level = i + 1, level + parts
                    continue
                i += 1
                self.stack.pop()
            else:
                i = self._scalar(i)
            # after a value: close brackets and find the next item or key, or finish
            while self.stack:
                bracket, inner, _ = self.stack[-1]
                i = self._skip(i, newlines=bracket == "[")
                closing = "]" if bracket == "[" else "}"
                if text.startswith(closing, i):
                    self.stack.pop()
                    i += 1
                    continue
                if not text.startswith(",", i):
                    self._stop(i)
                i = self._skip(i + 1, newlines=bracket == "[")
                if bracket == "[":
                    if text.startswith("]", i):  # a trailing comma
                        continue
                    level = self._item(i)
                else:
                    parts, i = self._key(i, inner)
                    if not text.startswith("=", i):
                        self._stop(i)
                    i, level = i + 1, inner + parts
                break
            else:
                return i

    def _item(self, at: int) -> int:
        self.shape.items += 1
        if self.shape.items > MAX_ARRAY_ITEMS:
            self._fail(at, f"more than {MAX_ARRAY_ITEMS} array items in one job file")
        return self.stack[-1][1]

    def _scalar(self, i: int) -> int:
        end = self._string_end(i)
        if end is not None:
            return end
        match = _BARE_VALUE.match(self.text, i)
        if match is None:
            self._stop(i)
        end = match.end()  # type: ignore[union-attr]
        if end - i > MAX_BARE_VALUE_CHARS:
            self._fail(
                i,
                f"an unquoted value of {end - i} characters (at most {MAX_BARE_VALUE_CHARS}): "
                "a number this long is not a setting; quote it if it is text",
            )
        return end


def prescan(text: str) -> Shape:
    """Measure `text` (see the module doc); never raises, never recurses."""
    return _Scanner(text).scan()
