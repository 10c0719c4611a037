"""The typed model registry file: ``registry/registry.json``, alias -> entry.

The file is committed with the jobs (it is the team's list of models, pinned like a lockfile);
the weights it describes live outside git, under ``RUNNER_HOME`` (see :mod:`runner.paths`), at
``store`` (a path relative to ``RUNNER_HOME``, so the same file works on every machine).

``schemas/registry.schema.json`` is generated from these classes (``python -m
runner.registry.schema``) and a test keeps the two identical.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

ALIAS_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
REGISTRY_VERSION: Final = 1

ModelKind = Literal["causal-lm", "embedding", "image-text-embedding"]
MODEL_KINDS: tuple[str, ...] = ("causal-lm", "embedding", "image-text-embedding")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Lineage(_Strict):
    """Where a fine-tuned entry came from: the job, its run, and the exact base it was trained on."""

    fine_tuned_from: str | None = Field(
        description="Alias of the registry entry the job trained on; null when its base is not registered (see base_source)."
    )
    base_source: str = Field(description="The job's model.source, as written (e.g. 'registry:smollm2', 'job:sft-a').")
    job: str = Field(description="Name of the job that produced this model.")
    run_id: str = Field(description="The run (runs/<job>/<run-id>/) whose result this is.")
    spec_sha256: str = Field(description="sha256 of the job file the run was started from.")
    method: Literal["lora", "qlora", "full"] = Field(description="What was trained (adapter.method of the job).")
    form: Literal["adapter", "merged"] = Field(
        description=(
            "'adapter': the store holds the LoRA adapter only and loading merges it into the base "
            "(cached); 'merged': the store holds a full model (adapter folded into the base, or a full fine-tune)."
        )
    )
    base: dict[str, Any] = Field(
        description=(
            "The base model as the run recorded it: source, revision, alias, path, per-file sha256 "
            "and, for a fine-tuned base, its own lineage (recursively)."
        )
    )


class ModelEntry(_Strict):
    """One registered model."""

    source: str = Field(
        description=(
            "Where the model came from, pinned: 'hf:ORG/NAME@COMMIT', 'local:PATH', 'gguf:PATH#FILE', "
            "'pkg:PACKAGE[/SUBPATH]', or 'job:NAME' for a job's result (run id in revision)."
        )
    )
    revision: str | None = Field(
        None,
        description="Hub commit, GGUF file sha256, content id of a copied folder, or the run id of a fine-tuned entry.",
    )
    kind: ModelKind = Field(description="Model family.")
    architecture: str | None = Field(None, description="config.json 'architectures[0]' (e.g. LlamaForCausalLM).")
    model_type: str | None = Field(None, description="config.json 'model_type' (e.g. llama, bert).")
    parameters: int | None = Field(
        None, ge=0, description="Parameters in the stored weights (of the adapter, for adapter entries)."
    )
    license: str | None = Field(
        None, description="License identifier, as read from the model card, config, GGUF metadata or package."
    )
    license_from: str | None = Field(None, description="Where the license was read.")
    size_bytes: int = Field(ge=0, description="Bytes on disk of the stored files.")
    store: str = Field(description="Folder of the stored files, relative to RUNNER_HOME (posix separators).")
    files: dict[str, str] = Field(description="Stored file (relative name) -> sha256.")
    format_note: str | None = Field(
        None, description="How the stored copy was made (Hub snapshot, converted from GGUF Q4_1, ...)."
    )
    imported_at: str = Field(description="When the entry was written (UTC, ISO 8601).")
    lineage: Lineage | None = Field(None, description="For fine-tuned entries: what they were trained from.")


class RegistryFile(_Strict):
    """The whole registry file."""

    schema_ref: str | None = Field(
        None, alias="$schema", description="Path or URL of this file's JSON Schema (for editors)."
    )
    version: Literal[1] = Field(REGISTRY_VERSION, description="Format version of the registry file.")
    models: dict[str, ModelEntry] = Field(
        default_factory=dict,
        description="Alias -> entry. Aliases use lowercase letters, digits, '.', '_' or '-' (at most 64).",
        json_schema_extra={"propertyNames": {"pattern": ALIAS_PATTERN}},
    )
