"""Facts about a model folder, read without loading it: config, tensor shapes, parameters, kind.

The tensor names, dtypes and shapes come from the safetensors headers through
``safetensors.safe_open`` (the library's own header parser, no weights read), the same reader for
the registry (parameter counts) and the memory plan (checkpoint size and dtypes).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner.registry.checksums import model_files

__all__ = [
    "FolderFacts",
    "WeightsHeaderError",
    "count_parameters",
    "infer_kind",
    "inspect_folder",
    "read_config",
    "read_safetensors_headers",
]


class WeightsHeaderError(ValueError):
    """A ``*.safetensors`` file whose header cannot be read (truncated, or not safetensors at all)."""


def read_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` as a dict; empty when it is missing or not a JSON object."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_safetensors_headers(folder: Path | str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name -> (dtype, shape) for every tensor of every ``*.safetensors`` file in ``folder``.

    Headers only: ``safe_open`` maps the file and reads its header, no tensor is loaded. The dtype
    is the safetensors name (``F32``, ``BF16``, ``F8_E4M3``, ...). Raises
    :class:`WeightsHeaderError` naming the file when one cannot be read.
    """
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    for name in model_files(folder, ("*.safetensors",)):
        path = folder / name
        try:
            with safe_open(path, framework="numpy") as handle:
                for key in handle.keys():  # noqa: SIM118 - safe_open is not iterable
                    view = handle.get_slice(key)
                    tensors[key] = (str(view.get_dtype()), tuple(int(d) for d in view.get_shape()))
        except (OSError, SafetensorError) as exc:
            raise WeightsHeaderError(
                f"{path}: cannot read the safetensors header ({exc}); the file is truncated or not "
                "safetensors: download or save the model again"
            ) from exc
    return tensors


def count_parameters(folder: Path) -> int | None:
    """Parameters stored in the folder's safetensors files (from their headers); None if unreadable or none."""
    try:
        headers = read_safetensors_headers(folder)
    except WeightsHeaderError:
        return None
    return sum(math.prod(shape) for _, shape in headers.values()) if headers else None


_IMAGE_TEXT_TYPES = {"clip", "siglip", "siglip2", "chinese_clip", "align", "altclip", "blip", "owlvit", "colpali"}


def infer_kind(folder: Path, config: Mapping[str, Any]) -> str | None:
    """causal-lm / embedding / image-text-embedding from the config and sentence-transformers files; None if unsure."""
    architectures = [str(a) for a in config.get("architectures") or []]
    model_type = str(config.get("model_type") or "")
    if model_type in _IMAGE_TEXT_TYPES or any(a.startswith(("CLIP", "Siglip")) for a in architectures):
        return "image-text-embedding"
    if (folder / "modules.json").is_file() or (folder / "sentence_bert_config.json").is_file():
        return "embedding"
    if any(a.endswith(("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")) for a in architectures):
        return "causal-lm"
    if any(a.endswith("Model") for a in architectures):
        return "embedding"
    return None


@dataclass(frozen=True)
class FolderFacts:
    architecture: str | None
    model_type: str | None
    parameters: int | None
    size_bytes: int
    kind: str | None


def inspect_folder(folder: Path, files: Mapping[str, str]) -> FolderFacts:
    config = read_config(folder)
    architectures = config.get("architectures") or []
    size = sum(os.stat(folder / name).st_size for name in files if (folder / name).exists())
    return FolderFacts(
        architecture=str(architectures[0]) if architectures else None,
        model_type=str(config["model_type"]) if config.get("model_type") else None,
        parameters=count_parameters(folder),
        size_bytes=size,
        kind=infer_kind(folder, config),
    )
