"""Fixtures for the data tests: one CPU thread (the machine is shared), a tiny tokenizer."""

from __future__ import annotations

from typing import Any

import pytest

from .helpers import make_tokenizer


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """Byte-level BPE with SmolLM2's chat template (no generation markers)."""
    return make_tokenizer()
