"""LLaMA-Factory training config (``llamafactory-cli train x.yaml``) -> job.

Datasets are names looked up in ``dataset_info.json`` of ``dataset_dir`` (default ``data``; tried
next to the config, then in the current folder): ``file_name`` (a file, or a folder whose data
files are all read), ``hf_hub_url`` (+ ``subset``, ``split``) as an ``hf:`` data set, ``formatting``
(alpaca, sharegpt, openai) as data.format, ``columns`` and ``tags`` as data.fields and data.roles.
LLaMA-Factory's own defaults are written out where they differ from the runner's (LoRA alpha =
2 x rank, no LoRA dropout, gradient checkpointing on, cutoff_len 2048).
"""

from __future__ import annotations

import json
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
    report_to,
)

MARKERS = ("model_name_or_path", "finetuning_type", "stage", "cutoff_len", "template", "lora_target")
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".parquet", ".txt")
# LLaMA-Factory column -> canonical field of data.fields
COLUMNS = {
    "prompt": "instruction",
    "query": "input",
    "response": "output",
    "history": "history",
    "messages": "conversations",
    "system": "system",
    "tools": "tools",
    "images": "images",
}
# tag -> (role, the names the runner already knows for it)
TAGS = {
    "user_tag": ("user", ("human", "user")),
    "assistant_tag": ("assistant", ("gpt", "assistant")),
    "observation_tag": ("tool", ("observation", "tool")),
    "function_tag": ("assistant", ("function_call",)),
    "system_tag": ("system", ("system",)),
}
IGNORED = {
    "do_train": "implied: runner run trains",
    "do_eval": "evaluation follows data.eval / data.eval_fraction and [eval]",
    "overwrite_cache": "the tokenisation cache is keyed by content and never goes stale",
    "preprocessing_num_workers": "records are tokenised in the job's process (and cached)",
    "preprocessing_batch_size": "records are tokenised in the job's process (and cached)",
    "dataloader_num_workers": "batches are built in the training process",
    "output_dir": "runs are written under runs/<job>/<run-id>/ (status, metrics, checkpoints, adapter)",
    "overwrite_output_dir": "every run has its own folder",
    "logging_dir": "metrics.jsonl is written in the run's folder",
    "plot_loss": "metrics.jsonl holds the loss; runner status and the dashboard show it",
    "ddp_timeout": "not a setting here",
    "resume_from_checkpoint": "an interrupted run resumes from its last complete checkpoint by itself",
    "save_only_model": "checkpoints keep the optimizer state, so a run can resume",
    "template": "the model's own chat template (tokenizer_config.json) is used; check what it renders with "
    "runner data validate --job",
    "dataset_dir": None,  # read to find dataset_info.json
    "stage": None,
    "mask_history": "every assistant turn is trained; mask turns with a per-message loss_weight 0 in the data",
    "tokenized_path": "tokenised data is cached by content under RUNNER_HOME/data-cache/",
    "flash_attn": None,
    "quantization_method": None,
    "eval_strategy": None,
    "evaluation_strategy": None,
    "disable_gradient_checkpointing": None,
    "neat_packing": None,
}


def convert(config: dict[str, Any], conv: Conversion) -> None:
    stage = config.get("stage", "sft")
    if stage not in ("sft", "pt"):
        loss = (
            stage
            if stage == "kto"
            else {"ipo": "ipo", "orpo": "orpo", "simpo": "simpo"}.get(str(config.get("pref_loss")), "dpo")
        )
        preference = (
            f'; {stage} is a preference job of its own: write it by hand with [loss] type = "{loss}" '
            "(jobs/quickstart-dpo.toml is an example)"
            if stage in ("dpo", "kto")
            else ""
        )
        raise ConvertError(
            f"stage: {stage!r}: only supervised fine-tuning (sft) and continued pre-training (pt) "
            f"configs convert into a job here{preference}"
        )
    model_source(conv, config.get("model_name_or_path"), "model_name_or_path")
    _adapter(config, conv)
    _data(config, conv, stage)
    _training(config, conv)
    handled = {
        "model_name_or_path",
        "finetuning_type",
        "lora_rank",
        "lora_alpha",
        "lora_dropout",
        "lora_target",
        "quantization_bit",
        "quantization_type",
        "double_quantization",
        "dataset",
        "eval_dataset",
        "cutoff_len",
        "max_samples",
        "train_on_prompt",
        "packing",
        "val_size",
        "trust_remote_code",
        *TRAINING_KEYS,
    }
    for key in config:
        if key in handled or (key in IGNORED and IGNORED[key] is None):
            continue
        conv.skip(key, IGNORED.get(key) or "no counterpart in a job file")


def _adapter(config: dict[str, Any], conv: Conversion) -> None:
    method = config.get("finetuning_type", "lora")
    bits = config.get("quantization_bit")
    if method == "lora":
        conv.set("adapter.method", "qlora" if bits == 4 else "lora", conv.origin(config, "finetuning_type"))
    elif method == "full":
        conv.set("adapter.method", "full", "finetuning_type")
    else:
        conv.set("adapter.method", "lora")
        conv.skip(
            "finetuning_type",
            f"{method!r} (training some layers in full) is not a method here; converted "
            "to lora (adapter.method: lora, qlora or full)",
        )
    if bits is not None and bits != 4:
        conv.skip("quantization_bit", f"{bits}-bit bases are not supported; the base is trained in full precision")
    elif bits == 4 and config.get("quantization_method", "bnb") != "bnb":
        conv.skip("quantization_method", f"{config['quantization_method']!r}: 4-bit bases are bitsandbytes (nf4/fp4)")
    if conv.get("adapter.method") == "qlora":
        conv.set("adapter.quant_type", config.get("quantization_type", "nf4"), conv.origin(config, "quantization_type"))
        conv.set(
            "adapter.double_quant",
            bool(config.get("double_quantization", True)),
            conv.origin(config, "double_quantization"),
        )
    if conv.get("adapter.method") in ("lora", "qlora"):
        rank = config.get("lora_rank", 8)
        conv.set("adapter.r", rank, conv.origin(config, "lora_rank"))
        conv.set(
            "adapter.alpha",
            config.get("lora_alpha") or 2 * rank,  # its default: 2 x rank
            conv.origin(config, "lora_alpha") + (" (2 x lora_rank)" if "lora_alpha" not in config else ""),
        )
        conv.set("adapter.dropout", float(config.get("lora_dropout", 0.0)), conv.origin(config, "lora_dropout"))
        target = config.get("lora_target", "all")
        names = [t.strip() for t in target.split(",")] if isinstance(target, str) else list(target)
        conv.set(
            "adapter.target_modules", ["all-linear"] if names == ["all"] else names, conv.origin(config, "lora_target")
        )
    if config.get("trust_remote_code"):
        conv.set("model.trust_remote_code", True, "trust_remote_code")


def _data(config: dict[str, Any], conv: Conversion, stage: str) -> None:
    names = _names(config.get("dataset"))
    if not names:
        raise ConvertError("dataset: the config names no data set")
    info, info_path = _dataset_info(config, conv)
    formats: set[str] = set()
    fields: dict[str, str] = {}
    roles: dict[str, list[str]] = {}
    for key, target in (("dataset", "data.train"), ("eval_dataset", "data.eval")):
        sources: list[str] = []
        for name in _names(config.get(key)):
            entry = info.get(name) if info is not None else None
            if entry is None or info_path is None:  # an entry comes from the file at info_path
                where = f"{info_path}" if info_path else "no dataset_info.json was found"
                raise ConvertError(f"{key}: '{name}' is not a data set of {where}; add it there, or name one that is")
            sources += _entry_sources(name, entry, info_path.parent, conv)
            formats.add(_entry_format(name, entry, stage, conv, fields, roles))
        if sources:
            conv.set(target, sources, key)
    if not conv.get("data.train"):
        raise ConvertError("dataset: none of the data sets can be read here (see the reasons above)")
    formats.discard("auto")
    conv.set("data.format", formats.pop() if len(formats) == 1 else "auto", "dataset_info.json formatting")
    if len(formats) > 0:
        conv.notes.append('the data sets have different layouts: data.format = "auto" detects each file\'s own')
    if fields:
        conv.set("data.fields", fields, "dataset_info.json columns / tags")
    if roles:
        conv.set("data.roles", roles, "dataset_info.json tags")
    conv.set("data.max_length", config.get("cutoff_len", 2048), conv.origin(config, "cutoff_len"))
    if positive_int(config.get("max_samples")):
        conv.set("data.max_records", config["max_samples"], "max_samples")
    if config.get("train_on_prompt"):
        conv.set("data.train_on_prompt", True, "train_on_prompt")
    if config.get("packing") or config.get("neat_packing") or (stage == "pt" and config.get("packing") is None):
        conv.set("data.packing", True, "neat_packing" if config.get("neat_packing") else "packing")
    val = config.get("val_size")
    if isinstance(val, float) and 0 < val < 1 and not conv.get("data.eval"):
        conv.set("data.eval_fraction", val, "val_size")
    elif val:
        conv.skip("val_size", f"{val!r}: a held-out share is a fraction below 1 (data.eval_fraction)")


def _names(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value or []]


def _dataset_info(config: dict[str, Any], conv: Conversion) -> tuple[dict[str, Any] | None, Path | None]:
    folder = config.get("dataset_dir", "data")
    for base in (conv.source.parent, Path.cwd()):
        path = base / folder / "dataset_info.json"
        if path.is_file():
            try:
                return json.loads(path.read_text(encoding="utf-8")), path
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ConvertError(f"{path}: cannot be read as JSON ({exc})") from None
    return None, None


def _entry_sources(name: str, entry: dict[str, Any], folder: Path, conv: Conversion) -> list[str]:
    if entry.get("ranking"):
        raise ConvertError(
            f"data set '{name}' is a preference data set (ranking: true): it trains a preference "
            'job (loss.type = "dpo", "ipo", "orpo", "simpo" or "kto", data.format = "auto" reads it), '
            "not supervised fine-tuning"
        )
    if "hf_hub_url" in entry:
        query = f"?split={entry.get('split', 'train')}" + (f"&subset={entry['subset']}" if entry.get("subset") else "")
        for key in ("folder", "num_samples"):
            if key in entry:
                conv.skip(f"dataset_info.{name}.{key}", "not read for hf: data sets")
        return [f"hf:{entry['hf_hub_url']}{query}"]
    if "file_name" not in entry:
        kinds = [k for k in ("ms_hub_url", "script_url", "cloud_file_name", "om_hub_url") if k in entry]
        conv.skip(
            f"dataset_info.{name}",
            f"{kinds or 'no file_name'}: only local files and Hugging Face Hub data sets are read",
        )
        return []
    path = folder / entry["file_name"]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in DATA_SUFFIXES and p.is_file())
        return [conv.path(p, base=Path("/")) for p in files]
    return [conv.path(path, base=Path("/"))]


def _entry_format(
    name: str, entry: dict[str, Any], stage: str, conv: Conversion, fields: dict[str, str], roles: dict[str, list[str]]
) -> str:
    formatting = entry.get("formatting", "alpaca")
    columns = dict(entry.get("columns") or {})
    tags = dict(entry.get("tags") or {})
    if stage == "pt":
        _field(fields, "text", columns.pop("prompt", "text"), name, conv)
        fmt = "text"
    elif formatting == "alpaca":
        fmt = "alpaca"
    elif formatting in ("sharegpt", "openai"):
        openai = formatting == "openai" or tags.get("role_tag") == "role"
        fmt = "messages" if openai else "sharegpt"
        _field(fields, "role", tags.pop("role_tag", "role" if openai else "from"), name, conv)
        _field(fields, "content", tags.pop("content_tag", "content" if openai else "value"), name, conv)
        for tag, (role, known) in TAGS.items():
            value = tags.pop(tag, None)
            if value is not None and value not in known and value not in roles.get(role, []):
                roles.setdefault(role, []).append(value)
    else:
        conv.skip(f"dataset_info.{name}.formatting", f"{formatting!r}: read as auto-detected")
        fmt = "auto"
    for column, value in columns.items():
        canonical = COLUMNS.get(column)
        if canonical is None:
            conv.skip(
                f"dataset_info.{name}.columns.{column}",
                "not read for supervised fine-tuning"
                if column in ("chosen", "rejected", "kto_tag")
                else "not a field the runner reads",
            )
        else:
            _field(fields, canonical, value, name, conv)
    for tag in tags:
        conv.skip(f"dataset_info.{name}.tags.{tag}", "not a tag the runner reads")
    return fmt


def _field(fields: dict[str, str], canonical: str, value: str, name: str, conv: Conversion) -> None:
    defaults = {
        "conversations": ("conversations", "messages"),
        "role": ("from", "role"),
        "content": ("value", "content"),
    }
    if value == canonical or value in defaults.get(canonical, ()):
        return  # read without a mapping
    if canonical in fields and fields[canonical] != value:
        conv.skip(
            f"dataset_info.{name}.columns",
            f"'{canonical}' is '{fields[canonical]}' in another data set and "
            f"'{value}' here; one job has one field mapping (split the job)",
        )
        return
    fields[canonical] = value


TRAINING_KEYS = (
    "per_device_train_batch_size",
    "per_device_eval_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_ratio",
    "weight_decay",
    "max_grad_norm",
    "optim",
    "seed",
    "logging_steps",
    "save_steps",
    "save_total_limit",
    "eval_steps",
    "report_to",
    "bf16",
    "fp16",
    "pure_bf16",
    "warmup_steps",
    "run_name",
)


def _training(config: dict[str, Any], conv: Conversion) -> None:
    simple = {
        "per_device_train_batch_size": "train.batch_size",
        "gradient_accumulation_steps": "train.grad_accum",
        "max_steps": "train.max_steps",
        "seed": "train.seed",
        "logging_steps": "train.log_every",
        "save_steps": "train.save_every",
        "save_total_limit": "train.keep_checkpoints",
    }
    copy_whole_numbers(conv, config, simple, unset=(None, -1))  # -1: the Trainer's "not set" for max_steps
    copy_numbers(
        conv,
        config,
        {
            "learning_rate": "train.learning_rate",
            "num_train_epochs": "train.epochs",
            "warmup_ratio": "train.warmup_ratio",
            "weight_decay": "train.weight_decay",
            "max_grad_norm": "train.max_grad_norm",
        },
    )
    if "lr_scheduler_type" in config:
        choose(conv, "lr_scheduler_type", config["lr_scheduler_type"], "train.lr_scheduler", SCHEDULERS)
    if "optim" in config:
        choose(conv, "optim", config["optim"], "train.optimizer", OPTIMIZERS, {"adamw_hf": "adamw_torch"})
    if config.get("warmup_steps"):
        conv.skip("warmup_steps", "warm-up is a share of the steps here (train.warmup_ratio)")
    if config.get("run_name"):
        conv.set("tracking.project", str(config["run_name"]), "run_name")
    if "report_to" in config:
        report_to(conv, "report_to", config["report_to"])
    precision(conv, {**config, "bf16": True if config.get("pure_bf16") else config.get("bf16")}, "bf16", "fp16")
    if config.get("pure_bf16"):
        conv.mapped.append(("pure_bf16", "resources.precision"))
    conv.set(
        "train.gradient_checkpointing",
        not config.get("disable_gradient_checkpointing", False),
        conv.origin(config, "disable_gradient_checkpointing"),
    )  # on unless disabled, as LLaMA-Factory does
    attention = {"fa2": "flash_attention_2", "sdpa": "sdpa", "disabled": "eager", "auto": "auto"}
    if "flash_attn" in config:
        choose(
            conv, "flash_attn", config["flash_attn"], "model.attn_implementation", tuple(attention.values()), attention
        )
    has_eval = bool(conv.get("data.eval") or conv.get("data.eval_fraction"))
    if positive_int(config.get("per_device_eval_batch_size")):
        if has_eval:
            conv.set("eval.batch_size", config["per_device_eval_batch_size"], "per_device_eval_batch_size")
        else:
            conv.skip("per_device_eval_batch_size", "no eval data (eval_dataset or val_size)")
    strategy = config.get("eval_strategy", config.get("evaluation_strategy"))
    if strategy == "steps" and positive_int(config.get("eval_steps")):
        if has_eval:
            conv.set("eval.every", config["eval_steps"], "eval_steps")
        else:
            conv.skip("eval_steps", "no eval data (eval_dataset or val_size)")
    elif strategy not in (None, "no"):
        conv.skip(
            "eval_strategy", f"{strategy!r}: evaluation runs every N steps (eval.every), before and after training"
        )
