"""Registry test fixtures: one CPU thread (shared machine), a private RUNNER_HOME, tiny models."""

from __future__ import annotations

from pathlib import Path

import pytest

from .tiny_models import save_tiny_model, write_tiny_gguf


@pytest.fixture(scope="session", autouse=True)
def _one_thread() -> None:
    """Session-scoped so that it also applies to session fixtures (the SmolLM2 conversion)."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Never touch the user's ~/.cache/runner, nor the network."""
    monkeypatch.setenv("RUNNER_HOME", str(tmp_path / "default-home"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)


@pytest.fixture(autouse=True)
def _private_registry(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Never read or write the project's registry/registry.json."""
    path = tmp_path / "project" / "registry" / "registry.json"
    monkeypatch.setenv("RUNNER_REGISTRY", str(path))
    return path


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture(scope="session")
def smollm2_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RUNNER_HOME per session for the bundled SmolLM2, so its GGUF is converted once (≈ 30 s)."""
    return tmp_path_factory.mktemp("smollm2-home")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only for tests: copy it before changing anything."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model")


@pytest.fixture(scope="session")
def tiny_gguf_master(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_gguf(tmp_path_factory.mktemp("tiny-gguf") / "tiny.Q8_0.gguf")


@pytest.fixture
def tiny_gguf(tiny_gguf_master: Path, tmp_path: Path) -> Path:
    """A private copy per test (tests touch its mtime)."""
    folder = tmp_path / "gguf"
    folder.mkdir()
    target = folder / tiny_gguf_master.name
    target.write_bytes(tiny_gguf_master.read_bytes())
    return target
