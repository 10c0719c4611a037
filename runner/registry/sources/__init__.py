"""Model sources: the ``model.source`` string of a job file -> a local folder transformers can load.

Two steps, so that job files can be checked without touching the disk or the network:

* :func:`parse_source` (pure, :mod:`.parse`) turns ``"hf:org/name@rev"`` into a typed, frozen
  source object (:mod:`.kinds`), or raises :class:`SourceError` saying what is wrong and how to
  write it instead;
* :func:`resolve_source` (:mod:`.resolve`) finds or fetches the weights and returns a
  :class:`ResolvedModel`: a folder with ``config.json`` + safetensors that
  ``AutoModel*.from_pretrained`` loads directly (checked by :mod:`.folders`), the sha256 of each
  of its files, and the revision that pins it.

Schemes (``SCHEMES``): ``hf:`` (:mod:`.hub`), ``local:``, ``gguf:`` and ``pkg:`` (:mod:`.local`)
resolve here, installed by importing this package; ``registry:`` is resolved by
:mod:`runner.registry.lookup` and ``job:`` by :mod:`runner.lineage`, both plugged in with
:func:`register_resolver` (the registry package must not import the layers that know about
runs: importing ``runner.lineage`` is what makes ``job:`` resolvable).
"""

from runner.registry.sources import hub as _hub  # noqa: F401 - installs the hf: resolver
from runner.registry.sources import local as _local  # noqa: F401 - installs local:, gguf:, pkg:
from runner.registry.sources.folders import check_model_folder
from runner.registry.sources.hub import HUB_ALLOW_PATTERNS, HUB_IGNORE_PATTERNS, hub_offline
from runner.registry.sources.kinds import (
    SCHEMES,
    GGUFSource,
    HubSource,
    JobSource,
    LocalSource,
    ModelSource,
    PackageSource,
    RegistrySource,
    ResolvedModel,
    SourceError,
)
from runner.registry.sources.parse import parse_source
from runner.registry.sources.resolve import DownloadCheck, ResolveContext, register_resolver, resolve_in, resolve_source

__all__ = [
    "HUB_ALLOW_PATTERNS",
    "HUB_IGNORE_PATTERNS",
    "SCHEMES",
    "DownloadCheck",
    "GGUFSource",
    "HubSource",
    "JobSource",
    "LocalSource",
    "ModelSource",
    "PackageSource",
    "RegistrySource",
    "ResolveContext",
    "ResolvedModel",
    "SourceError",
    "check_model_folder",
    "hub_offline",
    "parse_source",
    "register_resolver",
    "resolve_in",
    "resolve_source",
]
