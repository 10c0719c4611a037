"""`runner validate` (job files against the schema and the cross-field rules) and `runner init`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.commands.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, Subparsers, missing_paths

if TYPE_CHECKING:
    from runner.spec.filechecks import Surroundings


def add_validate(sub: Subparsers) -> None:
    validate = sub.add_parser("validate", help="check job files against the schema and the cross-field rules")
    validate.add_argument("paths", nargs="+", help="job files or folders (searched for *.toml)")
    validate.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    validate.add_argument(
        "--no-files",
        "--offline-only",
        dest="no_files",
        action="store_true",
        help="check the specs only: skip the checks of data files, model sources, registry "
        "aliases and job names (for specs validated away from their data)",
    )
    validate.set_defaults(func=validate_command)


def add_init(sub: Subparsers) -> None:
    init = sub.add_parser("init", help="write a starter jobs/ folder with a commented example")
    init.add_argument("dir", nargs="?", default=".", help="project folder (default: current)")
    init.add_argument("--force", action="store_true", help="overwrite existing starter files")
    init.set_defaults(func=init_command)


def validate_command(args: argparse.Namespace) -> int:
    """0: every file valid; 1: a problem in some file; 2: a path that does not exist, or no job file."""
    from runner.spec import find_job_files
    from runner.spec.filechecks import Surroundings

    if missing_paths(args.paths, "runner validate"):
        return EXIT_USAGE
    files = find_job_files(args.paths)
    if not files:
        print("no job files (*.toml) found in: " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return EXIT_USAGE
    where = None if args.no_files else Surroundings(folders=[Path(p) for p in args.paths if Path(p).is_dir()])
    results = [_check(path, where) for path in files]
    invalid = [r for r in results if not r["valid"]]
    if args.format == "json":
        print(json.dumps({"valid": not invalid, "files": results}, indent=2))
    else:
        _print_text(results, quiet=args.quiet)
    return EXIT_FAILED if invalid else EXIT_OK


def _check(path: Path, where: Surroundings | None) -> dict[str, Any]:
    """The spec's problems, then (with `where`) those of the files it names."""
    from runner.spec.filechecks import validate_job_file

    job, issues = validate_job_file(path, where)
    if job is None or issues:
        return {"file": str(path), "valid": False, "errors": [i.to_dict() for i in issues]}
    return {"file": str(path), "valid": True, "name": job.name, "errors": []}


def _print_text(results: list[dict[str, Any]], *, quiet: bool) -> None:
    """`file:line:col: path: message` per problem, `ok` per valid file (unless quiet), a summary on stderr."""
    for result in results:
        if result["valid"]:
            if not quiet:
                print(f"ok      {result['file']} (job '{result['name']}')")
            continue
        for issue in result["errors"]:
            print(
                f"{issue['file']}:{issue['line']}:{issue['column']}: "
                + (f"{issue['path']}: " if issue["path"] else "")
                + str(issue["message"])
            )
    invalid = [r for r in results if not r["valid"]]
    summary = f"{len(results) - len(invalid)} of {len(results)} job file(s) valid"
    if invalid:
        summary += f"; {sum(len(r['errors']) for r in invalid)} problem(s) in {len(invalid)} file(s)"
    print(summary, file=sys.stderr)


def init_command(args: argparse.Namespace) -> int:
    from runner.scaffold import write_starter

    written = write_starter(Path(args.dir), force=args.force)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("nothing written: the starter files already exist (use --force to overwrite)", file=sys.stderr)
    return EXIT_OK
