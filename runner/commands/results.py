"""`runner generate` (base + adapter, one completion) and `runner export` (the result as a model folder)."""

from __future__ import annotations

import argparse
from pathlib import Path

from runner.commands.common import EXIT_OK, Subparsers, error


def add_generate(sub: Subparsers) -> None:
    gen = sub.add_parser("generate", help="load a job's base model + adapter and complete a prompt")
    gen.add_argument("job", help="job name or job file")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--max-new-tokens", type=int, default=64)
    gen.add_argument("--run", help="run id (default: the latest successful run)")
    gen.add_argument("--runs-dir")
    gen.set_defaults(func=generate_command)


def add_export(sub: Subparsers) -> None:
    exp = sub.add_parser("export", help="write a job's result as a model folder")
    exp.add_argument("job", help="job name or job file")
    exp.add_argument("--out", required=True, help="target folder")
    exp.add_argument("--merge", action="store_true", help="merge the adapter into the base weights")
    exp.add_argument("--run", help="run id (default: the latest successful run)")
    exp.add_argument("--runs-dir")
    exp.set_defaults(func=export_command)


def generate_command(args: argparse.Namespace) -> int:
    from runner.outputs.runs import runs_root
    from runner.results import ResultError, find_result, generate_text, load_result

    try:
        adapter_dir = find_result(args.job, runs_root(args.runs_dir), args.run)
    except ResultError as exc:
        return error(str(exc))
    model, tokenizer = load_result(adapter_dir)
    print(generate_text(model, tokenizer, args.prompt, max_new_tokens=args.max_new_tokens))
    return EXIT_OK


def export_command(args: argparse.Namespace) -> int:
    from runner.outputs.runs import runs_root
    from runner.results import ResultError, export_result, find_result

    try:
        adapter_dir = find_result(args.job, runs_root(args.runs_dir), args.run)
    except ResultError as exc:
        return error(str(exc))
    target = Path(args.out)
    export_result(adapter_dir, target, merge=args.merge)
    print(f"wrote the {'merged model' if args.merge else 'model'} of {adapter_dir.parent} to {target}")
    return EXIT_OK
