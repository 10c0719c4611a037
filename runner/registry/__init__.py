"""Model sources and their resolution to loadable local folders.

Data flows spec -> registry -> data -> train -> outputs: this package takes plain strings and
paths, and imports none of the later layers (the runs layer plugs in the ``job:`` resolver
through :func:`register_resolver`).

The rooms: :mod:`.sources` (parse and resolve ``hf:``, ``local:``, ``gguf:``, ``pkg:``),
:mod:`.registry_file` (the registry file, its lock and atomic writes), :mod:`.folder_facts` and
:mod:`.licenses` (what a model folder is), :mod:`.store` (import, validate, delete, lineage),
:mod:`.lookup` (resolving ``registry:ALIAS``), :mod:`.derived` (adapters merged into their base),
:mod:`.checksums` and :mod:`.gguf_convert` below them all.

Importing this package installs the ``registry:`` resolver (:mod:`runner.registry.lookup`);
``job:`` is installed by :mod:`runner.lineage`, which knows about runs.

Heavy libraries (transformers, huggingface_hub) are imported only when a source is resolved, so
parsing sources while validating job files stays fast.
"""

from runner.registry import lookup as _lookup  # noqa: F401 - installs the registry: resolver
from runner.registry.checksums import (
    ADAPTER_FILE_PATTERNS,
    MODEL_FILE_PATTERNS,
    cached_sha256,
    folder_checksums,
    model_files,
    sha256_file,
)
from runner.registry.folder_facts import WeightsHeaderError, count_parameters, read_safetensors_headers
from runner.registry.gguf_convert import GGUFSnapshot, ensure_gguf_snapshot, gguf_quant_name, gguf_sha256
from runner.registry.registry_file import ENV_REGISTRY, Registry, RegistryError, find_registry
from runner.registry.sources import (
    SCHEMES,
    GGUFSource,
    HubSource,
    JobSource,
    LocalSource,
    ModelSource,
    PackageSource,
    RegistrySource,
    ResolveContext,
    ResolvedModel,
    SourceError,
    check_model_folder,
    hub_offline,
    parse_source,
    register_resolver,
    resolve_in,
    resolve_source,
)
from runner.registry.store import delete_model, import_model, lineage_chain, validate_entry

__all__ = [
    "ADAPTER_FILE_PATTERNS",
    "ENV_REGISTRY",
    "MODEL_FILE_PATTERNS",
    "SCHEMES",
    "GGUFSnapshot",
    "GGUFSource",
    "HubSource",
    "JobSource",
    "LocalSource",
    "ModelSource",
    "PackageSource",
    "Registry",
    "RegistryError",
    "RegistrySource",
    "ResolveContext",
    "ResolvedModel",
    "SourceError",
    "WeightsHeaderError",
    "cached_sha256",
    "check_model_folder",
    "count_parameters",
    "delete_model",
    "ensure_gguf_snapshot",
    "find_registry",
    "folder_checksums",
    "gguf_quant_name",
    "gguf_sha256",
    "hub_offline",
    "import_model",
    "lineage_chain",
    "model_files",
    "parse_source",
    "read_safetensors_headers",
    "register_resolver",
    "resolve_in",
    "resolve_source",
    "sha256_file",
    "validate_entry",
]
