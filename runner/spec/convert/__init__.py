"""`runner convert`: a job file from an Axolotl or LLaMA-Factory training config.

    conversion = convert_config(Path("axolotl.yml"), job_path=Path("jobs/x.toml"))
    text = to_toml(conversion)            # the job, with what was not carried over as comments
    problems = validate_text(text, ...)   # the runner's own validation of the result

The tool is recognised by its keys (``base_model`` / ``datasets`` for Axolotl,
``model_name_or_path`` / ``finetuning_type`` for LLaMA-Factory) or named with ``tool``. Each
converter maps what has a counterpart (see the tables in runner.spec.convert.axolotl and
runner.spec.convert.llamafactory) and lists every other key with the reason. It sits with the
spec: it reads a foreign config and writes a job; it loads no data and no weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from runner.spec.convert import axolotl, llamafactory
from runner.spec.convert.common import Conversion, ConvertError
from runner.spec.convert.writer import to_toml

__all__ = [
    "TOOLS",
    "Conversion",
    "ConvertError",
    "convert_config",
    "detect_tool",
    "read_config",
    "to_toml",
    "validate_text",
]

TOOLS = {"axolotl": axolotl, "llamafactory": llamafactory}
NAMES = {"axolotl": "Axolotl", "llamafactory": "LLaMA-Factory"}
MAX_CONFIG_BYTES = 1024 * 1024


def read_config(path: Path) -> dict[str, Any]:
    """A YAML training config as a mapping; ConvertError naming the file and the line on failure."""
    import yaml

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read the file ({exc.strerror or exc})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConvertError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; a training config is a few kilobytes")
    try:
        config = yaml.safe_load(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConvertError(f"{path}: not valid UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConvertError(f"{path}{where}: not valid YAML ({problem})") from None
    if not isinstance(config, dict):
        raise ConvertError(
            f"{path}: expected a mapping of settings (key: value), found "
            f"{type(config).__name__ if config is not None else 'an empty file'}"
        )
    return config


def detect_tool(config: dict[str, Any], path: Path) -> str:
    scores = {tool: sum(key in config for key in module.MARKERS) for tool, module in TOOLS.items()}
    best = max(scores, key=lambda tool: scores[tool])
    if scores[best] == 0 or list(scores.values()).count(scores[best]) > 1:
        keys = ", ".join(sorted(map(str, config)))[:200]
        raise ConvertError(
            f"{path}: cannot tell which tool this config is for (keys: {keys}); name it with "
            "--from axolotl or --from llamafactory"
        )
    return best


def convert_config(path: Path, *, job_path: Path | None = None, tool: str | None = None) -> Conversion:
    """Read a config and build the job. `job_path` is where the job will be written (its folder anchors
    the relative paths in it; default: the current folder)."""
    config = read_config(path)
    tool = tool or detect_tool(config, path)
    if tool not in TOOLS:
        raise ConvertError(f"--from {tool!r}: expected one of {', '.join(TOOLS)}")
    job_dir = (job_path.parent if job_path is not None else Path(".")).absolute()
    conv = Conversion(tool=NAMES[tool], source=path.absolute(), job_dir=job_dir)
    conv.job["model"] = {}
    TOOLS[tool].convert(config, conv)
    if conv.get("adapter.method") == "qlora":
        conv.set("resources.device", "cuda")
        conv.notes.append(
            "QLoRA trains on a CUDA device (resources.device); adapter.allow_cpu = true runs the 4-bit "
            "base on the CPU, slowly"
        )
    return conv


def validate_text(text: str, job_path: Path) -> list[str]:
    """The runner's validation of a written job (schema and rules, not the files): problems, or []."""
    from runner.spec.errors import JobSpecError
    from runner.spec.loader import parse_job

    try:
        parse_job(text, display=str(job_path), default_name=job_path.stem, path=job_path)
    except JobSpecError as exc:
        return [str(issue) for issue in exc.issues]
    return []
