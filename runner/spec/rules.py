"""Cross-field rules: checks the schema cannot express, run before any weights or data load.

Each rule returns (path, message) pairs; the loader turns paths into file positions. A message
says what is wrong and how to fix it, in the words of the job file.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from runner.spec.model import PREFERENCE_LOSSES, REFERENCE_FREE_LOSSES, JobSpec

Problem = tuple[tuple[str | int, ...], str]
Rule = Callable[[JobSpec], Iterator[Problem]]

CAUSAL_FORMATS = {"alpaca", "sharegpt", "messages", "text", "segments", "prompt-completion"}
TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")
EMBEDDING_FORMATS = {"pairs", "triplets", "scored-pairs", "image-text"}
EMBEDDING_LOSSES = {"contrastive", "matryoshka", "cosent", "multi-task"}
PREFERENCE_FORMATS = {"preference", "sharegpt-preference", "alpaca-preference", "unpaired-preference"}
# a preference setting -> the losses it applies to
PREFERENCE_SETTINGS = {
    "beta": PREFERENCE_LOSSES,
    "label_smoothing": ("dpo", "simpo"),
    "gamma": ("simpo",),
    "sft_weight": ("orpo",),
    "desirable_weight": ("kto",),
    "undesirable_weight": ("kto",),
    "reference": ("dpo", "ipo", "kto"),
}


def _qlora_needs_cuda(spec: JobSpec) -> Iterator[Problem]:
    if spec.adapter.method == "qlora" and spec.resources.device != "cuda" and not spec.adapter.allow_cpu:
        yield (
            ("adapter", "method"),
            (
                'qlora needs a CUDA device: set resources.device = "cuda", '
                "or adapter.allow_cpu = true to run the 4-bit base on the CPU (slow)"
            ),
        )


def _qlora_settings(spec: JobSpec) -> Iterator[Problem]:
    adapter, resources = spec.adapter, spec.resources
    if adapter.compute_dtype != "auto" and adapter.method != "qlora":
        yield ("adapter", "compute_dtype"), 'compute_dtype only applies to method = "qlora"'
    elif adapter.compute_dtype == "float16" and resources.device == "cpu":
        yield ("adapter", "compute_dtype"), 'float16 compute needs a CUDA device; use "float32" on the CPU'
    if adapter.method == "qlora" and resources.strategy == "fsdp":
        yield (
            ("resources", "strategy"),
            ('fsdp does not shard a 4-bit (qlora) base here; use strategy = "ddp", or method = "lora" with fsdp'),
        )


def _format_fits_model(spec: JobSpec) -> Iterator[Problem]:
    kind, fmt = spec.model.kind, spec.data.format
    if kind == "causal-lm" and fmt in EMBEDDING_FORMATS:
        yield (
            ("data", "format"),
            (
                f"format '{fmt}' is for embedding models but model.kind is 'causal-lm'; "
                f"use one of {', '.join(sorted(CAUSAL_FORMATS))} or set model.kind"
            ),
        )
    if kind != "causal-lm" and (fmt in CAUSAL_FORMATS or fmt in PREFERENCE_FORMATS):
        yield (
            ("data", "format"),
            (
                f"format '{fmt}' is for causal LMs but model.kind is '{kind}'; "
                f"use one of {', '.join(sorted(EMBEDDING_FORMATS))}"
            ),
        )
    if fmt == "image-text" and kind != "image-text-embedding":
        yield ("data", "format"), 'image-text data needs model.kind = "image-text-embedding"'
    image_mapped = "image" in spec.data.fields or "query_image" in spec.data.fields
    if kind == "image-text-embedding" and fmt not in ("auto", "image-text") and not image_mapped:
        yield (
            ("data", "format"),
            (
                'an image-text-embedding model needs image-text data: set data.format = "image-text" '
                'or map the image field with data.fields = { image = "..." }'
            ),
        )


def _loss_fits_model(spec: JobSpec) -> Iterator[Problem]:
    loss = spec.loss.type
    if spec.model.kind != "causal-lm" and loss in PREFERENCE_LOSSES:
        yield (
            ("loss", "type"),
            (f"loss '{loss}' tunes a causal LM on preference data; model.kind is '{spec.model.kind}'"),
        )
    if spec.model.kind == "causal-lm" and loss in EMBEDDING_LOSSES:
        yield ("loss", "type"), f"loss '{loss}' is for embedding models; causal LMs use 'causal-lm' (or 'auto')"
    if spec.model.kind != "causal-lm" and loss == "causal-lm":
        yield (
            ("loss", "type"),
            (
                f"loss 'causal-lm' does not apply to model.kind '{spec.model.kind}'; "
                "use contrastive, matryoshka, cosent or multi-task"
            ),
        )
    if loss == "cosent" and spec.data.format not in ("auto", "scored-pairs"):
        yield ("loss", "type"), 'cosent needs scored pairs: set data.format = "scored-pairs"'


def _preference_data(spec: JobSpec) -> Iterator[Problem]:
    """Preference losses train on preference data, and preference data needs a preference loss."""
    loss, fmt = spec.loss_type, spec.data.format
    if loss in PREFERENCE_LOSSES and fmt not in ("auto", *PREFERENCE_FORMATS):
        yield (
            ("data", "format"),
            (
                f"loss '{loss}' trains on preference data (a prompt with a chosen and a rejected reply); format '{fmt}' "
                f"has none: use one of {', '.join(sorted(PREFERENCE_FORMATS))} (or 'auto')"
            ),
        )
    if loss not in PREFERENCE_LOSSES and fmt in PREFERENCE_FORMATS:
        yield (
            ("loss", "type"),
            (f"format '{fmt}' is preference data: set loss.type to one of {', '.join(PREFERENCE_LOSSES)}"),
        )
    if loss in PREFERENCE_LOSSES and loss != "kto" and fmt == "unpaired-preference":
        yield (
            ("data", "format"),
            (
                f"{loss} compares a chosen with a rejected reply, and unpaired data has one completion per record: "
                'train it with loss.type = "kto"'
            ),
        )
    if loss == "kto" and spec.train.batch_size < 2:
        yield (
            ("train", "batch_size"),
            (
                "kto estimates its reference point from completions paired with another example's prompt in the "
                "same batch: set batch_size to 2 or more"
            ),
        )
    if loss in PREFERENCE_LOSSES and spec.data.train_on_prompt:
        yield ("data", "train_on_prompt"), "preference losses score the replies only; remove train_on_prompt"
    if loss in PREFERENCE_LOSSES and spec.data.domain_field is not None:
        yield ("data", "domain_field"), "domain_field applies to SFT data; remove it for a preference loss"


def _preference_settings(spec: JobSpec) -> Iterator[Problem]:
    """Each preference setting given only where it means something, and a reference that exists."""
    loss, method = spec.loss_type, spec.adapter.method
    for key in sorted(spec.loss.model_fields_set & set(PREFERENCE_SETTINGS)):
        applies = PREFERENCE_SETTINGS[key]
        if loss in applies:
            continue
        if key == "reference" and loss in REFERENCE_FREE_LOSSES:
            yield ("loss", key), f"{loss} has no reference model (it is reference-free): remove loss.reference"
        else:
            yield ("loss", key), f"{key} only applies to loss.type {' / '.join(repr(a) for a in applies)}"
    if loss in PREFERENCE_SETTINGS["reference"]:
        if spec.loss.reference == "adapter-off" and method == "full":
            yield (
                ("loss", "reference"),
                (
                    'full fine-tuning has no adapter to switch off: use reference = "copy" (a frozen copy) or '
                    '"precompute" (computed once, cached)'
                ),
            )
        if spec.loss.reference == "copy" and method != "full":
            yield (
                ("loss", "reference"),
                (
                    f"with {method} the reference is the same model with its adapter switched off, so a copy only costs "
                    'memory: use reference = "adapter-off" (or "auto"), or "precompute"'
                ),
            )


def _matryoshka_dims(spec: JobSpec) -> Iterator[Problem]:
    dims = spec.loss.dims
    if spec.loss.type == "matryoshka":
        if not dims:
            yield ("loss", "type"), "matryoshka needs loss.dims, e.g. dims = [384, 256, 128, 64]"
        elif any(a <= b for a, b in itertools.pairwise(dims)):
            yield ("loss", "dims"), f"dims must be strictly descending, found {dims}"
        projection = spec.model.projection_dim
        if projection is not None and dims and dims[0] > projection:
            yield (
                ("loss", "dims"),
                (
                    f"dims cannot exceed the embedding size: the largest is {dims[0]} but model.projection_dim is {projection}"
                ),
            )
        if spec.loss.dim_weights and len(spec.loss.dim_weights) != len(dims):
            yield (
                ("loss", "dim_weights"),
                (f"dim_weights needs one weight per dimension: {len(dims)} dims, {len(spec.loss.dim_weights)} weights"),
            )
    else:
        if dims:
            yield ("loss", "dims"), 'dims only apply to loss.type = "matryoshka"'
        if spec.loss.dim_weights:
            yield ("loss", "dim_weights"), 'dim_weights only apply to loss.type = "matryoshka"'


def _multi_task(spec: JobSpec) -> Iterator[Problem]:
    if spec.loss.type == "multi-task" and not spec.loss.tasks:
        yield ("loss", "type"), ('multi-task needs loss.tasks, e.g. [loss.tasks.retrieval] type = "contrastive"')
    if spec.loss.type != "multi-task" and spec.loss.tasks:
        yield ("loss", "tasks"), 'tasks only apply to loss.type = "multi-task"'
    for task in spec.loss.tasks:
        if task in "lora_":  # peft matches adapter names inside parameter names; this one would collide
            yield (
                ("loss", "tasks", task),
                (
                    f"task name '{task}' cannot name a LoRA adapter (it is part of peft's 'lora_' prefix); use a longer name"
                ),
            )
    if spec.loss.type == "multi-task" and spec.adapter.method == "full":
        yield ("adapter", "method"), 'multi-task trains one LoRA adapter per task; use method = "lora" or "qlora"'


def _projection_embeddings_only(spec: JobSpec) -> Iterator[Problem]:
    if spec.model.projection_dim is not None and spec.model.kind == "causal-lm":
        yield ("model", "projection_dim"), "projection_dim applies to embedding models; remove it for a causal LM"


def _packing_causal_only(spec: JobSpec) -> Iterator[Problem]:
    if spec.data.packing and spec.model.kind != "causal-lm":
        yield ("data", "packing"), "packing only applies to causal LMs; remove it or set it to false"


def _eval_needs_data(spec: JobSpec) -> Iterator[Problem]:
    has_eval = bool(spec.data.eval) or spec.data.eval_fraction > 0
    if not has_eval:
        for key in sorted(spec.eval.model_fields_set):
            if key in ("at_start", "at_end") and not getattr(spec.eval, key):
                continue  # turning evaluation off needs no data
            what = "evaluation needs data" if key == "every" else f"eval.{key} has no effect without eval data"
            yield ("eval", key), f"{what}: set data.eval (files) or data.eval_fraction, or remove it"
    if spec.data.eval and spec.data.eval_fraction > 0:
        yield ("data", "eval_fraction"), "set either data.eval or data.eval_fraction, not both"


def _data_sources(spec: JobSpec) -> Iterator[Problem]:
    """hf: data sets are well formed; plain text files are read as the text format only."""
    from runner.spec.data_source import DataSourceError, is_hub_data, parse_hub_data

    for key in ("train", "eval"):
        for index, value in enumerate(getattr(spec.data, key)):
            if is_hub_data(value):
                try:
                    parse_hub_data(value)
                except DataSourceError as exc:
                    yield ("data", key, index), str(exc)
            elif value.lower().endswith(".txt") and spec.data.format not in ("auto", "text"):
                yield (
                    ("data", key, index),
                    (
                        f"'{value}' is plain text, read as one document per {spec.data.text_unit}: it needs "
                        f'data.format = "text" (or "auto"), not "{spec.data.format}"'
                    ),
                )
            elif value.lower().endswith(".txt") and spec.model.kind != "causal-lm":
                yield ("data", key, index), f"'{value}' is plain text, which trains causal LMs only (format text)"


def _roles_distinct(spec: JobSpec) -> Iterator[Problem]:
    seen: dict[str, str] = {}
    for role, names in spec.data.roles.items():
        for name in names:
            if name in seen and seen[name] != role:
                yield ("data", "roles", role), f"'{name}' is listed for both {seen[name]} and {role}; keep it in one"
            seen[name] = role


def _source_well_formed(spec: JobSpec) -> Iterator[Problem]:
    """The source's own syntax (hf: repo ids, gguf: file names, pkg: import names), without the disk."""
    from runner.registry import SourceError, parse_source  # pure parsing; imported when first needed

    try:
        parse_source(spec.model.source)
    except SourceError as exc:
        yield ("model", "source"), str(exc)


def _device_precision(spec: JobSpec) -> Iterator[Problem]:
    if spec.resources.device == "cpu":
        if spec.resources.precision == "fp16":
            yield ("resources", "precision"), 'fp16 needs a CUDA device; use "fp32" or "bf16" on the CPU'
        if spec.model.attn_implementation == "flash_attention_2":
            yield ("model", "attn_implementation"), 'flash_attention_2 needs a CUDA device; use "sdpa" on the CPU'
    if spec.resources.strategy == "fsdp" and spec.resources.world_size == 1:
        yield ("resources", "strategy"), 'fsdp shards across processes: set resources.nproc > 1, or use "ddp"'
    elif spec.resources.strategy == "fsdp" and spec.resources.device == "cpu":
        yield (
            ("resources", "strategy"),
            (
                "fsdp does not shard on the CPU (gloo): the Trainer would silently run DDP; "
                'use strategy = "ddp" on the CPU, or device = "cuda"'
            ),
        )


def _no_self_reference(spec: JobSpec) -> Iterator[Problem]:
    if spec.name is not None and spec.model.source == f"job:{spec.name}":
        yield ("model", "source"), "a job cannot fine-tune its own output; name another job"


# sbatch options the runner sets itself from [resources] (or that would break its one-job-per-run
# model: arrays, blocking, requeueing behind its back); long name -> the key to use instead.
SBATCH_RESERVED = {
    "nodes": "resources.nodes",
    "ntasks": "resources.nproc",
    "ntasks-per-node": "resources.nproc",
    "cpus-per-task": "resources.cpus_per_node",
    "gpus-per-node": "resources.gpus_per_node",
    "mem": "resources.memory",
    "time": "resources.time_limit",
    "partition": "resources.slurm.partition",
    "account": "resources.slurm.account",
    "output": None,
    "error": None,
    "open-mode": None,
    "array": None,
    "requeue": None,
    "wrap": None,
    "parsable": None,
    "wait": None,
    "test-only": None,
}
SBATCH_SHORT = {
    "N": "nodes",
    "n": "ntasks",
    "c": "cpus-per-task",
    "t": "time",
    "p": "partition",
    "A": "account",
    "o": "output",
    "e": "error",
    "a": "array",
    "W": "wait",
}


def sbatch_option_name(option: str) -> str:
    """'--qos=high' -> 'qos', '-p gpu' / '-pgpu' -> 'partition' (short names that matter are expanded)."""
    if option.startswith("--"):
        return option[2:].split("=", 1)[0].strip()
    letter = option[1:2]
    return SBATCH_SHORT.get(letter, letter)


def _slurm_options(spec: JobSpec) -> Iterator[Problem]:
    for index, option in enumerate(spec.resources.slurm.options):
        name = sbatch_option_name(option)
        if name in SBATCH_RESERVED:
            key = SBATCH_RESERVED[name]
            yield (
                ("resources", "slurm", "options", index),
                (f"'{option}': the runner sets --{name} itself" + (f"; use {key} instead" if key else "; remove it")),
            )


RULES: tuple[Rule, ...] = (
    _qlora_needs_cuda,
    _qlora_settings,
    _format_fits_model,
    _loss_fits_model,
    _preference_data,
    _preference_settings,
    _matryoshka_dims,
    _multi_task,
    _projection_embeddings_only,
    _packing_causal_only,
    _eval_needs_data,
    _data_sources,
    _roles_distinct,
    _source_well_formed,
    _device_precision,
    _no_self_reference,
    _slurm_options,
)


def check_rules(spec: JobSpec) -> list[Problem]:
    return [problem for rule in RULES for problem in rule(spec)]
