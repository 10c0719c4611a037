"""File hashes for model folders, remembered so a second run does not re-read gigabytes.

A resolved model records the sha256 of each file it is made of, so a run manifest pins exactly
which weights were trained.  Hashing is the slow part of resolving a cached model, so results
are kept in small JSON files keyed by each file's (size, mtime_ns, inode): a file that changed
in any of these is hashed again, one that did not is trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_write_json

__all__ = [
    "ADAPTER_FILE_PATTERNS",
    "MODEL_FILE_PATTERNS",
    "cached_sha256",
    "folder_checksums",
    "model_files",
    "sha256_file",
]

# The files a model is made of: config, safetensors weights (+ index), tokenizer, processor,
# generation config, chat template, sentence-transformers pooling.  Shared with the Hub download
# filter so that what we download is exactly what we hash.  Patterns are relative to the model
# folder, matched with Path.glob (one level per path component).
MODEL_FILE_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
    "additional_chat_templates/*.jinja",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "*_Pooling/config.json",
)

# A PEFT adapter folder: its config and weights besides the tokenizer files saved with it.
ADAPTER_FILE_PATTERNS: tuple[str, ...] = ("adapter_config.json", *MODEL_FILE_PATTERNS)

_CHUNK = 1 << 20
_CACHE_VERSION = 1
_BIG_FILE = 64 << 20  # show a progress bar when hashing files larger than this


def sha256_file(path: Path | str, *, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks (weights do not fit comfortably in memory)."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    bar = None
    if progress and size >= _BIG_FILE:
        from tqdm.auto import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"sha256 {path.name}", leave=False)
    try:
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
    return digest.hexdigest()


def _stamp(st: os.stat_result) -> dict[str, int]:
    """What must stay equal for a remembered hash to be trusted."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino}


def _read_cache(cache_file: Path | None) -> dict[str, Any]:
    """Remembered entries, or {} when the cache is absent, torn or from another format."""
    if cache_file is None:
        return {}
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != _CACHE_VERSION:
        return {}
    entries = data.get("files")
    return entries if isinstance(entries, dict) else {}


def _write_cache(cache_file: Path, entries: Mapping[str, Any], about: str) -> None:
    """Best effort: a read-only home must not make resolving fail."""
    try:
        atomic_write_json(cache_file, {"version": _CACHE_VERSION, "about": about, "files": dict(entries)})
    except OSError:
        pass


def _hash_with_cache(
    files: Iterable[tuple[str, Path]], cache_file: Path | None, about: str, progress: bool
) -> dict[str, str]:
    """sha256 of each (key, path), reusing cached entries whose stamp still matches."""
    cached = _read_cache(cache_file)
    entries: dict[str, Any] = {}
    result: dict[str, str] = {}
    changed = False
    for key, path in files:
        stamp = _stamp(path.stat())
        old = cached.get(key)
        if isinstance(old, dict) and all(old.get(k) == v for k, v in stamp.items()) and old.get("sha256"):
            digest = str(old["sha256"])
        else:
            digest = sha256_file(path, progress=progress)
            changed = True
        entries[key] = {**stamp, "sha256": digest}
        result[key] = digest
    if cache_file is not None and (changed or set(cached) != set(entries)):
        _write_cache(cache_file, entries, about)
    return result


def cached_sha256(path: Path | str, cache_file: Path | None, *, progress: bool = False) -> str:
    """sha256 of one file, remembered in ``cache_file`` keyed by (resolved path, size, mtime, inode).

    Why: a 100 MB GGUF takes a noticeable time to hash, and it is hashed on every resolve to
    find its converted snapshot.
    """
    path = Path(path).resolve()
    return _hash_with_cache([(str(path), path)], cache_file, str(path), progress)[str(path)]


def model_files(folder: Path | str, patterns: Iterable[str] = MODEL_FILE_PATTERNS) -> list[str]:
    """Relative posix names of the files in ``folder`` that make up the model (see MODEL_FILE_PATTERNS).

    Only the known patterns, not a recursive walk: a training folder can hold gigabytes of
    checkpoints next to the model, and those are not part of it.
    """
    folder = Path(folder)
    names: set[str] = set()
    for pattern in patterns:
        for path in folder.glob(pattern):
            rel = path.relative_to(folder)
            if path.is_file() and not any(part.startswith(".") for part in rel.parts):
                names.add(rel.as_posix())
    return sorted(names)


def folder_checksums(
    folder: Path | str,
    *,
    cache_file: Path | None = None,
    progress: bool = False,
    patterns: Iterable[str] = MODEL_FILE_PATTERNS,
) -> dict[str, str]:
    """Mapping relative file name -> sha256 for the model files in ``folder``.

    Entries are keyed by relative name, so a cache written inside a temp folder stays valid after
    the folder is renamed into place.  ``patterns`` selects the files (ADAPTER_FILE_PATTERNS for a
    LoRA adapter folder).
    """
    folder = Path(folder)
    names = model_files(folder, patterns)
    return _hash_with_cache(((n, folder / n) for n in names), cache_file, str(folder), progress)
