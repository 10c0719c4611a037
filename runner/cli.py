"""The `runner` command: a thin shell over the pipeline (spec -> registry -> data -> train -> outputs).

Heavy libraries (torch, transformers) are imported inside the commands that need them, so
`runner validate` over a folder of jobs stays fast enough for a pre-commit hook.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

EXIT_OK, EXIT_INVALID, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 on usage errors; keep that contract
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _cmd_validate(args: argparse.Namespace) -> int:
    from runner.spec import JobSpecError, find_job_files, load_job

    files = find_job_files(args.paths)
    missing_dirs = [p for p in args.paths if not Path(p).exists()]
    results: list[dict[str, object]] = []
    for path in files:
        try:
            job = load_job(path)
            results.append({"file": str(path), "valid": True, "name": job.name, "errors": []})
        except JobSpecError as exc:
            results.append({"file": str(path), "valid": False, "errors": [i.to_dict() for i in exc.issues]})
    if not files and not missing_dirs:
        print("no job files (*.toml) found in: " + ", ".join(map(str, args.paths)), file=sys.stderr)
        return EXIT_USAGE
    invalid = [r for r in results if not r["valid"]]
    if args.format == "json":
        print(json.dumps({"valid": not invalid, "files": results}, indent=2))
    else:
        for result in results:
            if result["valid"]:
                if not args.quiet:
                    print(f"ok      {result['file']} (job '{result['name']}')")
            else:
                for issue in result["errors"]:
                    assert isinstance(issue, dict)
                    print(f"{issue['file']}:{issue['line']}:{issue['column']}: "
                          + (f"{issue['path']}: " if issue["path"] else "") + str(issue["message"]))
        count = len(results)
        bad_issues = sum(len(r["errors"]) for r in invalid)  # type: ignore[arg-type]
        summary = f"{count - len(invalid)} of {count} job file(s) valid"
        if invalid:
            summary += f"; {bad_issues} problem(s) in {len(invalid)} file(s)"
        print(summary, file=sys.stderr)
    return EXIT_INVALID if invalid else EXIT_OK


def _cmd_init(args: argparse.Namespace) -> int:
    from runner.scaffold import write_starter

    written = write_starter(Path(args.dir), force=args.force)
    for path in written:
        print(f"wrote {path}")
    if not written:
        print("nothing written: the starter files already exist (use --force to overwrite)", file=sys.stderr)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", description="Declarative fine-tuning jobs: TOML specs in, adapters out.")
    parser.add_argument("--version", action="version", version=f"runner {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    validate = sub.add_parser("validate", help="check job files against the schema and the cross-field rules")
    validate.add_argument("paths", nargs="+", help="job files or folders (searched for *.toml)")
    validate.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    validate.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    validate.set_defaults(func=_cmd_validate)

    init = sub.add_parser("init", help="write a starter jobs/ folder with a commented example")
    init.add_argument("dir", nargs="?", default=".", help="project folder (default: current)")
    init.add_argument("--force", action="store_true", help="overwrite existing starter files")
    init.set_defaults(func=_cmd_init)

    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("runner")
    except PackageNotFoundError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
