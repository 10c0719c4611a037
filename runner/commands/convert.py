"""`runner convert CONFIG [--to jobs/x.toml]`: a job file from an Axolotl or LLaMA-Factory config
(runner.spec.convert). The job is validated before it is written, and written whole or not at all."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from runner.commands.common import EXIT_OK, EXIT_USAGE, Subparsers, error


def add_convert(sub: Subparsers) -> None:
    convert = sub.add_parser("convert", help="write a job file from an Axolotl or LLaMA-Factory training config")
    convert.add_argument("config", help="the training config (YAML)")
    convert.add_argument(
        "--to", help="the job file to write (default: print it; paths in it are then relative to the current folder)"
    )
    convert.add_argument(
        "--from",
        dest="tool",
        choices=["axolotl", "llamafactory"],
        help="the tool the config is for (default: recognised by its keys)",
    )
    convert.add_argument("--force", action="store_true", help="overwrite an existing job file")
    convert.set_defaults(func=convert_command)


def convert_command(args: argparse.Namespace) -> int:
    """0: written (or printed) and valid; 1: the config cannot become a valid job; 2: a usage error."""
    from runner.fsutil import atomic_write_text
    from runner.spec.convert import ConvertError, convert_config, to_toml, validate_text

    config = Path(args.config)
    if not config.is_file():
        return error(f"{config}: no such file", EXIT_USAGE)
    target = Path(args.to) if args.to else None
    if target is not None and target.exists() and not args.force:
        return error(f"{target} exists; choose another --to, or --force to overwrite it", EXIT_USAGE)
    job_path = target or Path.cwd() / f"{config.stem}.toml"
    try:
        conversion = convert_config(config, job_path=job_path, tool=args.tool)
    except ConvertError as exc:
        return error(f"cannot convert: {exc}")
    text = to_toml(conversion)
    problems = validate_text(text, job_path)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        return error(f"the converted job does not validate; nothing was written ({len(problems)} problem(s))")
    if target is None:
        sys.stdout.write(text)
        return EXIT_OK
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(target, text)
    print(
        f"wrote {target}: {len(conversion.mapped)} settings from the {conversion.tool} config, "
        f"{len(conversion.unmapped)} keys not carried over (listed at the top of the file, with the reason)",
        file=sys.stderr,
    )
    print(f"next: runner validate {target}; runner data validate --job {target}", file=sys.stderr)
    return EXIT_OK
