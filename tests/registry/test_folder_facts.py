"""Facts about a model folder read from its files alone: tensor headers, parameters, kind."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from runner.registry import WeightsHeaderError, count_parameters, read_safetensors_headers
from runner.registry.folder_facts import infer_kind


def test_headers_give_every_tensor_of_every_shard_its_dtype_and_shape(tmp_path: Path) -> None:
    save_file(
        {"a": torch.zeros(3, 4, dtype=torch.bfloat16), "scale": torch.zeros((), dtype=torch.float32)},
        tmp_path / "model-00001-of-00002.safetensors",
        metadata={"format": "pt"},
    )
    save_file(
        {"b": torch.zeros(0, 5, dtype=torch.float16), "c": torch.zeros(2, dtype=torch.float8_e4m3fn)},
        tmp_path / "model-00002-of-00002.safetensors",
    )
    save_file({"hidden": torch.zeros(7)}, tmp_path / ".partial.safetensors")  # not part of the model

    assert read_safetensors_headers(tmp_path) == {
        "a": ("BF16", (3, 4)),
        "scale": ("F32", ()),
        "b": ("F16", (0, 5)),
        "c": ("F8_E4M3", (2,)),
    }
    assert count_parameters(tmp_path) == 12 + 1 + 0 + 2


def test_headers_of_a_real_model_match_its_loaded_tensors(tiny_model_dir: Path) -> None:
    loaded: dict[str, torch.Tensor] = {}
    for path in sorted(tiny_model_dir.glob("*.safetensors")):
        loaded.update(load_file(path))
    headers = read_safetensors_headers(tiny_model_dir)
    assert {name: shape for name, (_, shape) in headers.items()} == {n: tuple(t.shape) for n, t in loaded.items()}
    assert count_parameters(tiny_model_dir) == sum(t.numel() for t in loaded.values())


def test_a_truncated_weights_file_is_named_and_counts_as_unknown_parameters(tmp_path: Path) -> None:
    save_file({"a": torch.zeros(4)}, tmp_path / "model.safetensors")
    broken = tmp_path / "model.safetensors"
    broken.write_bytes(broken.read_bytes()[:6])

    with pytest.raises(WeightsHeaderError, match=r"model\.safetensors: cannot read the safetensors header") as info:
        read_safetensors_headers(tmp_path)
    assert isinstance(info.value, ValueError)  # callers that caught the JSON error of a hand parser still do
    assert count_parameters(tmp_path) is None


def test_a_folder_without_weights_has_no_headers_and_no_parameter_count(tmp_path: Path) -> None:
    assert read_safetensors_headers(tmp_path) == {}
    assert count_parameters(tmp_path) is None


@pytest.mark.parametrize(
    ("config", "files", "kind"),
    [
        ({"architectures": ["LlamaForCausalLM"]}, [], "causal-lm"),
        ({"architectures": ["BertModel"]}, ["modules.json"], "embedding"),
        ({"model_type": "siglip", "architectures": ["SiglipModel"]}, [], "image-text-embedding"),
        ({"architectures": ["BertModel"]}, [], "embedding"),
        ({}, [], None),
    ],
)
def test_the_kind_is_read_from_the_config_and_the_sentence_transformers_files(
    tmp_path: Path, config: dict[str, object], files: list[str], kind: str | None
) -> None:
    for name in files:
        (tmp_path / name).write_text("[]")
    assert infer_kind(tmp_path, config) == kind
