"""Line and column of every key and value in a TOML document.

tomllib (and tomlkit) give no positions, and error messages must point at `file:line:col`, so this
is a small scanner for documents that tomllib has already accepted. It only has to find where keys
and values start, not to decode them, which keeps it short. Anything it does not understand ends
the scan early: positions already found stay usable, and lookups fall back to the nearest parent.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass

PathKey = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SCALAR_END = re.compile(r"[,\]}\n#]")
# Arrays and inline tables are scanned recursively; deeper than any job file may be (see
# runner.spec.limits), far from Python's recursion limit. Positions found so far stay usable.
_MAX_DEPTH = 200


@dataclass(frozen=True)
class Position:
    line: int
    column: int


@dataclass(frozen=True)
class Located:
    key: Position | None
    value: Position | None


class _ScanStop(Exception):
    """The scanner met something it does not model; positions found so far are kept."""


class _Node:
    """One key of the document: where it and its value are written, and its children.

    A tree rather than a dict keyed by full paths: a key 30,000 parts deep would otherwise store
    30,000 tuples of up to 30,000 parts (quadratic memory, gigabytes); here each part is one node.
    """

    __slots__ = ("children", "key", "value")

    def __init__(self) -> None:
        self.children: dict[str | int, _Node] = {}
        self.key: Position | None = None
        self.value: Position | None = None

    def child(self, name: str | int) -> _Node:
        node = self.children.get(name)
        if node is None:
            node = self.children[name] = _Node()
        return node


class SourceMap:
    """Positions of keys and values by path, e.g. ("adapter", "r") or ("data", "train", 1)."""

    def __init__(self, text: str) -> None:
        self._text = text
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self._root = _Node()
        self._i = 0
        try:
            self._scan()
        except (_ScanStop, IndexError, ValueError, tomllib.TOMLDecodeError):
            pass

    # lookups -----------------------------------------------------------------------------

    def key(self, path: Iterable[str | int]) -> Position:
        """Where the key of `path` (or its nearest located parent) is written."""
        return self._nearest(tuple(path), prefer_value=False)

    def value(self, path: Iterable[str | int]) -> Position:
        """Where the value of `path` starts (falling back to its key, then to its parents)."""
        return self._nearest(tuple(path), prefer_value=True)

    def has(self, path: Iterable[str | int]) -> bool:
        path = tuple(path)
        nodes = self._walk(path)
        return len(nodes) == len(path) + 1 and (nodes[-1].key is not None or nodes[-1].value is not None)

    def _walk(self, path: PathKey) -> list[_Node]:
        """The nodes along `path` from the root, as far as the document has them."""
        nodes = [self._root]
        for part in path:
            node = nodes[-1].children.get(part)
            if node is None:
                break
            nodes.append(node)
        return nodes

    def _nearest(self, path: PathKey, *, prefer_value: bool) -> Position:
        nodes = self._walk(path)
        for node in reversed(nodes[1:]):
            first, second = (node.value, node.key) if prefer_value else (node.key, node.value)
            if first is not None:
                return first
            if second is not None:
                return second
        return Position(1, 1)

    # scanning ------------------------------------------------------------------------------

    def _pos(self, index: int) -> Position:
        line = bisect.bisect_right(self._line_starts, index) - 1
        return Position(line + 1, index - self._line_starts[line] + 1)

    def _peek(self, n: int = 1) -> str:
        return self._text[self._i : self._i + n]

    def _skip_space(self, newlines: bool) -> None:
        text = self._text
        while self._i < len(text):
            ch = text[self._i]
            if ch in " \t\r" or (newlines and ch == "\n"):
                self._i += 1
            elif ch == "#":
                end = text.find("\n", self._i)
                self._i = len(text) if end < 0 else end
            else:
                return

    def _expect(self, token: str) -> None:
        if not self._text.startswith(token, self._i):
            raise _ScanStop(token)
        self._i += len(token)

    def _scan(self) -> None:
        table = self._root
        array_tables: dict[_Node, int] = {}  # an array of tables -> the index of its last [[header]]
        text = self._text
        while True:
            self._skip_space(newlines=True)
            if self._i >= len(text):
                return
            start = self._i
            if self._peek(2) == "[[":
                self._i += 2
                self._skip_space(newlines=False)
                array = self._resolve_header(self._parse_key(), array_tables, start)
                self._skip_space(newlines=False)
                self._expect("]]")
                index = array_tables.get(array, -1) + 1
                array_tables[array] = index
                table = array.child(index)
                array.key = array.key or self._pos(start)
                table.key = self._pos(start)
            elif self._peek() == "[":
                self._i += 1
                self._skip_space(newlines=False)
                table = self._resolve_header(self._parse_key(), array_tables, start)
                self._skip_space(newlines=False)
                self._expect("]")
                table.key = table.key or self._pos(start)
            else:
                self._key_value(table, 0)

    def _resolve_header(self, keys: list[tuple[str, int]], array_tables: dict[_Node, int], start: int) -> _Node:
        """The header's node, through the current element of any enclosing array of tables.

        Every prefix is recorded too: `[a.b]` defines table `a` implicitly, at that header.
        """
        node = self._root
        for name, _ in keys:
            node = node.child(name)
            node.key = node.key or self._pos(start)
            if node in array_tables:
                node = node.child(array_tables[node])
        return node

    def _key_value(self, table: _Node, depth: int) -> None:
        node = table
        for name, index in self._parse_key():
            node = node.child(name)
            node.key = node.key or self._pos(index)
        self._skip_space(newlines=False)
        self._expect("=")
        self._skip_space(newlines=False)
        self._parse_value(node, depth)

    def _parse_key(self) -> list[tuple[str, int]]:
        keys: list[tuple[str, int]] = []
        while True:
            self._skip_space(newlines=False)
            start = self._i
            ch = self._peek()
            if ch == '"':
                end = self._basic_string_end(self._i)
                name = tomllib.loads("k = " + self._text[start:end])["k"]
                self._i = end
            elif ch == "'":
                end = self._text.index("'", self._i + 1) + 1
                name = self._text[start + 1 : end - 1]
                self._i = end
            else:
                match = _BARE_KEY.match(self._text, self._i)
                if not match:
                    raise _ScanStop("key")
                name = match.group()
                self._i = match.end()
            keys.append((name, start))
            self._skip_space(newlines=False)
            if self._peek() != ".":
                return keys
            self._i += 1

    def _basic_string_end(self, start: int) -> int:
        i = start + 1
        text = self._text
        while text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1

    def _parse_value(self, node: _Node, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise _ScanStop("too deep")
        node.value = self._pos(self._i)
        text = self._text
        if text.startswith('"""', self._i) or text.startswith("'''", self._i):
            quote = text[self._i : self._i + 3]
            i = self._i + 3
            while True:
                if quote == '"""' and text[i] == "\\":
                    i += 2
                    continue
                if text.startswith(quote, i):
                    i += 3
                    while i < len(text) and text[i] == quote[0]:
                        i += 1
                    break
                i += 1
            self._i = i
        elif text[self._i] == '"':
            self._i = self._basic_string_end(self._i)
        elif text[self._i] == "'":
            self._i = text.index("'", self._i + 1) + 1
        elif text[self._i] == "[":
            self._i += 1
            index = 0
            while True:
                self._skip_space(newlines=True)
                if self._peek() == "]":
                    self._i += 1
                    return
                self._parse_value(node.child(index), depth + 1)
                self._skip_space(newlines=True)
                if self._peek() == ",":
                    self._i += 1
                index += 1
        elif text[self._i] == "{":
            self._i += 1
            while True:
                self._skip_space(newlines=True)
                if self._peek() == "}":
                    self._i += 1
                    return
                self._key_value(node, depth + 1)
                self._skip_space(newlines=True)
                if self._peek() == ",":
                    self._i += 1
        else:
            match = _SCALAR_END.search(text, self._i)
            self._i = len(text) if match is None else match.start()
