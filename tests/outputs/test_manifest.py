"""manifest.json records what produced a run: inputs, versions, code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from runner.outputs.manifest import build_manifest, git_info, read_manifest, sha256_json, write_manifest

from ._support import T0

ARGS = dict(
    spec={"job": "demo", "lora": {"r": 8}},
    spec_sha256="ab" * 32,
    model={"source": "local:tiny", "sha256": {"model.safetensors": "cd" * 32}},
    data_fingerprint="ef" * 32,
    seed=1234,
    command=["runner", "run", "jobs/demo.toml"],
)


@pytest.fixture
def isolated_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """git that ignores the machine's config and never walks above tmp_path."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    for who in ("AUTHOR", "COMMITTER"):
        monkeypatch.setenv(f"GIT_{who}_NAME", "Test")
        monkeypatch.setenv(f"GIT_{who}_EMAIL", "test@example.invalid")
    return dict(os.environ)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path) -> Path:
    path.mkdir()
    git(path, "init", "-q")
    (path / "train.py").write_text("print('v1')\n")
    git(path, "add", "train.py")
    git(path, "-c", "commit.gpgsign=false", "commit", "-q", "-m", "init")
    return path


def test_spec_hash_ignores_key_order_and_whitespace() -> None:
    a = {"lora": {"r": 8, "alpha": 16}, "job": "demo"}
    b = json.loads('{ "job" : "demo", "lora": {"alpha": 16, "r": 8} }')
    assert sha256_json(a) == sha256_json(b)
    assert sha256_json(a) != sha256_json({**a, "job": "demo2"})
    assert len(sha256_json(a)) == 64


def test_spec_hash_refuses_values_without_a_canonical_json_form() -> None:
    with pytest.raises(ValueError):
        sha256_json({"lr": float("nan")})
    with pytest.raises(TypeError):
        sha256_json({"path": Path("x")})


def test_manifest_records_inputs_and_installed_versions(tmp_path: Path, isolated_git: dict[str, str]) -> None:
    m = build_manifest(**ARGS, now=T0, cwd=tmp_path)
    for key, value in ARGS.items():
        assert m[key] == value
    assert m["created"] == "2026-11-22T04:45:01.000000Z"
    assert m["packages"]["torch"] == metadata.version("torch")
    assert m["packages"]["transformers"] == metadata.version("transformers")
    assert m["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert m["platform"]["machine"]
    json.dumps(m)  # the whole manifest is plain JSON


def test_packages_not_installed_are_left_out(tmp_path: Path) -> None:
    m = build_manifest(**ARGS, cwd=tmp_path, packages=["torch", "surely-not-installed-pkg"])
    assert list(m["packages"]) == ["torch"]


def test_git_commit_and_dirty_flag_of_the_work_tree(tmp_path: Path, isolated_git: dict[str, str]) -> None:
    repo = make_repo(tmp_path / "repo")
    head = git(repo, "rev-parse", "HEAD")

    assert build_manifest(**ARGS, cwd=repo)["git"] == {"commit": head, "dirty": False}

    (repo / "notes.txt").write_text("untracked scratch")
    assert git_info(repo) == {"commit": head, "dirty": False}, "untracked files are not dirt"

    (repo / "train.py").write_text("print('v2')\n")
    assert git_info(repo) == {"commit": head, "dirty": True}


def test_git_info_works_from_a_subfolder_of_the_work_tree(tmp_path: Path, isolated_git: dict[str, str]) -> None:
    repo = make_repo(tmp_path / "repo")
    (repo / "jobs").mkdir()
    assert git_info(repo / "jobs") == {"commit": git(repo, "rev-parse", "HEAD"), "dirty": False}


def test_repository_without_commits_has_no_commit(tmp_path: Path, isolated_git: dict[str, str]) -> None:
    (tmp_path / "fresh").mkdir()
    git(tmp_path / "fresh", "init", "-q")
    assert git_info(tmp_path / "fresh") == {"commit": None, "dirty": False}


def test_outside_a_work_tree_git_is_none(tmp_path: Path, isolated_git: dict[str, str]) -> None:
    assert build_manifest(**ARGS, cwd=tmp_path)["git"] is None


def test_without_git_installed_git_is_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated_git: dict[str, str]
) -> None:
    repo = make_repo(tmp_path / "repo")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    assert git_info(repo) is None


def test_write_and_read_back(tmp_path: Path) -> None:
    m = build_manifest(**ARGS, cwd=tmp_path)
    write_manifest(tmp_path / "run" / "manifest.json", m)
    assert read_manifest(tmp_path / "run" / "manifest.json") == m
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["manifest.json"]


def test_outputs_package_does_not_import_torch() -> None:
    """`runner status` imports runner.outputs; pulling in torch would cost seconds."""
    code = (
        "import sys, runner.outputs as o\n"
        "o.build_manifest(spec={}, spec_sha256='', model={}, data_fingerprint='', seed=0, command=[])\n"
        "bad = sorted(m for m in ('torch', 'transformers', 'runner.train', 'runner.commands',"
        " 'runner.data', 'runner.registry') if m in sys.modules)\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
