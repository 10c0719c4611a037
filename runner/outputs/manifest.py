"""``manifest.json``: everything needed to say what produced a run's adapter.

Written once when a run starts.  It records inputs (resolved spec and its
hash, model source and checksums, data fingerprint, seed, command line) and
the environment (package versions, Python, platform, git commit), so two runs
that differ in outcome can be diffed for the cause.

No torch import here: versions come from installed-package metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_write_json
from runner.outputs.status import format_utc, utc_now

__all__ = [
    "DEFAULT_PACKAGES",
    "MANIFEST_VERSION",
    "build_manifest",
    "git_info",
    "package_versions",
    "read_manifest",
    "sha256_json",
    "write_manifest",
]

MANIFEST_VERSION = 1

DEFAULT_PACKAGES: tuple[str, ...] = (
    "runner",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "tokenizers",
    "safetensors",
    "huggingface_hub",
    "datasets",
    "bitsandbytes",
    "flash-attn",
    "gguf",
    "numpy",
    "pydantic",
)


def sha256_json(obj: Any) -> str:
    """sha256 of a canonical JSON form: key order and whitespace never change the hash.

    Strict on purpose: NaN or non-JSON types (Path, datetime) raise, because a
    hash of "whatever str() gave" would not be reproducible elsewhere.
    """
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def package_versions(names: Iterable[str] = DEFAULT_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names``; packages that are not installed are left out."""
    from importlib import metadata  # lazy: slow to import, and `runner status` never needs it

    versions: dict[str, str] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def _git(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str] | None:
    # GIT_OPTIONAL_LOCKS=0: `git status` must not rewrite the index of the
    # user's repo behind their back.
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}
    try:
        return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def git_info(cwd: Path | str | None = None) -> dict[str, Any] | None:
    """``{"commit": sha | None, "dirty": bool}`` for the work tree containing ``cwd``.

    None when git is not installed or ``cwd`` is not inside a work tree.
    ``commit`` is None in a repository without commits.  ``dirty`` counts
    changes to tracked files only (untracked scratch files are common and do
    not change what the code does).
    """
    where = Path(cwd) if cwd is not None else Path.cwd()
    if shutil.which("git") is None:
        return None
    inside = _git(["rev-parse", "--is-inside-work-tree"], where)
    if inside is None or inside.returncode != 0 or inside.stdout.strip() != "true":
        return None
    head = _git(["rev-parse", "--verify", "--quiet", "HEAD"], where)
    commit = head.stdout.strip() if head is not None and head.returncode == 0 else None
    status = _git(["status", "--porcelain", "--untracked-files=no"], where)
    dirty = bool(status.stdout.strip()) if status is not None and status.returncode == 0 else None
    return {"commit": commit or None, "dirty": dirty}


def build_manifest(
    *,
    spec: Mapping[str, Any],
    spec_sha256: str,
    model: Mapping[str, Any],
    data_fingerprint: str,
    seed: int,
    command: list[str],
    now: datetime | None = None,
    cwd: Path | str | None = None,
    packages: Iterable[str] = DEFAULT_PACKAGES,
) -> dict[str, Any]:
    """Assemble the manifest (no writing).  ``cwd`` is where to look for a git work tree."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "created": format_utc(now or utc_now()),
        "spec": dict(spec),
        "spec_sha256": spec_sha256,
        "model": dict(model),
        "data_fingerprint": data_fingerprint,
        "seed": seed,
        "command": list(command),
        "packages": package_versions(packages),
        "python": {
            "version": platform.python_version(),
            "implementation": platform.python_implementation(),
            "executable": sys.executable,
        },
        "platform": {
            "system": platform.system(),
            "release": platform.release(),
            "machine": platform.machine(),
            "platform": platform.platform(),
            "hostname": platform.node(),
        },
        "git": git_info(cwd),
    }


def write_manifest(path: Path | str, manifest: Mapping[str, Any]) -> None:
    atomic_write_json(path, dict(manifest))


def read_manifest(path: Path | str) -> dict[str, Any]:
    manifest: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    return manifest
