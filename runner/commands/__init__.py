"""The `runner` command: one module per command group, each a thin shell over the library
(spec -> registry -> data -> train -> outputs; the watcher, the plan, the HTTP API).

Each module adds its sub-commands to the parser (`add_*`) and binds each to a handler that reads
the arguments, calls the library and prints; exit codes are in `runner.commands.common`. Heavy
libraries (torch, transformers) are imported inside the handlers that need them, so `runner
validate` over a folder of jobs stays fast enough for a pre-commit hook.

To add a command: a module here with `add_<name>(sub)` and its handler, and a line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from runner.commands.common import Parser

__all__ = ["COMMANDS", "build_parser", "main"]

# (module of runner.commands, its add_* function), in the order of `runner --help`. The modules are
# imported when the parser is built, so a training command re-executes under jemalloc before any
# of them (and the libraries they import) is loaded.
COMMANDS: tuple[tuple[str, str], ...] = (
    ("validate", "add_validate"),
    ("validate", "add_init"),
    ("convert", "add_convert"),
    ("run", "add_run"),
    ("plan", "add_plan"),
    ("models", "add_models"),
    ("data", "add_data"),
    ("results", "add_generate"),
    ("results", "add_export"),
    ("embed", "add_embed"),
    ("watch", "add_watch"),
    ("serve", "add_serve"),
    ("watch", "add_status"),
    ("watch", "add_cancel"),
    ("watch", "add_logs"),
)
# commands that train in this process (or its children): re-executed under jemalloc when present
_TRAINING = frozenset({"run", "watch"})


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="runner", description="Declarative fine-tuning jobs: TOML specs in, adapters out.")
    parser.add_argument("--version", action="version", version=f"runner {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for module, add in COMMANDS:
        getattr(importlib.import_module(f"runner.commands.{module}"), add)(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("runner")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] and sys.argv[1] in _TRAINING:  # the only option before a command is --version
        from runner.allocator import reexec_with_jemalloc

        reexec_with_jemalloc()  # returns only when it is off, missing or already loaded
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
