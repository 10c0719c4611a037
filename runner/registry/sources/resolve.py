"""Resolving a source: one resolver per source type, looked up in a table.

:func:`resolve_source` finds or fetches the weights and returns a
:class:`~runner.registry.sources.kinds.ResolvedModel`. The built-in resolvers (``hf:``,
``local:``, ``gguf:``, ``pkg:``) are installed when :mod:`runner.registry.sources` is imported;
``registry:`` and ``job:`` are plugged in from the layers that know about them with
:func:`register_resolver`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from runner.paths import checksums_dir, runner_home
from runner.registry.gguf_convert import cached_key
from runner.registry.sources.kinds import JobSource, ModelSource, ResolvedModel, SourceError
from runner.registry.sources.parse import parse_source

__all__ = ["DownloadCheck", "ResolveContext", "register_resolver", "resolve_in", "resolve_source"]


# Called before a Hub download with (source, bytes to fetch, number of files); raising refuses it.
DownloadCheck = Callable[[str, int, int], None]


@dataclass(frozen=True)
class ResolveContext:
    """What every resolver needs: the runner's state folder and whether to show progress.

    ``registry`` is the registry file ``registry:`` sources are looked up in (None: found the
    usual way, see :func:`runner.registry.registry_file.find_registry`); ``runs_root`` is where
    ``job:`` sources find runs (None: ``$RUNNER_RUNS`` or ``./runs``); ``before_download`` is
    asked before anything is fetched from the Hub (the size warning of ``runner models import``).
    """

    home: Path
    progress: bool = True
    registry: Path | None = None
    runs_root: Path | None = None
    before_download: DownloadCheck | None = None

    def checksum_cache(self, folder: Path) -> Path:
        """Where to remember the hashes of a folder the runner does not own."""
        return checksums_dir(self.home) / f"folder-{cached_key(str(folder.resolve()))}.json"


S = TypeVar("S")
Resolver = Callable[[Any, ResolveContext], ResolvedModel]
_RESOLVERS: dict[type, Resolver] = {}


def register_resolver(kind: type[S], resolver: Callable[[S, ResolveContext], ResolvedModel]) -> None:
    """Install the resolver for one source type (how ``registry:`` and ``job:`` get plugged in)."""
    _RESOLVERS[kind] = resolver


def resolve_source(
    source: ModelSource | str,
    *,
    home: Path | str | None = None,
    progress: bool = True,
    registry: Path | str | None = None,
    runs_root: Path | str | None = None,
    before_download: DownloadCheck | None = None,
) -> ResolvedModel:
    """Find, fetch or convert the model named by ``source`` (schemes: see :mod:`runner.registry.sources`)."""
    ctx = ResolveContext(
        home=runner_home(home),
        progress=progress,
        registry=Path(registry) if registry is not None else None,
        runs_root=Path(runs_root) if runs_root is not None else None,
        before_download=before_download,
    )
    return resolve_in(ctx, source)


def resolve_in(ctx: ResolveContext, source: ModelSource | str) -> ResolvedModel:
    """Resolve with an existing context: how ``registry:``/``job:`` resolvers resolve the sources they point to."""
    parsed = parse_source(source) if isinstance(source, str) else source
    resolver = _RESOLVERS.get(type(parsed))
    if resolver is None:
        hint = " (import runner.lineage to resolve job: sources)" if isinstance(parsed, JobSource) else ""
        raise SourceError(
            f"{parsed}: {parsed.scheme}: sources cannot be resolved here{hint}; use hf:, local:, gguf:, pkg: or registry:"
        )
    return resolver(parsed, ctx)
