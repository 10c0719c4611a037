"""Axolotl training config (``axolotl train x.yml``) -> job.

Each entry of ``datasets`` (and ``test_datasets``) is a local file (``path`` of an existing file,
or ``path: json`` with ``data_files``) or a Hub data set (``path`` + ``name`` / ``split`` /
``revision`` as an ``hf:`` source). Its ``type`` gives data.format: alpaca, sharegpt, completion
(text), input_output (segments), chat_template (messages, with ``field_messages``,
``message_property_mappings`` or the older ``message_field_role`` / ``message_field_content``,
``roles``, ``message_field_training`` as data.fields / data.roles), or a custom instruction type
(``field_instruction`` ...). Axolotl's defaults are written out where they differ from the
runner's (LoRA rank 8 and alpha 16 when unset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.spec.convert.common import (
    OPTIMIZERS,
    SCHEDULERS,
    Conversion,
    ConvertError,
    choose,
    copy_numbers,
    copy_whole_numbers,
    model_source,
    positive_int,
    precision,
)

MARKERS = ("base_model", "datasets", "sequence_len", "micro_batch_size", "num_epochs", "adapter", "lora_r")
TYPES = {
    "alpaca": "alpaca",
    "sharegpt": "sharegpt",
    "completion": "text",
    "input_output": "segments",
    "chat_template": "messages",
}
IGNORED = {
    "model_type": "the runner loads causal LMs with AutoModelForCausalLM",
    "tokenizer_type": "the model's own tokenizer is used (AutoTokenizer)",
    "strict": "not a setting here",
    "output_dir": "runs are written under runs/<job>/<run-id>/ (status, metrics, checkpoints, adapter)",
    "dataset_prepared_path": "tokenised data is cached by content under RUNNER_HOME/data-cache/",
    "lora_model_dir": "continuing from a saved adapter is not a setting here",
    "pad_to_sequence_len": "batches are padded to their longest example (or packed)",
    "eval_sample_packing": "evaluation batches are packed as training batches are",
    "group_by_length": "not a setting here",
    "tf32": "not a setting here",
    "lora_fan_in_fan_out": "not needed for the models the runner trains",
    "special_tokens": "the tokenizer's own special tokens are used",
    "chat_template": "the model's own chat template (tokenizer_config.json) is used; check what it renders with "
    "runner data validate --job",
    "resume_from_checkpoint": "an interrupted run resumes from its last complete checkpoint by itself",
    "auto_resume_from_checkpoints": "an interrupted run resumes from its last complete checkpoint by itself",
    "early_stopping_patience": "not a setting here",
    "warmup_steps": "warm-up is a share of the steps here (train.warmup_ratio)",
    "evals_per_epoch": "evaluation runs every N steps (eval.every), before and after training",
    "saves_per_epoch": "checkpoints are written every N steps (train.save_every)",
    "xformers_attention": "attention is sdpa, or flash_attention_2 where installed (model.attn_implementation)",
    "wandb_entity": "set by the tracker's own environment (WANDB_ENTITY)",
    "wandb_watch": "not a setting here",
    "wandb_name": "runs are named by the runner",
    "wandb_log_model": "the adapter is saved in the run's folder",
    "deepspeed": "processes and sharding are resources.nproc and resources.strategy",
    "fsdp": "processes and sharding are resources.nproc and resources.strategy (fsdp)",
    "fsdp_config": "processes and sharding are resources.nproc and resources.strategy (fsdp)",
    "logging_steps": None,
    "save_steps": None,
    "eval_steps": None,
}


def convert(config: dict[str, Any], conv: Conversion) -> None:
    if config.get("rl") or config.get("reward_model"):
        raise ConvertError(
            f"rl: {config.get('rl') or 'reward_model'}: only supervised fine-tuning configs convert into a job here"
        )
    model_source(conv, config.get("base_model"), "base_model", config.get("revision_of_model"))
    if config.get("trust_remote_code"):
        conv.set("model.trust_remote_code", True, "trust_remote_code")
    _adapter(config, conv)
    _datasets(config, conv)
    _training(config, conv)
    handled = {
        "base_model",
        "revision_of_model",
        "trust_remote_code",
        "adapter",
        "load_in_4bit",
        "load_in_8bit",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "lora_target_modules",
        "lora_target_linear",
        "bnb_config_kwargs",
        "datasets",
        "test_datasets",
        "val_set_size",
        "sequence_len",
        "sample_packing",
        "train_on_inputs",
        *TRAINING_KEYS,
    }
    for key, value in config.items():
        if key in handled or (key in IGNORED and IGNORED[key] is None) or value in (None, "", [], {}):
            continue
        conv.skip(key, IGNORED.get(key) or "no counterpart in a job file")


def _adapter(config: dict[str, Any], conv: Conversion) -> None:
    adapter = config.get("adapter")
    if adapter in (None, "", "full"):
        conv.set("adapter.method", "full", conv.origin(config, "adapter"))
    elif adapter in ("lora", "qlora"):
        four_bit = adapter == "qlora" or config.get("load_in_4bit")
        conv.set("adapter.method", "qlora" if four_bit else "lora", "adapter")
    else:
        conv.set("adapter.method", "lora")
        conv.skip("adapter", f"{adapter!r} is not a method here; converted to lora (lora, qlora or full)")
    if config.get("load_in_8bit"):
        conv.skip("load_in_8bit", "8-bit bases are not supported; the base is trained in full precision")
    if conv.get("adapter.method") == "qlora":
        bnb = dict(config.get("bnb_config_kwargs") or {})
        conv.set("adapter.quant_type", bnb.pop("bnb_4bit_quant_type", "nf4"), "bnb_config_kwargs")
        conv.set("adapter.double_quant", bool(bnb.pop("bnb_4bit_use_double_quant", True)), "bnb_config_kwargs")
        for key in bnb:
            conv.skip(f"bnb_config_kwargs.{key}", "not a setting here")
    if conv.get("adapter.method") in ("lora", "qlora"):
        conv.set("adapter.r", config.get("lora_r") or 8, conv.origin(config, "lora_r"))
        conv.set("adapter.alpha", config.get("lora_alpha") or 16, conv.origin(config, "lora_alpha"))
        conv.set("adapter.dropout", float(config.get("lora_dropout") or 0.0), conv.origin(config, "lora_dropout"))
        modules = config.get("lora_target_modules")
        if config.get("lora_target_linear"):
            conv.set("adapter.target_modules", ["all-linear"], "lora_target_linear")
            if modules:
                conv.skip("lora_target_modules", "lora_target_linear: true adapts every linear layer already")
        elif modules:
            conv.set(
                "adapter.target_modules",
                [modules] if isinstance(modules, str) else list(modules),
                "lora_target_modules",
            )


def _datasets(config: dict[str, Any], conv: Conversion) -> None:
    formats: set[str] = set()
    fields: dict[str, str] = {}
    roles: dict[str, list[str]] = {}
    for key, target in (("datasets", "data.train"), ("test_datasets", "data.eval")):
        entries = config.get(key) or []
        if isinstance(entries, dict):
            entries = [entries]
        sources: list[str] = []
        for n, entry in enumerate(entries):
            if not isinstance(entry, dict) or not entry.get("path"):
                conv.skip(f"{key}[{n}]", "a data set needs a 'path'")
                continue
            sources += _sources(entry, f"{key}[{n}]", conv)
            formats.add(_entry_format(entry, f"{key}[{n}]", conv, fields, roles))
        if sources:
            conv.set(target, sources, key)
    if not conv.get("data.train"):
        raise ConvertError("datasets: the config names no data set that can be read here")
    formats.discard("auto")
    conv.set("data.format", formats.pop() if len(formats) == 1 else "auto", "datasets[].type")
    if formats:
        conv.notes.append('the data sets have different layouts: data.format = "auto" detects each file\'s own')
    if fields:
        conv.set("data.fields", fields, "datasets[].field_*")
    if roles:
        conv.set("data.roles", roles, "datasets[].roles")
    conv.set("data.max_length", config.get("sequence_len") or 2048, conv.origin(config, "sequence_len"))
    if config.get("sample_packing"):
        conv.set("data.packing", True, "sample_packing")
    if config.get("train_on_inputs"):
        conv.set("data.train_on_prompt", True, "train_on_inputs")
    val = config.get("val_set_size")
    if isinstance(val, float) and 0 < val < 1 and not conv.get("data.eval"):
        conv.set("data.eval_fraction", val, "val_set_size")
    elif val:
        conv.skip("val_set_size", f"{val!r}: a held-out share is a fraction below 1 (data.eval_fraction)")


def _sources(entry: dict[str, Any], where: str, conv: Conversion) -> list[str]:
    path, base = str(entry["path"]), conv.source.parent
    files = entry.get("data_files")
    if path in ("json", "csv", "parquet", "text", "arrow") or entry.get("ds_type"):
        listed = [files] if isinstance(files, str) else list(files or [])
        if path not in ("json", "csv", "parquet", "text", "arrow"):
            listed = listed or [path]
        return [conv.path(f, base=base) for f in listed]
    if (base / path).exists() or path.startswith((".", "/", "~")):
        candidate = base / path
        if candidate.is_dir():
            found = sorted(
                p
                for p in candidate.rglob("*")
                if p.is_file() and p.suffix.lower() in (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
            )
            return [conv.path(p, base=Path("/")) for p in found]
        return [conv.path(path, base=base)]
    query = f"?split={entry.get('split') or 'train'}" + (f"&subset={entry['name']}" if entry.get("name") else "")
    revision = f"@{entry['revision']}" if entry.get("revision") else ""
    if files:
        conv.skip(f"{where}.data_files", "files inside a Hub data set are not picked one by one; the split is read")
    return [f"hf:{path}{revision}{query}"]


def _entry_format(
    entry: dict[str, Any], where: str, conv: Conversion, fields: dict[str, str], roles: dict[str, list[str]]
) -> str:
    kind = entry.get("type")
    if isinstance(kind, dict):  # a custom instruction type: its field names, and a prompt format
        for key, canonical in (
            ("field_instruction", "instruction"),
            ("field_input", "input"),
            ("field_output", "output"),
            ("field_system", "system"),
        ):
            if kind.get(key) and kind[key] != canonical:
                _field(fields, canonical, kind[key], where, conv)
        for key in ("format", "no_input_format", "system_prompt", "system_format"):
            if key in kind:
                conv.skip(f"{where}.type.{key}", "the model's chat template renders the prompt")
        return "alpaca"
    name = str(kind or "").split(":")[0].split(".")[0]
    fmt = TYPES.get(name)
    if fmt is None:
        conv.skip(f"{where}.type", f"{kind!r} is not a layout the runner reads by name; the format is auto-detected")
        return "auto"
    if fmt == "text" and entry.get("field") and entry["field"] != "text":
        _field(fields, "text", entry["field"], where, conv)
    if fmt == "messages":
        _chat_template(entry, where, conv, fields, roles)
    for key in (
        "conversation",
        "chat_template",
        "chat_template_jinja",
        "train_on_eos",
        "train_on_eot",
        "message_field_training_detail",
        "drop_system_message",
        "split_thinking",
        "shards",
        "shards_idx",
    ):
        if entry.get(key) not in (None, ""):
            conv.skip(f"{where}.{key}", IGNORED.get(key) or "not a setting here")
    return fmt


def _chat_template(
    entry: dict[str, Any], where: str, conv: Conversion, fields: dict[str, str], roles: dict[str, list[str]]
) -> None:
    messages = entry.get("field_messages", "messages")
    if messages not in ("messages", "conversations"):
        _field(fields, "conversations", messages, where, conv)
    mappings = dict(entry.get("message_property_mappings") or {})
    mappings.setdefault("role", entry.get("message_field_role", "role"))
    mappings.setdefault("content", entry.get("message_field_content", "content"))
    for canonical in ("role", "content"):
        if mappings[canonical] not in (canonical, {"role": "from", "content": "value"}[canonical]):
            _field(fields, canonical, mappings[canonical], where, conv)
    if entry.get("message_field_training"):
        _field(fields, "loss_weight", entry["message_field_training"], where, conv)
    if entry.get("field_system") and entry["field_system"] != "system":
        _field(fields, "system", entry["field_system"], where, conv)
    known = {
        "user": ("human", "user"),
        "assistant": ("gpt", "assistant"),
        "system": ("system",),
        "tool": ("tool", "observation"),
    }
    for role, names in (entry.get("roles") or {}).items():
        if role not in known:
            conv.skip(f"{where}.roles.{role}", "the roles are system, user, assistant and tool")
            continue
        extra = [n for n in ([names] if isinstance(names, str) else names) if n not in known[role]]
        if extra:
            roles.setdefault(role, []).extend(n for n in extra if n not in roles.get(role, []))
    trained = entry.get("roles_to_train")
    if trained not in (None, ["assistant"]):
        conv.skip(
            f"{where}.roles_to_train",
            f"{trained!r}: assistant turns are trained (data.train_on_prompt "
            "trains every turn; a message's loss_weight trains or masks it)",
        )


def _field(fields: dict[str, str], canonical: str, value: str, where: str, conv: Conversion) -> None:
    if canonical in fields and fields[canonical] != value:
        conv.skip(
            where,
            f"'{canonical}' is '{fields[canonical]}' in another data set and '{value}' here; one job "
            "has one field mapping (split the job)",
        )
        return
    fields[canonical] = value


TRAINING_KEYS = (
    "micro_batch_size",
    "eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_epochs",
    "max_steps",
    "lr_scheduler",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "optimizer",
    "seed",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "eval_steps",
    "bf16",
    "fp16",
    "gradient_checkpointing",
    "flash_attention",
    "sdp_attention",
    "wandb_project",
    "wandb_mode",
    "use_tensorboard",
    "mlflow_experiment_name",
    "mlflow_tracking_uri",
)


def _training(config: dict[str, Any], conv: Conversion) -> None:
    simple = {
        "micro_batch_size": "train.batch_size",
        "gradient_accumulation_steps": "train.grad_accum",
        "max_steps": "train.max_steps",
        "seed": "train.seed",
        "logging_steps": "train.log_every",
        "save_steps": "train.save_every",
        "save_total_limit": "train.keep_checkpoints",
    }
    copy_whole_numbers(conv, config, simple, why=" (a fraction of the steps is not read)")
    copy_numbers(
        conv,
        config,
        {
            "learning_rate": "train.learning_rate",
            "num_epochs": "train.epochs",
            "warmup_ratio": "train.warmup_ratio",
            "weight_decay": "train.weight_decay",
            "max_grad_norm": "train.max_grad_norm",
        },
    )
    if config.get("lr_scheduler"):
        choose(conv, "lr_scheduler", config["lr_scheduler"], "train.lr_scheduler", SCHEDULERS)
    else:
        conv.set("train.lr_scheduler", "cosine", conv.origin(config, "lr_scheduler"))
    if config.get("optimizer"):
        choose(conv, "optimizer", config["optimizer"], "train.optimizer", OPTIMIZERS)
    precision(conv, config, "bf16", "fp16")
    if config.get("gradient_checkpointing") in (True, "offload", "offload_disk"):
        conv.set("train.gradient_checkpointing", True, "gradient_checkpointing")
    if config.get("flash_attention"):
        conv.set("model.attn_implementation", "flash_attention_2", "flash_attention")
    elif config.get("sdp_attention"):
        conv.set("model.attn_implementation", "sdpa", "sdp_attention")
    has_eval = bool(conv.get("data.eval") or conv.get("data.eval_fraction"))
    for key, target in (("eval_steps", "eval.every"), ("eval_batch_size", "eval.batch_size")):
        if positive_int(config.get(key)) and has_eval:
            conv.set(target, config[key], key)
        elif config.get(key) is not None:
            conv.skip(
                key,
                "no eval data (test_datasets or val_set_size)"
                if not has_eval
                else f"{config[key]!r} is not a positive whole number",
            )
    trackers = []
    if config.get("wandb_project") and config.get("wandb_mode") != "disabled":
        trackers.append("wandb")
        conv.set("tracking.project", str(config["wandb_project"]), "wandb_project")
    if config.get("use_tensorboard"):
        trackers.append("tensorboard")
    if config.get("mlflow_experiment_name") or config.get("mlflow_tracking_uri"):
        trackers.append("mlflow")
    if trackers:
        conv.set("tracking.report_to", trackers, "wandb_project/use_tensorboard/mlflow_*")
