"""Jobs feeding jobs: ``job:NAME`` sources, ``output.register_as``, and resuming on the same base.

This is the one module that knows both the registry and the runs, so the registry package never
imports the outputs layer: importing this module installs the ``job:`` resolver.

* ``job:NAME`` is the latest successful run of job NAME: its adapter merged into the base that
  run trained on, saved once as a safetensors snapshot in ``RUNNER_HOME/merged/<job>/<run-id>/``
  (cached by run id), so the next job can put a fresh LoRA on it.  A chain A -> B -> C works
  because B's recorded base is A's merged snapshot, verified by checksum.
* A job with ``output.register_as`` registers its result when it succeeds, with its lineage
  (``fine_tuned_from``, job, run id, spec sha256, adapter or merged).
* A resumed run trains on exactly the base its checkpoint recorded, or refuses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_dir
from runner.outputs.checkpoints import BASE_RECORD
from runner.outputs.manifest import read_manifest
from runner.outputs.runs import latest_run, list_runs, read_status, run_paths
from runner.outputs.runs import runs_root as default_runs_root
from runner.outputs.status import JobState
from runner.paths import adapters_dir, merged_dir, runner_home
from runner.registry.checksums import ADAPTER_FILE_PATTERNS, folder_checksums
from runner.registry.derived import ensure_merged, locate_recorded_base
from runner.registry.entries import Lineage, ModelEntry
from runner.registry.folder_facts import count_parameters
from runner.registry.gguf_convert import CHECKSUMS_FILE
from runner.registry.registry_file import Registry, RegistryError, find_registry, utc_now_iso
from runner.registry.sources import (
    JobSource,
    RegistrySource,
    ResolveContext,
    ResolvedModel,
    SourceError,
    parse_source,
    register_resolver,
    resolve_in,
)
from runner.spec.loader import LoadedJob

__all__ = [
    "ResumeRefused",
    "check_register_as",
    "model_info_of",
    "register_run",
    "resolve_job_model",
    "resolve_run",
    "verify_resume_base",
]

ADAPTER_RECORD = "runner_adapter.json"


class ResumeRefused(RuntimeError):
    """An interrupted run cannot resume: its base model is no longer the one it trained on."""


def model_info_of(resolved: ResolvedModel) -> dict[str, Any]:
    """What a run records about its base (manifest, every checkpoint, the final adapter)."""
    lineage = dict(resolved.lineage) if resolved.lineage else None
    return {
        "source": resolved.source,
        "revision": resolved.revision,
        "path": str(resolved.path),
        "files": dict(resolved.files),
        "note": resolved.format_note,
        "alias": resolved.alias,
        "fine_tuned_from": lineage.get("fine_tuned_from") if lineage else None,
        "lineage": lineage,
    }


# ---- job: -----------------------------------------------------------------------------------


def _run_kind(run_dir: Path) -> str:
    try:
        return str(read_manifest(run_paths(run_dir).manifest)["spec"]["model"]["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        return "causal-lm"


def _registered_alias(ctx: ResolveContext, job: str, run_id: str) -> str | None:
    """The alias a run's result is registered under, if any (a missing or broken registry: None)."""
    registry_file = ctx.registry or find_registry()
    if not registry_file.is_file():
        return None
    try:
        models = Registry(registry_file, home=ctx.home).entries()
    except RegistryError:
        return None
    for alias, entry in sorted(models.items()):
        if entry.lineage is not None and entry.lineage.job == job and entry.lineage.run_id == run_id:
            return alias
    return None


def _adapter_record(run_dir: Path, label: str) -> dict[str, Any]:
    record = run_paths(run_dir).adapter / ADAPTER_RECORD
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError(f"{label}: run {run_dir} has no finished result ({record} is missing)") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"{label}: unreadable {record}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("base_model"), dict):
        raise SourceError(f"{label}: {record} does not say which base model the run trained on")
    return data


def _lineage_of_run(run_dir: Path, record: Mapping[str, Any], form: str) -> dict[str, Any]:
    base = dict(record["base_model"])
    return {
        "fine_tuned_from": base.get("alias"),
        "base_source": base.get("source"),
        "job": record.get("job") or run_dir.parent.name,
        "run_id": run_dir.name,
        "spec_sha256": record.get("spec_sha256") or "",
        "method": record.get("method") or "lora",
        "form": form,
        "base": base,
    }


def resolve_run(run_dir: Path, ctx: ResolveContext, *, source: str | None = None) -> ResolvedModel:
    """A finished run's result as a loadable model: its merged snapshot, built once per run id."""
    run_dir = Path(run_dir)
    label = source or f"job:{run_dir.parent.name}"
    record = _adapter_record(run_dir, label)
    job, run_id = str(record.get("job") or run_dir.parent.name), run_dir.name
    lineage = _lineage_of_run(run_dir, record, "merged")
    base_info = lineage["base"]
    merged = ensure_merged(
        run_paths(run_dir).adapter,
        lambda: locate_recorded_base(base_info, ctx),
        merged_dir(ctx.home) / job / run_id,
        kind=_run_kind(run_dir),
        meta={"job": job, "run_id": run_id, "spec_sha256": lineage["spec_sha256"], "method": lineage["method"]},
        progress=ctx.progress,
        checksum_cache=ctx.checksum_cache(run_paths(run_dir).adapter),
    )
    files = folder_checksums(merged, cache_file=merged / CHECKSUMS_FILE)
    return ResolvedModel(
        path=merged,
        source=label,
        revision=run_id,
        files=files,
        format_note=f"result of job {job} run {run_id} ({lineage['method']}, merged into its base)",
        alias=_registered_alias(ctx, job, run_id),
        lineage=lineage,
    )


def _resolve_job(src: JobSource, ctx: ResolveContext) -> ResolvedModel:
    root = ctx.runs_root or default_runs_root()
    run = latest_run(root, src.name, state=JobState.SUCCEEDED)
    if run is None:
        runs = list_runs(root, src.name)
        if not runs:
            raise SourceError(
                f"{src}: job '{src.name}' has no runs under {root}; run it first (runner run jobs/{src.name}.toml)"
            )
        status = read_status(runs[-1])
        state = status.state.value if status is not None else "unknown"
        raise SourceError(
            f"{src}: job '{src.name}' has no successful run under {root} (latest run {runs[-1].name}: {state})"
        )
    return resolve_run(run, ctx, source=str(src))


register_resolver(JobSource, _resolve_job)


# ---- a job's model --------------------------------------------------------------------------


def _context(job: LoadedJob, runs_root: Path | None, registry: Path | None) -> ResolveContext:
    return ResolveContext(
        home=runner_home(),
        progress=True,
        registry=registry or find_registry(start=job.path.parent),
        runs_root=runs_root,
    )


def check_register_as(job: LoadedJob, registry: Registry) -> None:
    """Before training: ``output.register_as`` must be free, or already this job's result."""
    alias = job.spec.output.register_as
    if not alias:
        return
    existing = registry.entries().get(alias)
    if existing is None:
        return
    if existing.lineage is None or existing.lineage.job != job.name:
        owner = f"job '{existing.lineage.job}'" if existing.lineage else existing.source
        raise RegistryError(
            f"output.register_as = '{alias}' is already the registry alias of {owner} ({registry.path}); "
            f"choose another alias or `runner models delete {alias}`"
        )


def resolve_job_model(
    job: LoadedJob,
    *,
    runs_root: Path | None = None,
    registry: Path | None = None,
    allow_remote_code: bool = False,
    pinned: ResolvedModel | None = None,
) -> tuple[ResolvedModel, dict[str, Any]]:
    """The job's base model (resolved, or ``pinned`` by a resume) and the model info the run records.

    Also the checks that must pass before any weights load: remote code is allowed only when both
    the job and the runner ask for it; a registry model must be of the job's kind; the
    ``register_as`` alias must be free.
    """
    spec = job.spec
    if spec.model.trust_remote_code and not allow_remote_code:
        raise SourceError(
            "model.trust_remote_code = true would run Python code shipped with the model; the runner "
            "allows it only when started with --allow-remote-code"
        )
    ctx = _context(job, runs_root, registry)
    if spec.output.register_as:
        check_register_as(job, Registry(ctx.registry or find_registry(), home=ctx.home))
    parsed = parse_source(spec.model.source, base_dir=job.path.parent)
    if isinstance(parsed, RegistrySource):
        entry = Registry(ctx.registry or find_registry(), home=ctx.home).get(parsed.alias)
        if entry.kind != spec.model.kind:
            raise RegistryError(
                f"model.source = '{parsed}' is a {entry.kind} model but model.kind is '{spec.model.kind}'"
            )
    resolved = pinned if pinned is not None else resolve_in(ctx, parsed)
    return resolved, model_info_of(resolved)


def verify_resume_base(
    job: LoadedJob, checkpoint: Path, *, runs_root: Path | None = None, registry: Path | None = None
) -> ResolvedModel | None:
    """The exact base ``checkpoint`` was trained on, found and verified by checksum; None if unrecorded.

    Raises ResumeRefused when that base cannot be found with the recorded checksums: resuming on
    other weights would silently mix two models.
    """
    checkpoint = Path(checkpoint)
    recorded: Mapping[str, Any] | None = None
    try:
        recorded = json.loads((checkpoint / BASE_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):  # an older checkpoint: the run's manifest says what it started on
        try:
            recorded = read_manifest(run_paths(checkpoint.parent.parent).manifest).get("model")
        except (OSError, ValueError):
            recorded = None
    if not isinstance(recorded, Mapping) or not recorded.get("files"):
        return None
    ctx = _context(job, runs_root, registry)
    try:
        return locate_recorded_base(recorded, ctx)
    except SourceError as exc:
        raise ResumeRefused(
            f"cannot resume run {checkpoint.parent.parent.name} from {checkpoint.name}: the base it was trained on, "
            f"{exc}. Resuming on other weights would mix two models, so this run stops here (its checkpoints are "
            f"kept); running the job again starts a new run on the base as it is now"
        ) from exc


# ---- register_as ----------------------------------------------------------------------------


def _base_entry(registry: Registry, base: Mapping[str, Any]) -> ModelEntry | None:
    alias = base.get("alias")
    return registry.entries().get(alias) if alias else None


def register_run(
    registry: Registry,
    run_dir: Path,
    alias: str,
    *,
    kind: str,
    merge: bool = False,
    runs_root: Path | None = None,
    progress: bool = True,
) -> ModelEntry:
    """Register a finished run's result as ``alias``: its adapter (default) or a merged model."""
    parse_source(f"registry:{alias}")
    run_dir = Path(run_dir)
    record = _adapter_record(run_dir, f"register_as '{alias}'")
    method = str(record.get("method") or "lora")
    form = "merged" if merge or method == "full" else "adapter"
    lineage = _lineage_of_run(run_dir, record, form)
    ctx = ResolveContext(home=registry.home, progress=progress, registry=registry.path, runs_root=runs_root)
    if form == "adapter":
        folder = adapters_dir(registry.home) / lineage["job"] / run_dir.name
        source_dir = run_paths(run_dir).adapter
        with atomic_dir(folder, replace=True) as tmp:
            for name in folder_checksums(source_dir, patterns=ADAPTER_FILE_PATTERNS):
                (tmp / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source_dir / name, tmp / name)
        files = folder_checksums(folder, cache_file=ctx.checksum_cache(folder), patterns=ADAPTER_FILE_PATTERNS)
    else:
        resolved = resolve_run(run_dir, ctx)
        folder, files = resolved.path, dict(resolved.files)
    base = lineage["base"]
    base_entry = _base_entry(registry, base)
    config_dir = Path(str(base.get("path"))) if form == "adapter" and base.get("path") else folder
    try:
        config = json.loads((config_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    architectures = config.get("architectures") or []
    entry = ModelEntry(
        source=f"job:{lineage['job']}",
        revision=run_dir.name,
        kind=kind,
        architecture=str(architectures[0]) if architectures else (base_entry.architecture if base_entry else None),
        model_type=config.get("model_type") or (base_entry.model_type if base_entry else None),
        parameters=count_parameters(folder),
        license=base_entry.license if base_entry else None,
        license_from=f"base model '{base.get('alias')}'" if base_entry and base_entry.license else None,
        size_bytes=sum((folder / n).stat().st_size for n in files),
        store=registry.relative_store(folder),
        files=files,
        format_note=(
            f"LoRA adapter ({method}) of job {lineage['job']}"
            if form == "adapter"
            else f"{method} result of job {lineage['job']}, merged"
        ),
        imported_at=utc_now_iso(),
        lineage=Lineage(**lineage),
    )
    with registry.edit() as models:
        models[alias] = entry
    return entry


def register_job_result(
    job: LoadedJob, run_dir: Path, *, runs_root: Path | None = None, registry: Path | None = None
) -> str:
    """``output.register_as`` after a successful run; returns the line to print."""
    alias = job.spec.output.register_as
    assert alias
    reg = Registry(registry or find_registry(start=job.path.parent))
    check_register_as(job, reg)
    entry = register_run(
        reg, run_dir, alias, kind=job.spec.model.kind, merge=job.spec.output.merge, runs_root=runs_root
    )
    assert entry.lineage is not None
    parent = entry.lineage.fine_tuned_from or entry.lineage.base_source
    return f"registered as '{alias}' in {reg.path} ({entry.lineage.form}, fine-tuned from {parent})"
