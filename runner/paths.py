"""Where the runner keeps its state between runs.

One root, ``runner_home()``: ``$RUNNER_HOME`` when set (tests, shared machines, CI), else the
user's cache folder (``$XDG_CACHE_HOME/runner``, usually ``~/.cache/runner``).  Everything
under it can be rebuilt (downloads, converted snapshots, checksum caches), which is why it
lives in a cache folder and not next to the job files.

Callers that receive an explicit ``home`` use it as is: the environment is read only when no
folder is given, so library code stays testable without touching ``os.environ``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from runner.machine import machine_setting

__all__ = [
    "ENV_HOME",
    "adapters_dir",
    "checksums_dir",
    "hub_cache_dir",
    "merged_dir",
    "models_dir",
    "runner_home",
    "snapshots_dir",
]

ENV_HOME = "RUNNER_HOME"


def _user_cache_root() -> Path:
    """The platform's per-user cache folder (no platformdirs dependency for three lines)."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        if base:
            return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg)
    return Path.home() / ".cache"


def runner_home(home: Path | str | None = None, *, create: bool = True) -> Path:
    """The runner's state folder: ``home`` if given, else ``$RUNNER_HOME``, else ``~/.cache/runner``.

    Created on demand (``create=True``) so callers never race to ``mkdir`` it themselves.
    """
    if home is not None:
        path = Path(home).expanduser()
    else:
        env = machine_setting(ENV_HOME)
        path = Path(env).expanduser() if env else _user_cache_root() / "runner"
    path = path.absolute()
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _sub(home: Path | str | None, name: str, create: bool) -> Path:
    path = runner_home(home, create=create) / name
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def hub_cache_dir(home: Path | str | None = None, *, create: bool = True) -> Path:
    """The Hugging Face cache the runner downloads into (``HOME/hub``, the usual hub layout)."""
    return _sub(home, "hub", create)


def snapshots_dir(home: Path | str | None = None, *, create: bool = True) -> Path:
    """Converted models (``HOME/snapshots/<sha256 of the source file>/``), one folder each."""
    return _sub(home, "snapshots", create)


def checksums_dir(home: Path | str | None = None, *, create: bool = True) -> Path:
    """Remembered file hashes for folders the runner does not own (packages, local paths)."""
    return _sub(home, "checksums", create)


def models_dir(home: Path | str | None = None, *, create: bool = True) -> Path:
    """Registry copies of imported folders (``local:``, packaged safetensors): ``HOME/models/<content id>/``."""
    return _sub(home, "models", create)


def adapters_dir(home: Path | str | None = None, *, create: bool = True) -> Path:
    """Registered adapters, copied out of their run: ``HOME/adapters/<job>/<run-id>/``."""
    return _sub(home, "adapters", create)


def merged_dir(home: Path | str | None = None, *, create: bool = True) -> Path:
    """Adapters merged into their base (``job:`` sources, merged entries): ``HOME/merged/<job>/<run-id>/``."""
    return _sub(home, "merged", create)
