"""The bitsandbytes version gate of QLoRA on the CPU reads PEP 440 versions (packaging.version)."""

from __future__ import annotations

import importlib.metadata

import pytest

from runner.train.model import quantization_problem


@pytest.mark.parametrize("installed", ["0.48.2", "0.48rc1", "0.9", "0.48.0.post1", "not-a-version"])
def test_a_bitsandbytes_older_than_049_is_refused_on_the_cpu_with_the_installed_version(
    monkeypatch: pytest.MonkeyPatch, installed: str
) -> None:
    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed)
    problem = quantization_problem("cpu")
    assert problem is not None and "bitsandbytes >= 0.49" in problem and installed in problem


@pytest.mark.parametrize("installed", ["0.49.0", "0.49.1.dev0", "0.50.2", "1.0rc1"])
def test_a_bitsandbytes_from_049_on_passes_the_version_gate(monkeypatch: pytest.MonkeyPatch, installed: str) -> None:
    pytest.importorskip("bitsandbytes")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: installed)
    problem = quantization_problem("cpu")
    assert problem is None or "needs bitsandbytes >=" not in problem
