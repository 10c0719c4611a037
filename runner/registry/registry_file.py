"""The registry file: where it is, reading it, and changing it safely.

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
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pydantic

from runner.fsutil import atomic_write_text, file_lock
from runner.paths import runner_home
from runner.registry.entries import REGISTRY_VERSION, ModelEntry, RegistryFile
from runner.registry.sources import ResolveContext, SourceError

__all__ = [
    "ENV_REGISTRY",
    "REGISTRY_RELPATH",
    "Registry",
    "RegistryError",
    "find_registry",
    "registry_for",
    "utc_now_iso",
]

ENV_REGISTRY = "RUNNER_REGISTRY"
REGISTRY_RELPATH = Path("registry") / "registry.json"


class RegistryError(SourceError):
    """The registry file or an entry is missing, unreadable or in the way (a SourceError, so a job fails as a config error)."""


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ---- where the file is ----------------------------------------------------------------------


def _walk_up(start: Path) -> Iterator[Path]:
    start = start.absolute()
    yield start
    yield from start.parents


def find_registry(
    explicit: Path | str | None = None, *, start: Path | str | None = None, env: Mapping[str, str] | None = None
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
