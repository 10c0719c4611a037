"""Is this folder a loadable model? The checks every resolver runs before handing a folder out.

A model folder has ``config.json`` and complete safetensors weights (every shard an index lists);
pickle weights are refused (loading them can run arbitrary code). The messages say what the folder
holds instead (an adapter, GGUF files, a model one level down) and what to write.
"""

from __future__ import annotations

import json
from pathlib import Path

from runner.registry.checksums import folder_checksums, model_files
from runner.registry.gguf_convert import CHECKSUMS_FILE, ensure_gguf_snapshot, note
from runner.registry.sources.kinds import ResolvedModel, SourceError
from runner.registry.sources.resolve import ResolveContext

__all__ = ["check_model_folder", "folder_model", "gguf_model", "model_folder_problem"]

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def model_folder_problem(folder: Path, label: str, listed: set[str] | None = None) -> str | None:
    """Why ``folder`` is not a loadable safetensors model folder, or None if it is.

    ``listed`` are extra file names known to exist upstream (a Hub repo's listing), used to tell
    "pickle-only repo" from "weights not downloaded".
    """
    names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
    everything = names | {n for n in (listed or ()) if "/" not in n}
    if "config.json" not in names:
        if "adapter_config.json" in names:
            return (
                f"{label}: {folder} is a LoRA adapter (adapter_config.json), not a model; "
                "use the model it was trained from as the source"
            )
        ggufs = sorted(n for n in names if n.lower().endswith(".gguf"))
        if ggufs:
            return f"{label}: {folder} has no config.json but holds GGUF files; write 'gguf:{folder}#{ggufs[0]}'"
        inner = sorted(p.name for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []
        hint = f" (a model is in the sub-folder(s): {', '.join(inner)})" if inner else ""
        return (
            f"{label}: {folder} has no config.json{hint}; point at a folder written by "
            "save_pretrained (config.json + *.safetensors)"
        )
    safetensors = sorted(n for n in everything if n.endswith(".safetensors"))
    if not safetensors:
        pickles = sorted(n for n in everything if n.endswith(_PICKLE_SUFFIXES))
        if pickles:
            return (
                f"{label}: only pickle weights ({', '.join(pickles[:3])}), no safetensors; the runner refuses "
                "pickle files because loading them can run arbitrary code. Convert them once "
                "(from_pretrained + save_pretrained(..., safe_serialization=True)) and use local:PATH, "
                "or pick a revision that has *.safetensors"
            )
        return f"{label}: {folder} has config.json but no *.safetensors weights"
    missing_here = [n for n in safetensors if n not in names]
    if missing_here:
        return f"{label}: weights {', '.join(missing_here[:3])} are not in {folder}"
    for index in sorted(folder.glob("*.safetensors.index.json")):
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8")).get("weight_map", {})
        except (OSError, ValueError) as exc:
            return f"{label}: unreadable {index.name} ({exc})"
        missing = sorted({str(v) for v in weight_map.values()} - names)
        if missing:
            return f"{label}: incomplete model, {index.name} lists missing shard(s) {', '.join(missing[:3])}"
    return None


def check_model_folder(folder: Path, label: str) -> None:
    """Raise SourceError unless ``folder`` has config.json and complete safetensors weights."""
    problem = model_folder_problem(folder, label)
    if problem:
        raise SourceError(problem)


def folder_model(folder: Path, source: str, ctx: ResolveContext, note_text: str | None) -> ResolvedModel:
    check_model_folder(folder, source)
    if not any(n.startswith("tokenizer") or n in ("vocab.txt", "vocab.json") for n in model_files(folder)):
        note(f"{source}: no tokenizer files in {folder}; loading a tokenizer from it will fail", ctx.progress)
    files = folder_checksums(folder, cache_file=ctx.checksum_cache(folder), progress=ctx.progress)
    return ResolvedModel(path=folder, source=source, revision=None, files=files, format_note=note_text)


def gguf_model(file: Path, source: str, ctx: ResolveContext) -> ResolvedModel:
    if not file.is_file():
        raise SourceError(f"{source}: no such file {file}")
    snap = ensure_gguf_snapshot(file, home=ctx.home, progress=ctx.progress)
    files = folder_checksums(snap.path, cache_file=snap.path / CHECKSUMS_FILE)
    return ResolvedModel(
        path=snap.path,
        source=source,
        revision=snap.sha256,
        files=files,
        format_note=f"converted from GGUF {snap.quant}",
    )
