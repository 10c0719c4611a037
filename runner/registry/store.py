"""What you do to the registry: import a model, validate its stored files, delete it, trace its lineage.

The registry file itself (where it is, locking, atomic writes) is :mod:`runner.registry.registry_file`;
what a model folder holds (kind, parameters, license) is :mod:`runner.registry.folder_facts` and
:mod:`runner.registry.licenses`; resolving ``registry:ALIAS`` is :mod:`runner.registry.lookup`.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_dir, file_lock
from runner.paths import hub_cache_dir, models_dir
from runner.registry.checksums import (
    ADAPTER_FILE_PATTERNS,
    MODEL_FILE_PATTERNS,
    folder_checksums,
    model_files,
    sha256_file,
)
from runner.registry.derived import checksum_diff
from runner.registry.entries import MODEL_KINDS, ModelEntry
from runner.registry.folder_facts import inspect_folder, read_config
from runner.registry.gguf_convert import cached_key, note
from runner.registry.licenses import find_license
from runner.registry.registry_file import Registry, RegistryError, utc_now_iso
from runner.registry.sources import (
    HubSource,
    JobSource,
    ModelSource,
    RegistrySource,
    ResolveContext,
    ResolvedModel,
    SourceError,
    parse_source,
    resolve_in,
)

__all__ = [
    "DeleteResult",
    "ImportResult",
    "ValidationProblem",
    "delete_model",
    "dependents_of",
    "import_model",
    "lineage_chain",
    "patterns_for",
    "store_folder",
    "validate_entry",
]


# ---- the store ------------------------------------------------------------------------------


def _content_id(files: Mapping[str, str]) -> str:
    return cached_key(json.dumps(dict(sorted(files.items())), separators=(",", ":")))


def _copy_into_store(registry: Registry, resolved: ResolvedModel, ctx: ResolveContext) -> Path:
    """A private copy of a folder the runner does not own (a local folder, a package), content-addressed."""
    target = models_dir(registry.home) / _content_id(resolved.files)
    if target.is_dir():
        got = folder_checksums(target, cache_file=ctx.checksum_cache(target))
        if got == dict(resolved.files):
            return target
    note(f"copying {resolved.path} into the model store {target}", ctx.progress)
    with file_lock(target.parent / f".{target.name}.lock"), atomic_dir(target, replace=True) as tmp:
        for name in resolved.files:
            dest = tmp / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(resolved.path / name, dest)
    return target


def store_folder(registry: Registry, resolved: ResolvedModel, ctx: ResolveContext) -> Path:
    try:
        registry.relative_store(resolved.path)
        return resolved.path  # already in RUNNER_HOME: the Hub cache or a converted snapshot
    except RegistryError:
        return _copy_into_store(registry, resolved, ctx)


def patterns_for(entry: ModelEntry) -> tuple[str, ...]:
    """The file patterns an entry's store holds (an adapter's, or a model's)."""
    if entry.lineage is not None and entry.lineage.form == "adapter":
        return ADAPTER_FILE_PATTERNS
    return MODEL_FILE_PATTERNS


# ---- import ---------------------------------------------------------------------------------


@dataclass
class ImportResult:
    alias: str
    entry: ModelEntry
    action: str  # "registered", "replaced" or "unchanged"
    path: Path
    messages: list[str] = field(default_factory=list)


def _same_origin(a: ModelSource, b: ModelSource) -> bool:
    if isinstance(a, HubSource) and isinstance(b, HubSource):
        return a.repo_id == b.repo_id and (a.revision is None or b.revision is None or a.revision == b.revision)
    return str(a) == str(b)


def _pinned_source(parsed: ModelSource, resolved: ResolvedModel) -> str:
    if isinstance(parsed, HubSource) and resolved.revision:
        return str(HubSource(parsed.repo_id, resolved.revision))
    return resolved.source


def _check_import(registry: Registry, parsed: ModelSource, alias: str, kind: str | None, force: bool) -> None:
    """Refuse before anything is fetched: a source import does not take, an unknown kind, a taken alias."""
    if isinstance(parsed, (RegistrySource, JobSource)):
        raise RegistryError(
            f"{parsed}: import takes hf:, local:, gguf: or pkg: sources "
            "(a job's result is registered with output.register_as)"
        )
    if kind is not None and kind not in MODEL_KINDS:
        raise RegistryError(f"unknown kind {kind!r}; use one of {', '.join(MODEL_KINDS)}")
    existing = registry.entries().get(alias)
    if existing is not None and not force:
        try:
            same = _same_origin(parse_source(existing.source), parsed)
        except SourceError:
            same = False
        if not same:
            raise RegistryError(
                f"'{alias}' is already registered for {existing.source}; pick another alias, "
                f"or pass --force to replace it"
            )


def _new_entry(
    registry: Registry,
    parsed: ModelSource,
    resolved: ResolvedModel,
    folder: Path,
    files: dict[str, str],
    ctx: ResolveContext,
    *,
    source: str,
    kind: str | None,
    license: str | None,
) -> ModelEntry:
    """The entry for a stored folder: its facts, kind and license (given, or found)."""
    facts = inspect_folder(folder, files)
    config = read_config(folder)
    found_license, license_from = (
        (license, "given on the command line")
        if license
        else find_license(folder, config, parsed, ctx, resolved.revision)
    )
    chosen_kind = kind or facts.kind
    if chosen_kind is None:
        raise RegistryError(
            f"cannot tell the kind of {source} (architectures: {config.get('architectures')}); pass --kind "
            f"({' | '.join(MODEL_KINDS)})"
        )
    return ModelEntry(
        source=_pinned_source(parsed, resolved),
        revision=resolved.revision or _content_id(files),
        kind=chosen_kind,
        architecture=facts.architecture,
        model_type=facts.model_type,
        parameters=facts.parameters,
        license=found_license,
        license_from=license_from,
        size_bytes=facts.size_bytes,
        store=registry.relative_store(folder),
        files=files,
        format_note=resolved.format_note,
        imported_at=utc_now_iso(),
    )


def import_model(
    registry: Registry,
    source: str,
    alias: str,
    *,
    kind: str | None = None,
    license: str | None = None,
    force: bool = False,
    progress: bool = True,
    before_download: Callable[[str, int, int], None] | None = None,
    base_dir: Path | None = None,
) -> ImportResult:
    """Resolve ``source`` (download / convert / copy as needed) and register it as ``alias``."""
    parse_source(f"registry:{alias}")  # the alias rule, with its message
    parsed = parse_source(source, base_dir=base_dir or Path.cwd())
    _check_import(registry, parsed, alias, kind, force)
    ctx = ResolveContext(home=registry.home, progress=progress, registry=registry.path, before_download=before_download)
    resolved = resolve_in(ctx, parsed)
    folder = store_folder(registry, resolved, ctx)
    files = folder_checksums(folder, cache_file=ctx.checksum_cache(folder), progress=progress)
    if files != dict(resolved.files):
        raise RegistryError(
            f"the stored copy {folder} differs from {resolved.path}: " + "; ".join(checksum_diff(resolved.files, files))
        )
    entry = _new_entry(registry, parsed, resolved, folder, files, ctx, source=source, kind=kind, license=license)
    with registry.edit() as models:
        previous = models.get(alias)
        if (
            previous is not None
            and previous.files == entry.files
            and previous.store == entry.store
            and previous.kind == entry.kind
        ):
            return ImportResult(alias, previous, "unchanged", folder)
        if previous is not None and not force and previous.files != entry.files:
            raise RegistryError(
                f"'{alias}' is already registered for {previous.source} with other files; pass --force to replace it"
            )
        models[alias] = entry
    return ImportResult(alias, entry, "replaced" if previous is not None else "registered", folder)


# ---- validate, dependents, delete -----------------------------------------------------------


@dataclass(frozen=True)
class ValidationProblem:
    alias: str
    file: str | None
    problem: str

    def __str__(self) -> str:
        return f"{self.alias}: {self.file + ': ' if self.file else ''}{self.problem}"


def validate_entry(
    registry: Registry, alias: str, entry: ModelEntry, *, progress: bool = True
) -> list[ValidationProblem]:
    """Re-hash every stored file (no cached hashes); report missing, changed and unexpected files."""
    folder = registry.store_path(entry)
    if not folder.is_dir():
        return [ValidationProblem(alias, None, f"store folder {folder} is missing")]
    problems: list[ValidationProblem] = []
    for name, expected in sorted(entry.files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(ValidationProblem(alias, name, "missing"))
            continue
        got = sha256_file(path, progress=progress)
        if got != expected:
            problems.append(
                ValidationProblem(alias, name, f"sha256 mismatch: registry {expected[:16]}…, file {got[:16]}…")
            )
    for name in model_files(folder, patterns_for(entry)):
        if name not in entry.files:
            problems.append(ValidationProblem(alias, name, "unexpected file (not in the registry)"))
    return problems


def dependents_of(models: Mapping[str, ModelEntry], alias: str) -> list[str]:
    """Entries fine-tuned from ``alias``."""
    return sorted(a for a, e in models.items() if e.lineage is not None and e.lineage.fine_tuned_from == alias)


def _tree_size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def _delete_hub_revision(home: Path, folder: Path) -> tuple[int, list[str]] | None:
    """Remove a Hub snapshot and the blobs only it uses; (bytes freed, what) or None if not a Hub snapshot."""
    hub = hub_cache_dir(home)
    try:
        rel = folder.absolute().relative_to(hub)
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) != 3 or parts[1] != "snapshots":
        return None
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound, CorruptedCacheException

    try:  # huggingface_hub's own bookkeeping: blobs shared with other revisions stay
        strategy = scan_cache_dir(hub).delete_revisions(parts[2])
        freed = strategy.expected_freed_size
        strategy.execute()
    except (CacheNotFound, CorruptedCacheException):  # a cache it cannot read: the snapshot's links only
        freed = 0
        shutil.rmtree(folder, ignore_errors=True)
    repo_dir = hub / parts[0]
    snapshots = repo_dir / "snapshots"
    if repo_dir.is_dir() and (not snapshots.is_dir() or not any(snapshots.iterdir())):
        freed += _tree_size(repo_dir)
        shutil.rmtree(repo_dir, ignore_errors=True)
    return freed, [str(folder)]


@dataclass
class DeleteResult:
    alias: str
    freed_bytes: int
    removed: list[str]
    kept: list[str]


def delete_model(
    registry: Registry, alias: str, *, force: bool = False, blocking_jobs: Callable[[str], list[str]] | None = None
) -> DeleteResult:
    """Remove ``alias`` and the store files only it uses; refuses while something depends on it.

    ``blocking_jobs(alias)`` names queued jobs that use it (the caller knows where jobs and runs are).
    """
    with registry.edit() as models:
        if alias not in models:
            registry.get(alias)  # raises with a did-you-mean
        entry = models[alias]
        blockers = [f"entry '{d}' (fine-tuned from it)" for d in dependents_of(models, alias)]
        blockers += [f"job '{j}'" for j in (blocking_jobs(alias) if blocking_jobs else [])]
        if blockers and not force:
            raise RegistryError(
                f"'{alias}' is still needed by " + ", ".join(blockers) + "; delete those first, or pass --force"
            )
        del models[alias]
        others = list(models.values())
    candidates = [entry.store]
    if entry.lineage is not None and entry.lineage.form == "adapter":  # its merged snapshot is a cache of it
        candidates.append(f"merged/{entry.lineage.job}/{entry.lineage.run_id}")
    freed, removed, kept = 0, [], []
    for rel in candidates:
        folder = registry.home / rel
        users = [o for o in others if o.store == rel]
        if users:
            kept.append(f"{folder} (also used by another entry)")
            continue
        if not folder.exists():
            continue
        hub = _delete_hub_revision(registry.home, folder)
        if hub is not None:
            freed += hub[0]
            removed += hub[1]
            continue
        freed += _tree_size(folder)
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(str(folder))
    return DeleteResult(alias, freed, removed, kept)


# ---- lineage --------------------------------------------------------------------------------


def lineage_chain(registry: Registry, alias: str) -> list[dict[str, Any]]:
    """From ``alias`` back to the base model: one dict per model (alias, source, revision, job, run, method, form).

    Follows registered parents (``fine_tuned_from``) and, where a parent is not (or no longer)
    registered, the base the run recorded (``lineage.base``, nested for every fine-tune).
    """
    models = registry.entries()
    chain: list[dict[str, Any]] = []
    seen: set[str] = set()
    name: str | None = alias
    info: Mapping[str, Any] | None = None
    while len(chain) < 64:
        if name is not None and name in models and name not in seen:
            seen.add(name)
            entry = models[name]
            step: dict[str, Any] = {"alias": name, "source": entry.source, "revision": entry.revision}
            if entry.lineage is None:
                chain.append(step)
                break
            lin = entry.lineage
            chain.append({**step, "job": lin.job, "run_id": lin.run_id, "method": lin.method, "form": lin.form})
            name, info = lin.fine_tuned_from, lin.base
            continue
        if info is None:
            if name is not None:
                chain.append({"alias": name, "source": None, "revision": None, "missing": True})
            break
        step = {"alias": name, "source": info.get("source"), "revision": info.get("revision")}
        if name is not None:
            step["missing"] = True  # recorded under an alias that is no longer registered
        recorded = info.get("lineage") or None
        if recorded:
            step.update(
                job=recorded.get("job"),
                run_id=recorded.get("run_id"),
                method=recorded.get("method"),
                form=recorded.get("form"),
            )
        chain.append(step)
        if not recorded:
            break
        name, info = recorded.get("fine_tuned_from"), recorded.get("base")
    return chain
