"""`runner models import|list|info|delete|validate` through runner.commands.main, offline."""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from runner.commands import main
from runner.outputs.runs import new_run_dir
from runner.outputs.status import StatusFile, new_status
from runner.registry import Registry, sha256_file
from runner.registry.entries import Lineage

from .tiny_models import add_to_hub_cache, copy_model, model_folder_files

COMMIT = "0123456789abcdef0123456789abcdef01234567"
CARD = b"---\nlicense: apache-2.0\ntags: [tiny]\n---\n# tiny\n"


@pytest.fixture
def env_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RUNNER_HOME", str(home))
    return home


@pytest.fixture
def registry(env_home: Path, _private_registry: Path) -> Registry:
    return Registry(_private_registry, home=env_home)


@pytest.fixture
def hub_repo(env_home: Path, tiny_model_dir: Path) -> Path:
    """org/tiny as an earlier download left it in RUNNER_HOME/hub, model card included."""
    files: dict[str, Path | bytes] = {**model_folder_files(tiny_model_dir), "README.md": CARD}
    return add_to_hub_cache(env_home / "hub", "org/tiny", files, COMMIT)


@pytest.fixture
def spy_downloads(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    real = huggingface_hub.snapshot_download

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", spy)
    return calls


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def test_hub_import_from_the_cache_pins_the_commit_and_reads_the_card(
    hub_repo: Path, registry: Registry, spy_downloads: list[dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "import", "hf:org/tiny", "--as", "tiny", "-q"]) == 0
    out = capsys.readouterr().out
    assert "registered 'tiny'" in out and f"hf:org/tiny@{COMMIT}" in out
    assert "license: apache-2.0 (from the model card)" in out
    entry = registry.get("tiny")
    assert entry.source == f"hf:org/tiny@{COMMIT}" and entry.revision == COMMIT
    assert entry.store == f"hub/models--org--tiny/snapshots/{COMMIT}"
    assert entry.files["model.safetensors"] == sha256_file(hub_repo / "model.safetensors")
    assert "README.md" not in entry.files
    # the real snapshot_download ran, and only against the cache: nothing was fetched
    assert spy_downloads and all(c.get("local_files_only") for c in spy_downloads)

    spy_downloads.clear()
    assert main(["models", "import", "hf:org/tiny", "--as", "tiny", "-q"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert all(c.get("local_files_only") for c in spy_downloads)  # never downloads twice


def test_list_and_info_show_every_field(hub_repo: Path, registry: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "import", f"hf:org/tiny@{COMMIT}", "--as", "tiny", "-q"]) == 0
    capsys.readouterr()
    assert main(["models", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["ALIAS", "KIND", "ARCHITECTURE", "PARAMS", "SIZE", "LICENSE", "FROM", "SOURCE"]
    assert lines[1].split()[:3] == ["tiny", "causal-lm", "LlamaForCausalLM"] and "apache-2.0" in lines[1]

    assert main(["models", "info", "tiny"]) == 0
    out = capsys.readouterr().out
    for expected in (
        f"source:       hf:org/tiny@{COMMIT}",
        "kind:         causal-lm",
        "license:      apache-2.0",
        "architecture: LlamaForCausalLM (llama)",
        "imported at:",
        f"snapshots/{COMMIT}",
        "lineage: tiny",
        "(base model)",
    ):
        assert expected in out
    assert sha256_file(hub_repo / "config.json") + "  config.json" in out

    assert main(["models", "info", "tiny", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["alias"] == "tiny" and data["chain"] == [
        {"alias": "tiny", "source": f"hf:org/tiny@{COMMIT}", "revision": COMMIT}
    ]


def test_validate_reports_a_flipped_byte_and_a_missing_file(
    registry: Registry, tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    assert main(["models", "import", f"local:{folder}", "--as", "one", "-q"]) == 0
    assert main(["models", "import", f"local:{folder}", "--as", "two", "-q", "--license", "mit"]) == 0
    assert main(["models", "validate", "-q"]) == 0
    assert capsys.readouterr().out.count("ok      ") == 2

    store = registry.store_path(registry.get("one"))
    _flip_last_byte(store / "model.safetensors")
    assert main(["models", "validate", "one", "-q"]) == 1
    out = capsys.readouterr().out
    assert "FAILED  one: 1 problem(s)" in out and "model.safetensors: sha256 mismatch" in out

    (store / "tokenizer.json").unlink()
    assert main(["models", "validate", "-q"]) == 1  # both entries share the content-addressed copy
    out = capsys.readouterr().out
    assert "tokenizer.json: missing" in out and "FAILED  two" in out


def test_delete_frees_the_hub_blobs(
    hub_repo: Path, registry: Registry, env_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "import", "hf:org/tiny", "--as", "tiny", "-q"]) == 0
    blobs = env_home / "hub" / "models--org--tiny" / "blobs"
    size = sum(p.stat().st_size for p in blobs.iterdir())
    capsys.readouterr()
    assert main(["models", "delete", "tiny"]) == 0
    out = capsys.readouterr().out
    from runner.units import format_size

    assert f"freed {format_size(size)}" in out
    assert not (env_home / "hub" / "models--org--tiny").exists()
    assert registry.entries() == {}


def test_delete_refuses_while_an_entry_or_a_queued_job_depends_on_it(
    registry: Registry, tiny_model_dir: Path, tmp_path: Path, env_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = copy_model(tiny_model_dir, tmp_path / "m")
    assert main(["models", "import", f"local:{folder}", "--as", "base", "-q"]) == 0
    store = registry.store_path(registry.get("base"))
    size = sum(p.stat().st_size for p in store.iterdir())

    # a queued run (the daemon's spec copy says registry:base)
    runs = tmp_path / "runs"
    run = new_run_dir(runs, "sft")
    StatusFile(run / "status.json").create(new_status("sft", run.name, spec_sha256="0" * 64))
    (run / "spec.toml").write_text('[model]\nsource = "registry:base"\n[data]\ntrain = "x.jsonl"\n')
    assert main(["models", "delete", "base", "--runs-dir", str(runs)]) == 1
    assert "'base' is still needed by job 'sft (queued)'" in capsys.readouterr().err

    # a fine-tuned entry
    with registry.edit() as models:
        models["child"] = registry.get("base").model_copy(
            update={
                "lineage": Lineage(
                    fine_tuned_from="base",
                    base_source="registry:base",
                    job="sft",
                    run_id=run.name,
                    spec_sha256="0" * 64,
                    method="lora",
                    form="merged",
                    base={},
                )
            }
        )
    assert main(["models", "delete", "base", "--runs-dir", str(tmp_path / "no-runs")]) == 1
    assert "entry 'child' (fine-tuned from it)" in capsys.readouterr().err
    assert store.is_dir() and "base" in registry.entries()

    # --force deletes the entry; the files stay while 'child' still uses the same store folder
    assert main(["models", "delete", "base", "--force", "--runs-dir", str(runs)]) == 0
    assert "kept" in capsys.readouterr().out and store.is_dir()
    assert main(["models", "delete", "child"]) == 0
    from runner.units import format_size

    assert f"freed {format_size(size)}" in capsys.readouterr().out
    assert not store.exists() and registry.entries() == {}


# ---- the size warning, on a fake network ----------------------------------------------------


@pytest.fixture
def online_hub(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: Path) -> list[dict[str, Any]]:
    """snapshot_download whose network half 'downloads' the tiny repo (dry runs report its sizes)."""
    from huggingface_hub.file_download import DryRunFileInfo

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", lambda **kw: (_ for _ in ()).throw(OSError("no card")))
    repo = model_folder_files(tiny_model_dir)
    calls: list[dict[str, Any]] = []
    real = huggingface_hub.snapshot_download

    def fake(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if kwargs.get("local_files_only"):
            return real(**kwargs)
        wanted = {n: p for n, p in repo.items() if any(fnmatch.fnmatch(n, a) for a in kwargs["allow_patterns"])}
        if kwargs.get("dry_run"):
            return [DryRunFileInfo(COMMIT, p.stat().st_size, n, "", False, True) for n, p in wanted.items()]
        add_to_hub_cache(Path(kwargs["cache_dir"]), kwargs["repo_id"], dict(wanted), COMMIT)
        return real(**{**kwargs, "local_files_only": True})

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    return calls


def test_a_download_above_the_threshold_needs_consent(
    online_hub: list[dict[str, Any]],
    registry: Registry,
    env_home: Path,
    tiny_model_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    size = sum(p.stat().st_size for p in tiny_model_dir.iterdir())
    assert main(["models", "import", "hf:org/tiny", "--as", "tiny", "-q", "--confirm-above", "1KB"]) == 1
    err = capsys.readouterr().err
    assert "warning: hf:org/tiny is" in err and "to download" in err and "pass --yes" in err
    assert not (env_home / "hub" / "models--org--tiny" / "snapshots").exists()  # nothing fetched
    assert [bool(c.get("dry_run")) for c in online_hub if not c.get("local_files_only")] == [True]

    assert main(["models", "import", "hf:org/tiny", "--as", "tiny", "-q", "--confirm-above", "1KB", "--yes"]) == 0
    assert registry.get("tiny").source == f"hf:org/tiny@{COMMIT}"
    assert registry.get("tiny").size_bytes == size
    online_hub.clear()
    assert main(["models", "import", "hf:org/tiny", "--as", "tiny", "-q"]) == 0  # below the default: no question
    assert all(c.get("local_files_only") for c in online_hub)  # and cached now: no second download
