"""Tokenised data, cached by content: tokenise a data set once per (data, tokenizer, settings).

Rendering chat templates and diffing prefixes costs milliseconds per record (~3 ms for an alpaca
record with SmolLM2), every run, before the first step. The result depends only on the bytes of
the data files, the tokenizer (its files and chat template), the data settings and the code that
tokenises, so all of them go into the key: a changed record, template, max_length or runner
version is a miss, never a stale hit.

An entry is one .npz under ``RUNNER_HOME/data-cache/`` (token ids and labels as int32 arrays
with offsets, the data reports as JSON; no pickle), written to a temp name and renamed, so a
reader sees a whole entry or none. The newest `KEEP_ENTRIES` entries are kept. A job turns the
cache off with ``train.speed.data_cache = false`` (the caller passes ``enabled``); where the cache
lives is the machine's business (``RUNNER_HOME``).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from runner.data.causal import Example
from runner.data.report import BadRecord, DataReport, LengthStats, Location
from runner.fsutil import digest_file

FORMAT_VERSION = 2
KEEP_ENTRIES = 32
_CODE_FILES = (
    "causal.py",
    "formats.py",
    "pipeline.py",
    "records.py",
    "report.py",
    "cache.py",
    "chat.py",
    "content.py",
    "conversation.py",
    "layouts.py",
    "tools.py",
    "plaintext.py",
    "tables.py",
    "hub.py",
)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


def cache_dir() -> Path:
    from runner.paths import runner_home

    return runner_home() / "data-cache"


def _hash_file(digest: Any, path: Path, *, with_path: bool = True) -> None:
    if with_path:
        digest.update(str(path.resolve()).encode())
    digest.update(b"\0file\0")
    digest_file(digest, path)


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """What makes this tokenizer tokenise the way it does: its files (when it has a folder), its
    chat template, special tokens and class."""
    digest = hashlib.sha256()
    folder = Path(str(getattr(tokenizer, "name_or_path", "") or ""))
    found = False
    if folder.is_dir():
        for name in _TOKENIZER_FILES:
            if (folder / name).is_file():
                found = True
                _hash_file(digest, folder / name)
    if not found:  # built in memory: its serialised state
        backend = getattr(tokenizer, "backend_tokenizer", None)
        digest.update(backend.to_str().encode() if backend is not None else repr(tokenizer.get_vocab()).encode())
    digest.update(
        json.dumps(
            {
                "class": type(tokenizer).__name__,
                "template": getattr(tokenizer, "chat_template", None),
                "special": {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())},
                "pad": getattr(tokenizer, "pad_token_id", None),
                "eos": getattr(tokenizer, "eos_token_id", None),
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    return digest.hexdigest()


def cache_key(files: Sequence[str | Path], tokenizer: Any, settings: Mapping[str, Any]) -> str:
    """Changes when any data file's bytes, the tokenizer, a setting or the tokenising code changes.

    The data files count by content and position, not by path: the same data under another folder
    is a hit (the locations in the reports are re-pointed to the current files on load).
    """
    import tokenizers
    import transformers

    digest = hashlib.sha256(f"format {FORMAT_VERSION}".encode())
    for path in files:
        if str(path).startswith("hf:"):  # a Hub data set: the Arrow files of its cached split
            from runner.data.hub import hub_fingerprint

            digest.update(b"\0hub\0" + hub_fingerprint(str(path)).encode())
            continue
        _hash_file(digest, Path(path), with_path=False)
    digest.update(tokenizer_fingerprint(tokenizer).encode())
    code_dir = Path(__file__).parent
    for name in _CODE_FILES:
        _hash_file(digest, code_dir / name)
    digest.update(
        json.dumps(
            {
                "settings": dict(settings),
                "transformers": transformers.__version__,
                "tokenizers": tokenizers.__version__,
            },
            sort_keys=True,
            default=str,
        ).encode()
    )
    return digest.hexdigest()[:40]


# ---------------------------------------------------------------------------------------------
# (de)serialisation


def _pack(examples: Sequence[Example], prefix: str, arrays: dict[str, np.ndarray]) -> None:
    lengths = np.fromiter((len(e["input_ids"]) for e in examples), dtype=np.int64, count=len(examples))
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    arrays[f"{prefix}_offsets"] = offsets
    arrays[f"{prefix}_ids"] = np.fromiter((t for e in examples for t in e["input_ids"]), dtype=np.int32, count=total)
    arrays[f"{prefix}_labels"] = np.fromiter((t for e in examples for t in e["labels"]), dtype=np.int32, count=total)


def _unpack(arrays: Mapping[str, np.ndarray], prefix: str) -> list[Example]:
    offsets = arrays[f"{prefix}_offsets"].tolist()
    ids = arrays[f"{prefix}_ids"]
    labels = arrays[f"{prefix}_labels"]
    out: list[Example] = []
    for start, end in itertools.pairwise(offsets):
        out.append(
            {
                "input_ids": ids[start:end].tolist(),
                "labels": labels[start:end].tolist(),
                "attention_mask": [1] * (end - start),
            }
        )
    return out


def _report_to_json(report: DataReport | None) -> Any:
    if report is None:
        return None
    raw = asdict(report)
    raw["bad_records"] = [{"location": asdict(b.location), "reason": b.reason} for b in report.bad_records]
    return raw


def _report_from_json(raw: Any, moved: Mapping[str, str] | None = None) -> DataReport | None:
    if raw is None:
        return None
    raw = dict(raw)
    moved = moved or {}
    raw["bad_records"] = [
        BadRecord(
            Location(**{**b["location"], "file": moved.get(b["location"]["file"], b["location"]["file"])}), b["reason"]
        )
        for b in raw["bad_records"]
    ]
    raw["lengths"] = LengthStats(**raw["lengths"]) if raw.get("lengths") else None
    return DataReport(**raw)


def save_entry(
    path: Path,
    train: Sequence[Example],
    evaluation: Sequence[Example],
    train_report: DataReport,
    eval_report: DataReport | None,
    files: Sequence[str] = (),
) -> None:
    """Write an entry atomically (temp file + rename)."""
    arrays: dict[str, np.ndarray] = {}
    _pack(train, "train", arrays)
    _pack(evaluation, "eval", arrays)
    meta = json.dumps(
        {
            "format_version": FORMAT_VERSION,
            "files": list(files),
            "train_report": _report_to_json(train_report),
            "eval_report": _report_to_json(eval_report),
        }
    ).encode()
    arrays["meta"] = np.frombuffer(meta, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{path.name}-{os.getpid()}")
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy types **kwds as allow_pickle
    tmp.write_bytes(buffer.getvalue())
    os.replace(tmp, path)


def load_entry(
    path: Path, files: Sequence[str] = ()
) -> tuple[list[Example], list[Example], DataReport, DataReport | None] | None:
    """The cached data, or None when the entry is missing, unreadable or of another format.
    Bad-record locations in the stored reports are re-pointed to `files` (same order as stored)."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            meta = json.loads(arrays["meta"].tobytes().decode())
            if meta.get("format_version") != FORMAT_VERSION:
                return None
            train, evaluation = _unpack(arrays, "train"), _unpack(arrays, "eval")
        moved = dict(zip(meta.get("files", []), files, strict=False))
        train_report = _report_from_json(meta["train_report"], moved)
        assert train_report is not None
        return train, evaluation, train_report, _report_from_json(meta["eval_report"], moved)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        return None


def _prune(folder: Path, keep: int) -> None:
    entries = sorted(folder.glob("*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        old.unlink(missing_ok=True)


Loaded = tuple[list[Example], list[Example], DataReport, DataReport | None]


def cached(
    files: Sequence[str | Path],
    tokenizer: Any,
    settings: Mapping[str, Any],
    build: Callable[[], Loaded],
    *,
    enabled: bool = True,
    folder: Path | None = None,
) -> tuple[Loaded, bool]:
    """`build()`'s result from the cache when an entry with this key exists, else built and stored.
    Returns (result, whether it came from the cache). A cache that cannot be written is skipped."""
    if not enabled:
        return build(), False
    folder = folder or cache_dir()
    path = folder / f"{cache_key(files, tokenizer, settings)}.npz"
    names = [str(f) for f in files]
    hit = load_entry(path, names) if path.is_file() else None
    if hit is not None:
        try:
            os.utime(path)  # most recently used: kept by pruning
        except OSError:
            pass
        return hit, True
    result = build()
    try:
        save_entry(path, *result, files=names)
        _prune(folder, KEEP_ENTRIES)
    except OSError:
        pass
    return result, False
