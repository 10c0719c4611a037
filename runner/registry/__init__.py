"""Model sources and their resolution to loadable local folders.

Data flows spec -> registry -> data -> train -> outputs: this package takes plain strings and
paths, and imports none of the later layers (the runs layer plugs in the ``job:`` resolver
through :func:`register_resolver`).

Importing this package installs the ``registry:`` resolver (:mod:`runner.registry.store`);
``job:`` is installed by :mod:`runner.lineage`, which knows about runs.

Heavy libraries (transformers, huggingface_hub) are imported only when a source is resolved, so
parsing sources while validating job files stays fast.
"""

from runner.registry.checksums import (
    ADAPTER_FILE_PATTERNS,
    MODEL_FILE_PATTERNS,
    cached_sha256,
    folder_checksums,
    model_files,
    sha256_file,
)
from runner.registry.gguf_convert import GGUFSnapshot, ensure_gguf_snapshot, gguf_quant_name, gguf_sha256
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
from runner.registry.store import (
    ENV_REGISTRY,
    Registry,
    RegistryError,
    find_registry,
    import_model,
)

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
    "cached_sha256",
    "check_model_folder",
    "ensure_gguf_snapshot",
    "find_registry",
    "folder_checksums",
    "gguf_quant_name",
    "gguf_sha256",
    "hub_offline",
    "import_model",
    "model_files",
    "parse_source",
    "register_resolver",
    "resolve_in",
    "resolve_source",
    "sha256_file",
]
