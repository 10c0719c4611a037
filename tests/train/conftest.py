"""Fixtures for the training tests: one thread, a tiny saved causal LM, a job-file writer."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .tiny import save_tiny_causal_lm


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model")


ALPACA_ROWS = [
    {"instruction": f"What is {i} + {i}?", "input": "", "output": f"{i} + {i} = {2 * i}."} for i in range(48)
]


@pytest.fixture
def write_job(tmp_path: Path, tiny_model_dir: Path) -> Callable[..., Path]:
    """Write data + a job file into tmp_path; keyword sections override the defaults."""

    def write(rows: list[Any] | None = None, name: str = "tiny", **sections: dict[str, Any]) -> Path:
        data_file = tmp_path / "train.jsonl"
        data_file.write_text("".join(json.dumps(r) + "\n" for r in (rows or ALPACA_ROWS)), encoding="utf-8")
        spec: dict[str, dict[str, Any]] = {
            "model": {"source": f"local:{tiny_model_dir}"},
            "data": {"train": "train.jsonl", "eval_fraction": 0.25, "max_length": 128},
            "train": {"max_steps": 6, "batch_size": 4, "learning_rate": 1e-3, "log_every": 1, "save_every": 3},
        }
        for section, values in sections.items():
            spec.setdefault(section, {}).update(values)
        import tomli_w

        path = tmp_path / f"{name}.toml"
        path.write_text(tomli_w.dumps(spec), encoding="utf-8")
        return path

    return write
