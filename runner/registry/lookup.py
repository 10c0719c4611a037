"""Resolving ``registry:ALIAS``: look the alias up, check its stored files, restore them if missing.

A registered model is used only when its stored files still hash to what the entry recorded; a
missing store folder (another machine, a cleaned cache) is fetched again from the entry's pinned
source. A registered adapter is merged into the base it was trained on (cached under
``RUNNER_HOME/merged/``). Importing this module installs the resolver (the package does on import).
"""

from __future__ import annotations

from pathlib import Path

from runner.paths import merged_dir
from runner.registry.checksums import ADAPTER_FILE_PATTERNS, folder_checksums
from runner.registry.derived import checksum_diff, ensure_merged, locate_recorded_base
from runner.registry.entries import ModelEntry
from runner.registry.gguf_convert import CHECKSUMS_FILE, note
from runner.registry.registry_file import Registry, RegistryError, registry_for
from runner.registry.sources import (
    RegistrySource,
    ResolveContext,
    ResolvedModel,
    SourceError,
    register_resolver,
    resolve_in,
)
from runner.registry.store import patterns_for, store_folder

__all__: list[str] = []


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
        raise RegistryError(
            f"registry:{alias}: its files are missing and {entry.source} cannot be fetched again: {exc}"
        ) from exc
    folder = store_folder(registry, resolved, ctx)
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
            meta={
                "job": entry.lineage.job,
                "run_id": entry.lineage.run_id,
                "spec_sha256": entry.lineage.spec_sha256,
                "method": entry.lineage.method,
                "alias": src.alias,
            },
            progress=ctx.progress,
            checksum_cache=ctx.checksum_cache(folder),
        )
        files = folder_checksums(merged, cache_file=merged / CHECKSUMS_FILE)
        return ResolvedModel(
            path=merged,
            source=str(src),
            revision=entry.revision,
            files=files,
            format_note=f"registered adapter '{src.alias}' merged into its base",
            alias=src.alias,
            lineage=lineage,
        )
    if not folder.is_dir():
        folder = _restore(registry, src.alias, entry, ctx)
    _verify(folder, entry, src.alias, ctx, patterns_for(entry))
    return ResolvedModel(
        path=folder,
        source=str(src),
        revision=entry.revision,
        files=dict(entry.files),
        format_note=f"registry entry '{src.alias}' ({entry.source})",
        alias=src.alias,
        lineage=lineage,
    )


register_resolver(RegistrySource, _resolve_registry)
