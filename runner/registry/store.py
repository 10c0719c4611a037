"""The model registry: find the file, read it, change it safely, import / delete / validate models,
and resolve ``registry:ALIAS`` sources.

Where the registry file is (:func:`find_registry`, the same rule for ``runner run`` and
``runner models``): ``--registry PATH``, else ``$RUNNER_REGISTRY``, else the nearest
``registry/registry.json`` walking up from the job file's folder (``runner run``) and then from
the current folder, else ``./registry/registry.json`` (created by the first write).

Every change is a read-modify-write of the whole file under an exclusive ``flock`` on a sibling
lock file (``.registry.json.lock``), published with an atomic rename: two processes never lose
each other's entries and a reader never sees a torn file.

The stored files of an entry live under ``RUNNER_HOME`` at ``entry.store``: a Hub snapshot in the
Hub cache (``hub/``), a converted GGUF snapshot (``snapshots/<sha256>``), a copy of a local or
packaged folder (``models/<content id>``), a registered adapter (``adapters/<job>/<run>``) or a
merged result (``merged/<job>/<run>``).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import json
import os
import shutil
import struct
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pydantic

from runner.fsutil import atomic_dir, atomic_write_text, file_lock
from runner.paths import hub_cache_dir, merged_dir, models_dir, runner_home
from runner.registry.checksums import (
    ADAPTER_FILE_PATTERNS,
    MODEL_FILE_PATTERNS,
    folder_checksums,
    model_files,
    sha256_file,
)
from runner.registry.derived import checksum_diff, ensure_merged, locate_recorded_base, read_snapshot_manifest
from runner.registry.entries import MODEL_KINDS, REGISTRY_VERSION, ModelEntry, RegistryFile
from runner.registry.gguf_convert import CHECKSUMS_FILE, cached_key, note
from runner.registry.sources import (
    GGUFSource,
    HubSource,
    JobSource,
    LocalSource,
    ModelSource,
    PackageSource,
    RegistrySource,
    ResolveContext,
    ResolvedModel,
    SourceError,
    parse_source,
    register_resolver,
    resolve_in,
)

__all__ = [
    "ENV_REGISTRY",
    "ImportResult",
    "Registry",
    "RegistryError",
    "ValidationProblem",
    "count_parameters",
    "delete_model",
    "dependents_of",
    "find_registry",
    "import_model",
    "inspect_folder",
    "lineage_chain",
    "validate_entry",
]

ENV_REGISTRY = "RUNNER_REGISTRY"
REGISTRY_RELPATH = Path("registry") / "registry.json"


class RegistryError(SourceError):
    """The registry file or an entry is missing, unreadable or in the way (a SourceError, so a job fails as a config error)."""


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ---- where the file is ----------------------------------------------------------------------


def _walk_up(start: Path) -> Iterator[Path]:
    start = start.absolute()
    yield start
    yield from start.parents


def find_registry(
    explicit: Path | str | None = None,
    *,
    start: Path | str | None = None,
    env: Mapping[str, str] | None = None,
) -> Path:
    """The registry file to use (see the module doc); it need not exist yet."""
    if explicit:
        return Path(explicit).expanduser().absolute()
    environ = os.environ if env is None else env
    if environ.get(ENV_REGISTRY):
        return Path(environ[ENV_REGISTRY]).expanduser().absolute()
    cwd = Path.cwd()
    for origin in ([Path(start)] if start is not None else []) + [cwd]:
        for folder in _walk_up(origin):
            candidate = folder / REGISTRY_RELPATH
            if candidate.is_file():
                return candidate
    return cwd / REGISTRY_RELPATH


# ---- the file -------------------------------------------------------------------------------


class Registry:
    """One registry file and the RUNNER_HOME its entries' files live in."""

    def __init__(self, path: Path | str, home: Path | str | None = None) -> None:
        self.path = Path(path).absolute()
        self.home = runner_home(home)

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(f".{self.path.name}.lock")

    def _load(self) -> RegistryFile:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return RegistryFile()
        except OSError as exc:
            raise RegistryError(f"cannot read the registry {self.path}: {exc.strerror}") from exc
        try:
            return RegistryFile.model_validate_json(text)
        except pydantic.ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()[:5]
            )
            raise RegistryError(f"{self.path} is not a valid registry file: {problems}") from exc

    def read(self) -> RegistryFile:
        """The current content (an empty registry when the file does not exist yet)."""
        return self._load()

    def entries(self) -> dict[str, ModelEntry]:
        return dict(self._load().models)

    def get(self, alias: str) -> ModelEntry:
        models = self._load().models
        if alias in models:
            return models[alias]
        close = difflib.get_close_matches(alias, list(models), n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        known = ", ".join(sorted(models)) or "none"
        raise RegistryError(
            f"no model '{alias}' in the registry {self.path}{hint}; registered: {known}. "
            f"Add it with `runner models import SOURCE --as {alias}`"
        )

    @contextmanager
    def edit(self) -> Iterator[dict[str, ModelEntry]]:
        """Locked read-modify-write: change the yielded dict; it is written atomically on exit."""
        with file_lock(self.lock_path):
            current = self._load()
            models = dict(current.models)
            yield models
            current.models = dict(sorted(models.items()))
            self._write(current)

    def _write(self, content: RegistryFile) -> None:
        data = content.model_dump(mode="json", by_alias=True, exclude_none=False)
        if data.get("$schema") is None:
            data.pop("$schema", None)
        data["version"] = REGISTRY_VERSION
        ordered = {k: data[k] for k in ("$schema", "version", "models") if k in data}
        atomic_write_text(self.path, json.dumps(ordered, indent=2, ensure_ascii=False) + "\n")

    def store_path(self, entry: ModelEntry) -> Path:
        return self.home / entry.store

    def relative_store(self, folder: Path) -> str:
        """``folder`` relative to RUNNER_HOME; RegistryError if the store is elsewhere."""
        try:
            return folder.absolute().relative_to(self.home).as_posix()
        except ValueError:
            try:
                return folder.resolve().relative_to(self.home.resolve()).as_posix()
            except ValueError:
                raise RegistryError(f"{folder} is not inside RUNNER_HOME ({self.home})") from None


def registry_for(ctx: ResolveContext) -> Registry:
    return Registry(ctx.registry or find_registry(), home=ctx.home)


# ---- what a model folder is -----------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def count_parameters(folder: Path) -> int | None:
    """Parameters stored in the folder's safetensors files, read from their headers only (no weights)."""
    total, seen = 0, False
    for name in model_files(folder, ("*.safetensors",)):
        try:
            with (folder / name).open("rb") as fh:
                (length,) = struct.unpack("<Q", fh.read(8))
                header = json.loads(fh.read(length))
        except (OSError, ValueError, struct.error):
            return None
        for key, tensor in header.items():
            if key == "__metadata__" or not isinstance(tensor, dict):
                continue
            count = 1
            for dim in tensor.get("shape", []):
                count *= int(dim)
            total += count
            seen = True
    return total if seen else None


_IMAGE_TEXT_TYPES = {"clip", "siglip", "siglip2", "chinese_clip", "align", "altclip", "blip", "owlvit", "colpali"}


def infer_kind(folder: Path, config: Mapping[str, Any]) -> str | None:
    """causal-lm / embedding / image-text-embedding from the config and sentence-transformers files; None if unsure."""
    architectures = [str(a) for a in config.get("architectures") or []]
    model_type = str(config.get("model_type") or "")
    if model_type in _IMAGE_TEXT_TYPES or any(a.startswith(("CLIP", "Siglip")) for a in architectures):
        return "image-text-embedding"
    if (folder / "modules.json").is_file() or (folder / "sentence_bert_config.json").is_file():
        return "embedding"
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        return "causal-lm"
    if any(a.endswith("Model") for a in architectures):
        return "embedding"
    return None


def _card_license(card: Path) -> str | None:
    try:
        from huggingface_hub.repocard import metadata_load

        meta = metadata_load(card) or {}
    except Exception:  # noqa: BLE001 - a malformed card only loses the license
        return None
    value = meta.get("license")
    if value == "other" and meta.get("license_name"):
        value = meta["license_name"]
    return str(value) if value else None


def _hub_card(src: HubSource, commit: str | None, ctx: ResolveContext) -> Path | None:
    """The repo's README.md (model card) at the commit: from the cache, else fetched unless offline."""
    from huggingface_hub import hf_hub_download

    from runner.registry.sources import hub_offline

    kwargs: dict[str, Any] = {"repo_id": src.repo_id, "filename": "README.md", "revision": commit or src.revision,
                              "cache_dir": hub_cache_dir(ctx.home)}
    for local_only in (True, False):
        if not local_only and hub_offline():
            return None
        try:
            return Path(hf_hub_download(**kwargs, local_files_only=local_only))
        except Exception:  # noqa: BLE001 - no card (or no network): the license stays unknown
            continue
    return None


def _dist_license(package: str) -> str | None:
    try:
        dists = importlib.metadata.packages_distributions().get(package) or []
        for dist in dists:
            meta = importlib.metadata.metadata(dist)
            value = meta.get("License-Expression") or meta.get("License")
            if value and len(value) < 80:
                return value
    except Exception:  # noqa: BLE001
        return None
    return None


def find_license(
    folder: Path, config: Mapping[str, Any], src: ModelSource | None, ctx: ResolveContext, revision: str | None
) -> tuple[str | None, str | None]:
    """(license, where it was read): config, model card, GGUF metadata, package metadata."""
    if config.get("license"):
        return str(config["license"]), "config.json"
    cards: list[Path] = []
    if isinstance(src, HubSource):
        card = _hub_card(src, revision, ctx)
        if card is not None:
            cards.append(card)
    cards.append(folder / "README.md")
    origin = _origin_folder(src)
    if origin is not None:
        cards.append(origin / "README.md")
    for card in cards:
        if card.is_file() and (value := _card_license(card)):
            return value, "model card"
    manifest = read_snapshot_manifest(folder) or {}
    gguf_file = manifest.get("source_file")
    if gguf_file and Path(gguf_file).is_file():
        try:
            from transformers.integrations.gguf.reader import read_gguf_metadata

            metadata, _ = read_gguf_metadata(str(gguf_file))
            if metadata.get("general.license"):
                return str(metadata["general.license"]), "GGUF metadata"
        except Exception:  # noqa: BLE001
            pass
    if isinstance(src, PackageSource) and (value := _dist_license(src.package)):
        return value, f"package metadata of {src.package}"
    return None, None


def _origin_folder(src: ModelSource | None) -> Path | None:
    if isinstance(src, LocalSource):
        return src.path
    if isinstance(src, PackageSource):
        import importlib.util

        spec = importlib.util.find_spec(src.package)
        if spec and spec.submodule_search_locations:
            base = Path(list(spec.submodule_search_locations)[0])
            return base / src.subpath if src.subpath and (base / src.subpath).is_dir() else base
    if isinstance(src, GGUFSource):
        return src.folder
    return None


@dataclass(frozen=True)
class FolderFacts:
    architecture: str | None
    model_type: str | None
    parameters: int | None
    size_bytes: int
    kind: str | None


def inspect_folder(folder: Path, files: Mapping[str, str]) -> FolderFacts:
    config = _read_json(folder / "config.json")
    architectures = config.get("architectures") or []
    size = sum(os.stat(folder / name).st_size for name in files if (folder / name).exists())
    return FolderFacts(
        architecture=str(architectures[0]) if architectures else None,
        model_type=str(config["model_type"]) if config.get("model_type") else None,
        parameters=count_parameters(folder),
        size_bytes=size,
        kind=infer_kind(folder, config),
    )


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


def _store_folder(registry: Registry, resolved: ResolvedModel, ctx: ResolveContext) -> Path:
    try:
        registry.relative_store(resolved.path)
        return resolved.path  # already in RUNNER_HOME: the Hub cache or a converted snapshot
    except RegistryError:
        return _copy_into_store(registry, resolved, ctx)


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
    if isinstance(parsed, (RegistrySource, JobSource)):
        raise RegistryError(f"{parsed}: import takes hf:, local:, gguf: or pkg: sources (a job's result is registered with output.register_as)")
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
    ctx = ResolveContext(home=registry.home, progress=progress, registry=registry.path, before_download=before_download)
    resolved = resolve_in(ctx, parsed)
    folder = _store_folder(registry, resolved, ctx)
    files = folder_checksums(folder, cache_file=ctx.checksum_cache(folder), progress=progress)
    if files != dict(resolved.files):
        raise RegistryError(f"the stored copy {folder} differs from {resolved.path}: " + "; ".join(checksum_diff(resolved.files, files)))
    facts = inspect_folder(folder, files)
    config = _read_json(folder / "config.json")
    found_license, license_from = (license, "given on the command line") if license else find_license(
        folder, config, parsed, ctx, resolved.revision
    )
    chosen_kind = kind or facts.kind
    if chosen_kind is None:
        raise RegistryError(
            f"cannot tell the kind of {source} (architectures: {config.get('architectures')}); pass --kind "
            f"({' | '.join(MODEL_KINDS)})"
        )
    revision = resolved.revision or _content_id(files)
    entry = ModelEntry(
        source=_pinned_source(parsed, resolved),
        revision=revision,
        kind=chosen_kind,  # type: ignore[arg-type]
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
    with registry.edit() as models:
        previous = models.get(alias)
        if previous is not None and previous.files == entry.files and previous.store == entry.store and previous.kind == entry.kind:
            return ImportResult(alias, previous, "unchanged", folder)
        if previous is not None and not force and previous.files != entry.files:
            raise RegistryError(
                f"'{alias}' is already registered for {previous.source} with other files; pass --force to replace it"
            )
        models[alias] = entry
    return ImportResult(alias, entry, "replaced" if previous is not None else "registered", folder)


# ---- resolving registry:ALIAS ---------------------------------------------------------------


def _verify(folder: Path, entry: ModelEntry, alias: str, ctx: ResolveContext, patterns: tuple[str, ...]) -> None:
    got = folder_checksums(folder, cache_file=ctx.checksum_cache(folder), progress=ctx.progress, patterns=patterns)
    if got != entry.files:
        raise RegistryError(
            f"registry:{alias}: the stored files in {folder} no longer match the registry: "
            + "; ".join(checksum_diff(entry.files, got))
            + f". Run `runner models validate {alias}`; re-import it with `runner models import {entry.source} --as {alias} --force`"
        )


def _restore(registry: Registry, alias: str, entry: ModelEntry, ctx: ResolveContext) -> Path:
    """Rebuild a missing store folder from the entry's pinned source (another machine, a cleaned cache)."""
    if entry.lineage is not None:
        raise RegistryError(
            f"registry:{alias}: its files ({registry.store_path(entry)}) are missing and it is the result of job "
            f"'{entry.lineage.job}' run {entry.lineage.run_id}; re-run the job or register it again"
        )
    note(f"registry:{alias}: {registry.store_path(entry)} is missing; fetching {entry.source} again", ctx.progress)
    try:
        resolved = resolve_in(ctx, entry.source)
    except SourceError as exc:
        raise RegistryError(f"registry:{alias}: its files are missing and {entry.source} cannot be fetched again: {exc}") from exc
    folder = _store_folder(registry, resolved, ctx)
    return folder


def _resolve_registry(src: RegistrySource, ctx: ResolveContext) -> ResolvedModel:
    registry = registry_for(ctx)
    entry = registry.get(src.alias)
    folder = registry.store_path(entry)
    lineage = entry.lineage.model_dump(mode="json") if entry.lineage is not None else None
    if entry.lineage is not None and entry.lineage.form == "adapter":
        if not folder.is_dir():
            _restore(registry, src.alias, entry, ctx)
        _verify(folder, entry, src.alias, ctx, ADAPTER_FILE_PATTERNS)
        recorded_base = entry.lineage.base
        merged = ensure_merged(
            folder,
            lambda: locate_recorded_base(recorded_base, ctx),
            merged_dir(ctx.home) / entry.lineage.job / entry.lineage.run_id,
            kind=entry.kind,
            meta={"job": entry.lineage.job, "run_id": entry.lineage.run_id, "spec_sha256": entry.lineage.spec_sha256,
                  "method": entry.lineage.method, "alias": src.alias},
            progress=ctx.progress,
            checksum_cache=ctx.checksum_cache(folder),
        )
        files = folder_checksums(merged, cache_file=merged / CHECKSUMS_FILE)
        return ResolvedModel(
            path=merged, source=str(src), revision=entry.revision, files=files,
            format_note=f"registered adapter '{src.alias}' merged into its base", alias=src.alias, lineage=lineage,
        )
    if not folder.is_dir():
        folder = _restore(registry, src.alias, entry, ctx)
    _verify(folder, entry, src.alias, ctx, _patterns_for(entry))
    return ResolvedModel(
        path=folder, source=str(src), revision=entry.revision, files=dict(entry.files),
        format_note=f"registry entry '{src.alias}' ({entry.source})", alias=src.alias, lineage=lineage,
    )


def _patterns_for(entry: ModelEntry) -> tuple[str, ...]:
    if entry.lineage is not None and entry.lineage.form == "adapter":
        return ADAPTER_FILE_PATTERNS
    return MODEL_FILE_PATTERNS


register_resolver(RegistrySource, _resolve_registry)


# ---- validate, dependents, delete -----------------------------------------------------------


@dataclass(frozen=True)
class ValidationProblem:
    alias: str
    file: str | None
    problem: str

    def __str__(self) -> str:
        return f"{self.alias}: {self.file + ': ' if self.file else ''}{self.problem}"


def validate_entry(registry: Registry, alias: str, entry: ModelEntry, *, progress: bool = True) -> list[ValidationProblem]:
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
            problems.append(ValidationProblem(alias, name, f"sha256 mismatch: registry {expected[:16]}…, file {got[:16]}…"))
    for name in model_files(folder, _patterns_for(entry)):
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
    registry: Registry,
    alias: str,
    *,
    force: bool = False,
    blocking_jobs: Callable[[str], list[str]] | None = None,
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
            step.update(job=recorded.get("job"), run_id=recorded.get("run_id"), method=recorded.get("method"),
                        form=recorded.get("form"))
        chain.append(step)
        if not recorded:
            break
        name, info = recorded.get("fine_tuned_from"), recorded.get("base")
    return chain
