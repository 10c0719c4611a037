"""A run whose loss or gradients turn non-finite ends `failed` with reason `diverged` at that step,
never `succeeded` with an adapter of nan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runner.commands import main

from .tiny import save_tiny_causal_lm

TRIGGER = "~"  # a token only the later records hold; its input embedding is infinite


def _poisoned_model(folder: Path) -> Path:
    """A tiny causal LM (untied embeddings) whose input embedding of TRIGGER is inf: a batch that
    holds the token gives a nan loss, every other batch trains normally."""

    def poison(model: Any, tokenizer: Any) -> None:
        import torch

        (trigger,) = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(TRIGGER))
        with torch.no_grad():
            model.get_input_embeddings().weight[trigger] = float("inf")

    return save_tiny_causal_lm(folder, tie_word_embeddings=False, before_save=poison)


@pytest.fixture(scope="module")
def poisoned_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _poisoned_model(tmp_path_factory.mktemp("poisoned") / "model")


def _job(folder: Path, model: Path, **train: object) -> Path:
    rows = [{"instruction": f"What is {i} + {i}?", "output": f"{2 * i}."} for i in range(6)]
    rows += [{"instruction": f"What is {i} {TRIGGER} {i}?", "output": f"{i}."} for i in range(6)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    settings = {"max_steps": 6, "batch_size": 2, "learning_rate": 1e-3, "log_every": 1, "save_every": 100, **train}
    lines = "\n".join(f"{key} = {json.dumps(value)}" for key, value in settings.items())
    job = folder / "diverges.toml"
    job.write_text(
        f'[model]\nsource = "local:{model}"\n[data]\ntrain = "train.jsonl"\nmax_length = 64\n'
        f"shuffle = false\n[train]\n{lines}\n",
        encoding="utf-8",
    )
    return job


def test_a_nan_loss_mid_run_fails_the_run_as_diverged_at_that_step(
    tmp_path: Path, poisoned_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path, poisoned_model)
    runs = tmp_path / "runs"
    code = main(["run", str(job), "--runs-dir", str(runs)])
    err = capsys.readouterr().err
    (run,) = (runs / "diverges").iterdir()
    status = json.loads((run / "status.json").read_text())
    assert code == 1, err
    assert (status["state"], status["reason"]) == ("failed", "diverged"), status
    assert status["error"].startswith("training diverged at step 4: the gradient norm is nan; ")
    assert "train.learning_rate (now 0.001)" in status["error"]
    assert not (run / "adapter").exists()
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3]  # the healthy steps, then the stop
    assert all(r["loss"] == r["loss"] for r in logged if "loss" in r)  # none of them nan


def test_the_hint_names_the_unclipped_gradients_when_clipping_is_off(
    tmp_path: Path, poisoned_model: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = _job(tmp_path, poisoned_model, max_grad_norm=0)
    main(["run", str(job), "--runs-dir", str(tmp_path / "runs")])
    capsys.readouterr()
    (run,) = (tmp_path / "runs" / "diverges").iterdir()
    status = json.loads((run / "status.json").read_text())
    assert status["reason"] == "diverged"
    assert "train.max_grad_norm = 0 leaves the gradients unclipped: set it to 1.0" in status["error"]


def test_the_likely_setting_follows_the_spec() -> None:
    from runner.spec import parse_job
    from runner.train.health import likely_setting

    def hint(extra: str) -> str:
        body = '[model]\nsource = "pkg:x"\n[data]\ntrain = "t.jsonl"\n' + extra
        return likely_setting(parse_job(body, display="j.toml", default_name="j").spec)

    assert hint("[train]\nlearning_rate = 0.5\n").startswith(
        "train.learning_rate = 0.5 is high for fine-tuning: try 0.05"
    )
    assert hint('[resources]\ndevice = "cuda"\nprecision = "fp16"\n').startswith('resources.precision = "fp16"')
    assert hint("").startswith("lower train.learning_rate (now 0.0002)")
