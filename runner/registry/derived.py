"""Models made from other models: an adapter merged into its base, and finding the exact base again.

A LoRA result is an adapter plus "the base it was trained on".  To fine-tune it further (a ``job:``
source, or a registered adapter) the adapter is folded into that base once and saved as a plain
safetensors snapshot under ``RUNNER_HOME/merged/<job>/<run-id>/``; later uses load that folder.
"The base it was trained on" is a recorded model info (source, revision, path, per-file sha256):
:func:`locate_recorded_base` finds a folder whose files still hash to exactly those values, or
says what changed.

Only safetensors are read: an adapter without ``adapter_model.safetensors`` is refused, and
models are loaded with ``use_safetensors=True`` and ``trust_remote_code=False``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_dir, atomic_write_json, file_lock
from runner.registry.checksums import ADAPTER_FILE_PATTERNS, folder_checksums, model_files
from runner.registry.gguf_convert import CHECKSUMS_FILE, SNAPSHOT_MANIFEST, note
from runner.registry.sources import ResolveContext, ResolvedModel, SourceError, check_model_folder, resolve_in

__all__ = ["checksum_diff", "ensure_merged", "locate_recorded_base", "read_snapshot_manifest"]

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def checksum_diff(expected: Mapping[str, str], got: Mapping[str, str], *, limit: int = 5) -> list[str]:
    """Human lines for how ``got`` differs from ``expected`` (file -> sha256 maps); empty if equal."""
    lines: list[str] = []
    for name in sorted(set(expected) | set(got)):
        want, have = expected.get(name), got.get(name)
        if want == have:
            continue
        if have is None:
            lines.append(f"{name}: missing")
        elif want is None:
            lines.append(f"{name}: unexpected file")
        else:
            lines.append(f"{name}: sha256 {want[:12]}… expected, {have[:12]}… found")
    if len(lines) > limit:
        lines = [*lines[:limit], f"… and {len(lines) - limit} more"]
    return lines


def _from_info(info: Mapping[str, Any], path: Path) -> ResolvedModel:
    return ResolvedModel(
        path=path,
        source=str(info["source"]),
        revision=info.get("revision"),
        files=dict(info.get("files") or {}),
        format_note=info.get("note") or info.get("format_note"),
        alias=info.get("alias"),
        lineage=info.get("lineage"),
    )


def locate_recorded_base(info: Mapping[str, Any], ctx: ResolveContext) -> ResolvedModel:
    """A loadable folder whose model files hash exactly as ``info['files']`` says, or SourceError.

    The recorded folder is tried first (so a ``job:`` base that has since been re-run still gives
    the run it was, and a re-pointed alias still gives the model that was trained on), then the
    recorded source is resolved again (a deleted snapshot is rebuilt, a moved cache found).
    """
    expected = dict(info.get("files") or {})
    source = str(info.get("source"))
    if not expected:
        raise SourceError(f"{source}: no file checksums were recorded for this base; cannot verify it")
    recorded = Path(str(info["path"])) if info.get("path") else None
    changed: str | None = None
    if recorded is not None and recorded.is_dir():
        got = folder_checksums(recorded, cache_file=ctx.checksum_cache(recorded), progress=ctx.progress)
        if got == expected:
            return _from_info(info, recorded)
        changed = f"{source} changed since it was recorded ({recorded}): " + "; ".join(checksum_diff(expected, got))
    try:
        again = resolve_in(ctx, source)
    except SourceError as exc:
        if changed:
            raise SourceError(changed) from exc
        raise SourceError(
            f"{source}: the recorded folder {recorded} is gone and resolving it again failed: {exc}"
        ) from exc
    if dict(again.files) == expected:
        return _from_info(info, again.path)
    if changed and again.path == recorded:
        raise SourceError(changed)
    raise SourceError(
        f"{source} is no longer the model recorded ({again.path}): "
        + "; ".join(checksum_diff(expected, dict(again.files)))
    )


def read_snapshot_manifest(folder: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((folder / SNAPSHOT_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _model_class(kind: str) -> Any:
    if kind == "causal-lm":
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM
    if kind == "embedding":
        from transformers import AutoModel

        return AutoModel
    raise SourceError(f"merging an adapter into a '{kind}' model is not supported yet; register it with output.merge")


def _merge_into(tmp: Path, adapter_dir: Path, base_path: Path, kind: str) -> None:
    """Write base + adapter (folded in) as a plain model folder, with the adapter's tokenizer files."""
    if (adapter_dir / "adapter_config.json").is_file():
        if not (adapter_dir / ADAPTER_WEIGHTS).is_file():
            raise SourceError(
                f"{adapter_dir}: no {ADAPTER_WEIGHTS}; the runner loads only safetensors adapters (no pickle files)"
            )
        from peft import PeftModel

        base = _model_class(kind).from_pretrained(
            str(base_path), dtype="auto", use_safetensors=True, trust_remote_code=False
        )
        merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
        merged.save_pretrained(str(tmp))
        del merged, base
        carried = [n for n in model_files(adapter_dir) if not n.startswith("adapter_") and n != "config.json"]
    else:  # a full fine-tune: the folder already is the model
        check_model_folder(adapter_dir, str(adapter_dir))
        carried = model_files(adapter_dir)
    for name in carried:
        target = tmp / name
        if target.exists() and name.endswith((".safetensors", ".safetensors.index.json")):
            continue  # the merged weights written above win
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(adapter_dir / name, target)


def ensure_merged(
    adapter_dir: Path,
    base: Callable[[], ResolvedModel],
    out: Path,
    *,
    kind: str,
    meta: Mapping[str, Any],
    progress: bool = True,
    checksum_cache: Path | None = None,
) -> Path:
    """``out``: the adapter in ``adapter_dir`` merged into ``base()``, built once, complete-or-absent.

    Reused while its recorded adapter checksums match the adapter; rebuilt (under a lock, so two
    processes never merge the same run at once) otherwise.  ``base`` is only called when a merge
    is needed, so a cached snapshot loads without its base.  ``checksum_cache`` remembers the
    adapter's hashes (a full fine-tune's "adapter" is a whole model).
    """
    adapter_sums = folder_checksums(adapter_dir, patterns=ADAPTER_FILE_PATTERNS, cache_file=checksum_cache)

    def reusable() -> bool:
        manifest = read_snapshot_manifest(out)
        return (
            manifest is not None
            and bool(manifest)
            and manifest.get("adapter_files") == adapter_sums
            and (out / "config.json").is_file()
        )

    if reusable():
        return out
    with file_lock(out.parent / f".{out.name}.lock"):
        if reusable():
            return out
        base_model = base()
        note(
            f"merging the adapter {adapter_dir} into {base_model.source} -> {out} (once; later uses reuse it)", progress
        )
        with atomic_dir(out, replace=True) as tmp:
            _merge_into(tmp, adapter_dir, base_model.path, kind)
            folder_checksums(tmp, cache_file=tmp / CHECKSUMS_FILE)
            atomic_write_json(
                tmp / SNAPSHOT_MANIFEST,
                {
                    **meta,
                    "kind": kind,
                    "adapter_dir": str(adapter_dir),
                    "adapter_files": adapter_sums,
                    "base_model": base_model.to_dict(),
                    "merged_at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
            )
    return out
