"""Fixtures for the embedding tests: one CPU thread, tiny saved models, data and job writers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .helpers import pair_rows, write_jsonl
from .tiny import save_tiny_bert, save_tiny_clip, save_tiny_qwen25_vl


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="session")
def tiny_qwen_vl(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_qwen25_vl(tmp_path_factory.mktemp("tiny-qwen25-vl"))


@pytest.fixture
def write_job(tmp_path: Path, tiny_bert: Path) -> Callable[..., Path]:
    """Write train (and eval) data plus a job file into tmp_path; keyword sections override the defaults."""

    def write(
        rows: list[Any] | None = None,
        eval_rows: list[Any] | None = None,
        name: str = "tiny-embed",
        **sections: dict[str, Any],
    ) -> Path:
        write_jsonl(tmp_path / "train.jsonl", rows if rows is not None else pair_rows(24))
        spec: dict[str, dict[str, Any]] = {
            "model": {"source": f"local:{tiny_bert}", "kind": "embedding"},
            "data": {"train": "train.jsonl", "max_length": 32},
            "adapter": {"r": 4, "alpha": 8},
            "train": {"max_steps": 4, "batch_size": 8, "learning_rate": 1e-3, "log_every": 1, "save_every": 2},
        }
        if eval_rows is not None:
            write_jsonl(tmp_path / "eval.jsonl", eval_rows)
            spec["data"]["eval"] = "eval.jsonl"
        for section, values in sections.items():
            spec.setdefault(section, {}).update(values)
        import tomli_w

        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(spec), encoding="utf-8")
        return path

    return write
