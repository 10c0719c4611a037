"""What the commands share: the parser class, the exit codes, argument types, job loading.

Light imports only: every command module is imported to build the parser, and `runner validate`
must stay fast enough for a pre-commit hook.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.units import SIZE_HELP, parse_size

if TYPE_CHECKING:
    from runner.spec import LoadedJob

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SIZE_HELP",
    "Parser",
    "error",
    "load_job_or_report",
    "missing_paths",
    "optional_path",
    "size_argument",
]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2  # 1: invalid input or a failed run; 2: a usage error


class Parser(argparse.ArgumentParser):
    """argparse's parser; usage errors exit 2 (the contract scripts rely on)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


Subparsers = Any  # argparse's _SubParsersAction is private; its add_parser is what the commands use


def size_argument(text: str) -> int:
    """An argparse `type=` for sizes (runner.units: 16GB = 16 x 10^9 bytes, 16GiB = 16G = 16 x 2^30)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def optional_path(value: str | None) -> Path | None:
    """An optional path option made absolute (it may be handed to another process)."""
    return Path(value).absolute() if value else None


def missing_paths(paths: Sequence[str], prog: str) -> bool:
    """Report paths named on the command line that do not exist (a usage error, exit 2)."""
    missing = [p for p in paths if not Path(p).exists()]
    for path in missing:
        print(f"{prog}: error: {path}: no such file or folder", file=sys.stderr)
    return bool(missing)


def error(message: str, code: int = EXIT_FAILED) -> int:
    """Print `error: message` to stderr and return the exit code."""
    print(f"error: {message}", file=sys.stderr)
    return code


def load_job_or_report(path: str) -> LoadedJob | None:
    """The validated job, or None after printing every problem of the file."""
    from runner.spec import JobSpecError, load_job

    try:
        return load_job(path)
    except JobSpecError as exc:
        print(exc, file=sys.stderr)
        print(f"{path}: invalid job spec; fix the problems above (runner validate {path})", file=sys.stderr)
        return None
