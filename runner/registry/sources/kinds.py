"""The typed model sources (one frozen dataclass per scheme) and what resolving one gives.

:mod:`runner.registry.sources.parse` makes them from the ``model.source`` string of a job file;
the resolvers (:mod:`~runner.registry.sources.local`, :mod:`~runner.registry.sources.hub`, and
the ``registry:`` / ``job:`` ones plugged in from above) turn them into a :class:`ResolvedModel`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "SCHEMES",
    "GGUFSource",
    "HubSource",
    "JobSource",
    "LocalSource",
    "ModelSource",
    "PackageSource",
    "RegistrySource",
    "ResolvedModel",
    "SourceError",
]

SCHEMES: tuple[str, ...] = ("hf", "local", "gguf", "pkg", "registry", "job")


class SourceError(ValueError):
    """A model source that cannot be parsed or resolved; the message says what to write instead."""


@dataclass(frozen=True)
class HubSource:
    """``hf:ORG/NAME[@REVISION]``: a Hugging Face Hub repo, at a branch, tag or commit."""

    scheme: ClassVar[str] = "hf"
    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return f"hf:{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class LocalSource:
    """``local:PATH``: a folder with config.json and safetensors weights."""

    scheme: ClassVar[str] = "local"
    path: Path

    def __str__(self) -> str:
        return f"local:{self.path.as_posix()}"


@dataclass(frozen=True)
class GGUFSource:
    """``gguf:FOLDER#FILE.gguf`` or ``gguf:FOLDER/FILE.gguf``: one GGUF file, converted once."""

    scheme: ClassVar[str] = "gguf"
    folder: Path
    filename: str

    @property
    def path(self) -> Path:
        return self.folder / self.filename

    def __str__(self) -> str:
        return f"gguf:{self.folder.as_posix()}#{self.filename}"


@dataclass(frozen=True)
class PackageSource:
    """``pkg:PACKAGE[/SUBPATH]``: weights shipped inside an installed Python package."""

    scheme: ClassVar[str] = "pkg"
    package: str
    subpath: str | None = None

    def __str__(self) -> str:
        return f"pkg:{self.package}" + (f"/{self.subpath}" if self.subpath else "")


@dataclass(frozen=True)
class RegistrySource:
    """``registry:ALIAS``: a model registered under an alias (resolved by the registry layer)."""

    scheme: ClassVar[str] = "registry"
    alias: str

    def __str__(self) -> str:
        return f"registry:{self.alias}"


@dataclass(frozen=True)
class JobSource:
    """``job:NAME``: the output of another job's latest successful run (resolved by the runs layer)."""

    scheme: ClassVar[str] = "job"
    name: str

    def __str__(self) -> str:
        return f"job:{self.name}"


ModelSource = HubSource | LocalSource | GGUFSource | PackageSource | RegistrySource | JobSource


@dataclass(frozen=True)
class ResolvedModel:
    """A model ready to load: ``from_pretrained(path)`` works offline, with safetensors weights.

    ``files`` pins the content (relative name -> sha256); ``revision`` is the Hub commit, the
    GGUF file's sha256, the run id of a ``job:`` result, or None for folders that have no
    revision of their own.  ``alias`` is the registry alias the model is known by (when it is a
    registry entry), ``lineage`` what a fine-tuned model was made from (job, run, base: the base's
    own model info, recursively), or None for a base model.
    """

    path: Path
    source: str
    revision: str | None
    files: Mapping[str, str] = field(default_factory=dict)
    format_note: str | None = None
    alias: str | None = None
    lineage: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, for run manifests."""
        return {
            "path": str(self.path),
            "source": self.source,
            "revision": self.revision,
            "files": dict(self.files),
            "format_note": self.format_note,
            "alias": self.alias,
            "lineage": dict(self.lineage) if self.lineage is not None else None,
        }
