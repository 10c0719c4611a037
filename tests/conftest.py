"""Suite-wide settings: no network, and a private RUNNER_HOME shared by the whole session.

Sharing one home lets the (slow) GGUF -> safetensors conversion of the bundled model happen once
per session; tests that need an empty home set their own with monkeypatch.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session", autouse=True)
def _offline_private_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    saved = {key: os.environ.get(key) for key in ("RUNNER_HOME", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM")}
    os.environ["RUNNER_HOME"] = str(tmp_path_factory.mktemp("runner-home"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
