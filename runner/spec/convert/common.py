"""What every conversion shares: the result, the mapping helpers, the values both tools spell alike.

A conversion builds the job as nested dicts (`Conversion.job`), and records every key of the
foreign config it could not carry over, with the reason (`Conversion.unmapped`), so the written
job lists them as comments. Paths in the job are relative to the job file's folder, as the
runner reads them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
OPTIMIZERS = ("adamw_torch", "adamw_torch_fused", "sgd", "adafactor")
REPORT_TARGETS = ("tensorboard", "wandb", "mlflow")


class ConvertError(ValueError):
    """The config cannot become a job at all (no model, no data, a training stage the runner lacks)."""


@dataclass
class Conversion:
    """A job built from a foreign config: the job's tables, the keys left behind (key, reason) and
    notes on choices made where the two tools differ."""

    tool: str
    source: Path
    job_dir: Path
    job: dict[str, dict[str, Any]] = field(default_factory=dict)
    unmapped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (foreign key, job key) in the order seen

    def set(self, key: str, value: Any, origin: str | None = None) -> None:
        """job["data"]["max_length"] = value for key "data.max_length"; `origin` is the foreign key."""
        table, _, name = key.partition(".")
        target = self.job.setdefault(table, {})
        if "." in name:
            sub, _, name = name.partition(".")
            target = target.setdefault(sub, {})
        target[name] = value
        if origin is not None:
            self.mapped.append((origin, key))

    def origin(self, config: dict[str, Any], key: str) -> str:
        """`key` when the config sets it, else a mark that the value is the tool's default."""
        return key if key in config else f"{key} unset: {self.tool}'s default"

    def get(self, key: str, default: Any = None) -> Any:
        table, _, name = key.partition(".")
        return self.job.get(table, {}).get(name, default)

    def skip(self, key: str, reason: str) -> None:
        self.unmapped.append((key, reason))

    def path(self, value: str | Path, *, base: Path) -> str:
        """A path of the config (relative to `base`) as the job writes it (relative to the job's folder)."""
        absolute = Path(os.path.abspath(base / Path(value).expanduser()))
        try:
            return Path(os.path.relpath(absolute, self.job_dir)).as_posix()
        except ValueError:  # another drive
            return absolute.as_posix()


def model_source(conv: Conversion, value: Any, origin: str, revision: str | None = None) -> None:
    """A model id or path -> model.source: an existing folder is local:, anything else an hf: repo."""
    if not isinstance(value, str) or not value.strip():
        raise ConvertError(f"{origin} is empty: the config names no base model")
    base = conv.source.parent
    candidate = base / Path(value).expanduser()
    looks_local = value.startswith((".", "/", "~")) or candidate.is_dir()
    if looks_local:
        conv.set("model.source", f"local:{conv.path(value, base=base)}", origin)
        if not candidate.is_dir():
            conv.notes.append(f"{origin}: the folder {candidate} does not exist (yet); runner validate will say so")
    else:
        conv.set("model.source", f"hf:{value}" + (f"@{revision}" if revision else ""), origin)


def precision(conv: Conversion, config: dict[str, Any], bf16: str, fp16: str) -> None:
    """bf16 / fp16 flags -> resources.precision (bf16 wins, as both tools decide)."""
    b, f = config.get(bf16), config.get(fp16)
    if b in (True, "true", "full"):
        conv.set("resources.precision", "bf16", bf16)
    elif b == "auto":
        conv.set("resources.precision", "auto", bf16)
    elif f is True:
        conv.set("resources.precision", "fp16", fp16)
    for key, value in ((bf16, b), (fp16, f)):
        if value is not None and (key, "resources.precision") not in conv.mapped:
            conv.skip(
                key,
                f"{value!r}: the precision is {conv.get('resources.precision', 'auto')} "
                "(resources.precision; auto is fp32 on the CPU, bf16 where the GPU has it)",
            )


def choose(
    conv: Conversion, origin: str, value: Any, key: str, choices: tuple[str, ...], aliases: dict[str, str] | None = None
) -> None:
    """A named value the runner knows (after aliases) -> key; anything else is listed as unmapped."""
    named = (aliases or {}).get(value, value)
    if named in choices:
        conv.set(key, named, origin)
    else:
        conv.skip(origin, f"{value!r} is not one of {', '.join(choices)} ({key}); the runner's default is used")


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def copy_whole_numbers(
    conv: Conversion, config: dict[str, Any], names: dict[str, str], *, unset: tuple[Any, ...] = (None,), why: str = ""
) -> None:
    """Counts copied through a name table (source key -> job key): a count must be a positive whole
    number, a `seed` any whole number; anything else but the `unset` values is listed as unmapped."""
    for key, target in names.items():
        value = config.get(key)
        if positive_int(value) or (key == "seed" and isinstance(value, int) and not isinstance(value, bool)):
            conv.set(target, value, key)
        elif not any(value is u or (type(value) is type(u) and value == u) for u in unset):
            conv.skip(key, f"{value!r} is not a positive whole number{why}")


def copy_numbers(conv: Conversion, config: dict[str, Any], names: dict[str, str]) -> None:
    """Numbers (int or float, never a bool) copied through a name table as floats."""
    for key, target in names.items():
        value = config.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            conv.set(target, float(value), key)


def report_to(conv: Conversion, origin: str, value: Any) -> None:
    targets = [value] if isinstance(value, str) else list(value or [])
    kept = [t for t in targets if t in REPORT_TARGETS]
    left = [t for t in targets if t not in REPORT_TARGETS and t != "none"]
    if kept:
        conv.set("tracking.report_to", kept, origin)
    if left:
        conv.skip(origin, f"{left}: trackers here are {', '.join(REPORT_TARGETS)} (metrics.jsonl is always written)")
