"""`runner run` on a tiny text encoder: eval metrics before/during/after, checkpoints, the final
adapter, `runner embed`, resume after SIGTERM, and the loss/data/projection variants."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from runner.commands import main
from runner.data.embedding import Item
from runner.outputs.checkpoints import list_checkpoints
from runner.train.embedder import load_trained_embedder

from .helpers import metrics_of, only_run, pair_rows, status_of

EVAL_KEYS = {"eval_loss", "eval_ndcg@10", "eval_mrr@10", "eval_recall@1", "eval_recall@5", "eval_recall@10"}


def test_a_run_evaluates_before_every_n_steps_and_after_and_saves_the_adapter(
    write_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(eval_rows=pair_rows(8, start=100), eval={"every": 2}, loss={"symmetric": True})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    run = only_run(runs)
    lines = metrics_of(run)
    evals = [m for m in lines if "eval_ndcg@10" in m]
    assert [m["step"] for m in evals] == [0, 2, 4]  # baseline, every 2 steps, the end (not twice)
    assert all(set(m) >= EVAL_KEYS and 0.0 <= m["eval_ndcg@10"] <= 1.0 for m in evals)
    assert [m["step"] for m in lines if "loss" in m] == [1, 2, 3, 4]
    assert all(m["tokens_per_second"] > 0 for m in lines if "loss" in m)

    status = status_of(run)
    assert status["state"] == "succeeded" and status["extra"]["eval_metric"] == "ndcg@10"
    assert status["extra"]["eval_before"]["ndcg@10"] == evals[0]["eval_ndcg@10"]
    assert status["extra"]["eval_after"]["ndcg@10"] == evals[-1]["eval_ndcg@10"]
    assert status["extra"]["eval"]["step"] == 4 and status["extra"]["embedder"]["pooling"] == "mean"
    assert status["extra"]["eval_loss_before"] > status["extra"]["eval_loss_after"]  # it learned something

    steps = [(c.step, c.complete) for c in list_checkpoints(run / "checkpoints")]
    assert steps == [(2, True), (4, True)]
    saved = load_file(run / "checkpoints" / "step-4" / "embedder.safetensors")
    assert saved and all("lora_" in name for name in saved)  # the trained weights only, not the frozen base
    adapter = run / "adapter"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "runner_adapter.json"} <= {
        p.name for p in adapter.iterdir()
    }
    info = json.loads((adapter / "runner_adapter.json").read_text())
    assert info["embedder"]["dim"] == 32 and info["kind"] == "embedding" and info["run_id"] == run.name
    out = capsys.readouterr().out
    assert "eval at step 0: ndcg@10=" in out and "eval ndcg@10: " in out and " -> " in out


def test_runner_embed_prints_and_writes_the_trained_vectors(
    write_job: Callable[..., Path], tmp_path: Path, tiny_bert: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job()
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    capsys.readouterr()
    texts = ["question 1 about item 7", "item 7 answers question 1"]
    assert main(["embed", str(job), "--runs-dir", str(runs), "--text", texts[0], "--text", texts[1]]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [p["input"] for p in printed] == texts
    vectors = torch.tensor([p["embedding"] for p in printed])
    assert vectors.shape == (2, 32) and torch.allclose(vectors.norm(dim=1), torch.ones(2), atol=1e-5)

    adapter = only_run(runs) / "adapter"
    model, preprocess = load_trained_embedder(adapter, tiny_bert)
    items = [Item(text=t) for t in texts]
    with torch.no_grad():
        trained = model.encode(preprocess(items))
        features = preprocess(items)["text"]
        hidden = model.backbone(**features).last_hidden_state
        mask = features["attention_mask"].unsqueeze(-1)
        mean_pooled = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
        with model.backbone.disable_adapter():
            untrained = model.encode(preprocess(items))
    assert torch.allclose(vectors, trained, atol=1e-6)
    assert torch.allclose(trained, mean_pooled, atol=1e-6)  # mean pooling over real tokens, normalised
    assert not torch.allclose(trained, untrained, atol=1e-4)  # the adapter is in the printed vectors

    inputs = tmp_path / "inputs.txt"
    inputs.write_text("\n".join(texts) + "\n")
    assert (
        main(
            [
                "embed",
                "tiny-embed",
                "--runs-dir",
                str(runs),
                "--input",
                str(inputs),
                "--dim",
                "8",
                "--out",
                str(tmp_path / "v.npy"),
            ]
        )
        == 0
    )
    matrix = np.load(tmp_path / "v.npy")
    expected = torch.nn.functional.normalize(trained[:, :8], dim=-1).numpy()
    assert matrix.shape == (2, 8) and np.allclose(matrix, expected, atol=1e-6)
    assert main(["embed", "tiny-embed", "--runs-dir", str(runs), "--text", "x", "--task", "a"]) == 1
    assert "--task applies to multi-task models only" in capsys.readouterr().err
    bad = tmp_path / "inputs.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    assert main(["embed", "tiny-embed", "--runs-dir", str(runs), "--input", str(bad)]) == 1
    assert f"{bad}:2: expected an object with either a 'text' or an 'image' string" in capsys.readouterr().err


class _SigtermAt(TrainerCallback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)  # the runner's handler: checkpoint, then stop


def test_sigterm_checkpoints_and_the_resumed_run_ends_where_an_uninterrupted_one_does(
    write_job: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = write_job(
        rows=pair_rows(32),
        eval_rows=pair_rows(8, start=100),
        adapter={"dropout": 0.0},
        train={"max_steps": 6, "save_every": 100},
    )
    straight = tmp_path / "straight"
    assert main(["run", str(job), "--runs-dir", str(straight)]) == 0

    import runner.train.embedding as recipe

    class SignalledAtStep3(recipe.EmbeddingTrainer):  # type: ignore[misc]
        def __init__(self, *args: Any, callbacks: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, callbacks=[*(callbacks or []), _SigtermAt(3)], **kwargs)

    runs = tmp_path / "runs"
    with monkeypatch.context() as patch:
        patch.setattr(recipe, "EmbeddingTrainer", SignalledAtStep3)
        assert main(["run", str(job), "--runs-dir", str(runs)]) == 3  # interrupted, checkpoint at step 3
    run = only_run(runs)
    assert status_of(run)["state"] == "interrupted"
    assert [c.step for c in list_checkpoints(run / "checkpoints")] == [3]
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0  # resumes the same run
    status = status_of(run)
    assert status["state"] == "succeeded"
    assert [m["step"] for m in metrics_of(run) if "loss" in m] == [1, 2, 3, 4, 5, 6]  # none lost, none twice
    assert [m["step"] for m in metrics_of(run) if "eval_loss" in m] == [0, 6]  # the baseline is not redone
    assert status["extra"]["eval_before"] == status_of(only_run(straight))["extra"]["eval_before"]
    resumed = load_file(run / "adapter" / "adapter_model.safetensors")
    reference = load_file(only_run(straight) / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == reference.keys()
    for name in reference:
        assert torch.allclose(resumed[name], reference[name], atol=1e-6), name


def test_scored_pairs_train_with_cosent_and_report_spearman_at_each_matryoshka_dim(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [
        {"sentence1": f"text {i}", "sentence2": f"text {i} again" if i % 2 else f"other {i}", "score": float(i % 3)}
        for i in range(24)
    ]
    job = write_job(
        rows=rows,
        eval_rows=rows[:12],
        data={"format": "auto"},
        loss={"type": "matryoshka", "base": "cosent", "dims": [32, 16, 8]},
        train={"max_steps": 2},
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    status = status_of(only_run(runs))
    assert status["extra"]["data"]["format"] == "scored-pairs" and status["extra"]["eval_metric"] == "spearman"
    after = status["extra"]["eval_after"]
    assert {"spearman", "dim32_spearman", "dim16_spearman", "dim8_spearman", "loss"} <= set(after)
    assert -1.0 <= after["dim8_spearman"] <= 1.0 and after["spearman"] == after["dim32_spearman"]


def test_loss_that_does_not_fit_the_data_fails_as_a_config_error(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    rows = [{"sentence1": "a", "sentence2": "b", "score": 1.0}] * 8
    job = write_job(rows=rows, data={"format": "auto"}, loss={"type": "contrastive"})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 1
    status = status_of(only_run(runs))
    assert status["reason"] == "config" and "cosent" in status["error"]


def test_projection_sets_the_embedding_size_and_is_saved(
    write_job: Callable[..., Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    job = write_job(model={"projection_dim": 12}, train={"max_steps": 2})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    adapter = only_run(runs) / "adapter"
    assert (adapter / "projection.safetensors").is_file()
    capsys.readouterr()
    assert main(["embed", "tiny-embed", "--runs-dir", str(runs), "--text", "hello"]) == 0
    assert len(json.loads(capsys.readouterr().out)["embedding"]) == 12


def test_pooling_mean_cls_and_last_token_under_left_and_right_padding() -> None:
    from runner.train.embedder import pool

    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert torch.equal(pool(hidden, right, "last-token"), torch.stack([hidden[0, 2], hidden[1, 1]]))
    assert torch.equal(pool(hidden, left, "last-token"), torch.stack([hidden[0, 3], hidden[1, 3]]))
    assert torch.equal(pool(hidden, right, "cls"), hidden[:, 0])
    assert torch.allclose(pool(hidden, right, "mean"), torch.stack([hidden[0, :3].mean(0), hidden[1, :2].mean(0)]))


def test_a_decoder_lm_embeds_with_last_token_pooling(write_job: Callable[..., Path], tmp_path: Path) -> None:
    from ..train.tiny import save_tiny_causal_lm

    model_dir = save_tiny_causal_lm(tmp_path / "decoder")
    job = write_job(model={"source": f"local:{model_dir}"}, eval_rows=pair_rows(6, start=50), train={"max_steps": 2})
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    status = status_of(only_run(runs))
    assert status["extra"]["embedder"]["pooling"] == "last-token" and status["extra"]["embedder"]["dim"] == 64
