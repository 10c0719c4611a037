"""TOML syntax errors, pointed at where the defect starts and worded with the fix.

tomllib says where it gave up, in parser terms: an unclosed string is "Illegal character '\\n'"
at the end of its line, or "Unterminated string (at end of document)" with no line at all; a
duplicate key is "Cannot overwrite a value" without the key. The pre-scan
(`runner.spec.prescan`) knows where strings and inline tables start; this module combines the two
and adds what to do for the mistakes people make most: an unclosed string, a bare date that is
not a date, a Windows path in a "..." string, an inline table over several lines, a key or table
written twice.
"""

from __future__ import annotations

import ast
import bisect
import re
import tomllib

from runner.spec.positions import SourceMap
from runner.spec.prescan import Shape

_AT = re.compile(r"^(?P<msg>.*?) \(at (?:line (?P<line>\d+), column (?P<col>\d+)|end of document)\)$", re.DOTALL)
_KEY_PART = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|\'[^\'\n]*\')'
_KEY = rf"{_KEY_PART}(?:\s*\.\s*{_KEY_PART})*"
_HEADER_LINE = re.compile(rf"^[ \t]*\[(?P<array>\[)?[ \t]*(?P<key>{_KEY})[ \t]*\]")
_KEY_LINE = re.compile(rf"^[ \t]*(?P<key>{_KEY})[ \t]*=[ \t]*(?P<value>[^\n]*)")
_DATE_OR_TIME = re.compile(r"^[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}|^[0-9]{1,2}:[0-9]{1,2}")


class _Text:
    def __init__(self, text: str) -> None:
        self.text = text
        self.starts = [0] + [m.end() for m in re.finditer("\n", text)]

    def position(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(self.starts, offset) - 1
        return line + 1, offset - self.starts[line] + 1

    def offset(self, line: int, column: int) -> int:
        return self.starts[min(line, len(self.starts)) - 1] + column - 1

    def line(self, number: int) -> str:
        start = self.starts[number - 1]
        end = self.text.find("\n", start)
        return self.text[start : end if end >= 0 else len(self.text)]


def explain(text: str, exc: tomllib.TOMLDecodeError, shape: Shape) -> tuple[int, int, str]:
    """(line, column, message) for a syntax error of `text` that tomllib raised."""
    doc = _Text(text)
    match = _AT.match(str(exc))
    message = match["msg"] if match else str(exc)
    if match and match["line"]:
        line, column = int(match["line"]), int(match["col"])
        at = doc.offset(line, column)
    else:  # "at end of document"
        at = len(text)
        line, column = doc.position(at)
    if shape.unterminated is not None and shape.unterminated[0] <= at:
        start, quote = shape.unterminated
        return (*doc.position(start), _unclosed(quote))
    if shape.open_inline is not None and shape.stopped is not None and shape.open_inline <= at:
        if text.startswith("}", shape.stopped):
            message = (
                "TOML syntax error: a comma before '}': inline tables take no comma after their last entry; remove it"
            )
            return (*doc.position(text.rfind(",", 0, shape.stopped)), message)
        if "\n" in text[shape.open_inline : at + 1]:
            message = (
                "TOML syntax error: an inline table { ... } must be on one line; put it on one line, "
                "or write it as a [section] table with one key per line"
            )
            return (*doc.position(shape.open_inline), message)
    fix = _fix(doc, message, line, at)
    if fix is not None:
        return fix
    return line, column, f"TOML syntax error: {message}"


def _unclosed(quote: str) -> str:
    if quote in ('"""', "'''"):
        return f"TOML syntax error: this multi-line string is never closed; end it with {quote}"
    return (
        f"TOML syntax error: this string is not closed on its line; end it with {quote} "
        '(text over several lines goes in triple quotes: """...""")'
    )


def _fix(doc: _Text, message: str, line: int, at: int) -> tuple[int, int, str] | None:
    """A clearer message for the errors that have a usual cause, or None."""
    source = doc.line(line)
    statement = _KEY_LINE.match(source)
    looks_dated = statement is not None and _DATE_OR_TIME.match(statement["value"]) is not None
    if statement and looks_dated and ("date" in message.lower() or message.startswith("Expected newline")):
        value = statement["value"].split("#")[0].strip()
        column = statement.start("value") + 1
        return (
            line,
            column,
            (
                f"TOML syntax error: {value} reads as a date or time but is not a valid one "
                f'(dates are YYYY-MM-DD, times HH:MM:SS); if it is text, quote it: "{value}"'
            ),
        )
    if message.startswith(("Unescaped '\\'", "Invalid hex value")) and "\\" in source:
        column = at - doc.starts[line - 1] + 1
        opening = source.rfind('"', 0, column - 1)
        return (
            line,
            opening + 1 if opening >= 0 else column,
            (
                'TOML syntax error: a backslash starts an escape in a "..." string; write Windows paths in single '
                "quotes (a literal string: 'C:\\data\\train.jsonl') or with forward slashes (\"C:/data/train.jsonl\")"
            ),
        )
    if message.startswith(("Cannot overwrite a value", "Cannot mutate immutable namespace", "Cannot declare")):
        return _duplicate(doc, message, line)
    if message.startswith("Escaped character is not a Unicode scalar value"):
        return (
            line,
            at - doc.starts[line - 1] + 1,
            (
                f"TOML syntax error: {message}: an escape such as \\ud800 is half of a UTF-16 pair, not a character; "
                "write the character itself, or its \\UXXXXXXXX escape"
            ),
        )
    if message.startswith("Illegal character") and "\\n" not in message:
        return (
            line,
            at - doc.starts[line - 1] + 1,
            (
                f"TOML syntax error: {message}: control characters are not allowed in a job file; remove it "
                '(inside a "..." string, write it as an escape such as \\u0000 if it is really wanted)'
            ),
        )
    return None


def _dotted(key: str) -> tuple[str, ...]:
    """`a."b.c" . d` -> ('a', 'b.c', 'd')."""
    parts = re.findall(_KEY_PART, key)
    out = []
    for part in parts:
        if part.startswith('"'):
            out.append(tomllib.loads(f"k = {part}")["k"])
        elif part.startswith("'"):
            out.append(part[1:-1])
        else:
            out.append(part)
    return tuple(out)


def _duplicate(doc: _Text, message: str, line: int) -> tuple[int, int, str]:
    """Name the key (or table) written twice, and where it was first written."""
    table: tuple[str, ...] = ()
    for number in range(line - 1, 0, -1):
        header = _HEADER_LINE.match(doc.line(number))
        if header:
            table = _dotted(header["key"])
            break
    source = doc.line(line)
    header = _HEADER_LINE.match(source)
    statement = _KEY_LINE.match(source)
    if header:
        path, column, kind = _dotted(header["key"]), source.index("[") + 1, "table"
    elif statement:
        path, column, kind = table + _dotted(statement["key"]), statement.start("key") + 1, "key"
    else:
        named = re.search(r"\((.*)\)", message)
        path = tuple(ast.literal_eval(named.group(0))) if named else ()
        column, kind = 1, "table"
    earlier = SourceMap(doc.text[: doc.starts[line - 1]])
    name = ".".join(path) or "?"
    for size in range(len(path), 0, -1):  # the key itself, or the shortest prefix that holds a value
        if earlier.has(path[:size]):
            first = earlier.key(path[:size]).line
            if size == len(path):
                if kind == "table" and _HEADER_LINE.match(doc.line(first)):
                    fix = f"table [{name}] is declared twice (first on line {first}); merge the two into one section"
                else:
                    fix = f"'{name}' is set twice (first on line {first}); keep one of them"
            else:
                prefix = ".".join(path[:size])
                fix = (
                    f"'{name}' cannot be set: '{prefix}' already holds a value (line {first}); "
                    "rename one, or move the keys into one table"
                )
            return line, column, f"TOML syntax error: {fix}"
    return line, column, f"TOML syntax error: '{name}' is defined twice; keep one definition"
