"""Padding-free embedding batches: the texts of a batch end to end in one row, attention within each
text. The vectors and the gradients equal the padded path's (BERT-style encoder, Llama-style decoder
with last-token pooling); models that cannot take it stay padded."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from runner.commands import main
from runner.data.embedding import EmbeddingExample, Item
from runner.spec import load_job
from runner.train.embedder import EmbeddingCollator, build_embedder, pool, pool_packed
from runner.train.losses import build_loss
from runner.train.model import DeviceChoice

from ..train.tiny import save_tiny_causal_lm
from .helpers import only_run

CPU = DeviceChoice(device="cpu", dtype="float32", precision="fp32", attn_implementation="sdpa")
TEXTS = [
    ("a short one", "its answer here"),
    ("a much longer question with many more words in it", "yes"),
    ("mid length query text", "a positive that is rather long as positives go, many tokens"),
    ("x", "y z"),
]


def _examples(scored: bool = False) -> list[EmbeddingExample]:
    return [
        EmbeddingExample(query=Item(text=q), positive=Item(text=p), score=(0.2 * i if scored else None))
        for i, (q, p) in enumerate(TEXTS)
    ]


def _build(job: Path, model_dir: Path | None, padding_free: bool, **sections: Any) -> tuple[Any, Any]:
    spec = load_job(job).spec
    spec = spec.model_copy(
        update={
            "train": spec.train.model_copy(
                update={"speed": spec.train.speed.model_copy(update={"padding_free_embeddings": padding_free})}
            )
        }
    )
    torch.manual_seed(0)
    embedder, preprocess = build_embedder(model_dir or Path(spec.model.source.removeprefix("local:")), spec, CPU)
    with torch.no_grad():  # LoRA B starts at zero: give the adapter a part in the vectors
        for name, param in embedder.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(hash(name) % 2**31))
    return embedder, preprocess


@pytest.fixture(params=["bert", "llama"])
def model_job(
    request: pytest.FixtureRequest, write_job: Callable[..., Path], tmp_path: Path
) -> tuple[Path, Path | None]:
    if request.param == "bert":
        return write_job(adapter={"r": 4, "alpha": 8, "dropout": 0.0}), None
    decoder = save_tiny_causal_lm(tmp_path / "decoder")
    return write_job(
        model={"source": f"local:{decoder}", "kind": "embedding", "pooling": "last-token"},
        adapter={"r": 4, "alpha": 8, "dropout": 0.0},
    ), decoder


def test_padding_free_vectors_and_gradients_equal_the_padded_path(model_job: tuple[Path, Path | None]) -> None:
    job, model_dir = model_job
    results = {}
    for padding_free in (False, True):
        embedder, preprocess = _build(job, model_dir, padding_free)
        assert preprocess.padding_free is padding_free
        batch = EmbeddingCollator(preprocess)(_examples())
        assert ("lengths" in batch["query"]["text"]) is padding_free
        if padding_free:
            assert "attention_mask" not in batch["query"]["text"]  # nothing padded, nothing masked
        embedder.train()
        vectors = embedder(query=batch["query"], positive=batch["positive"])
        loss = build_loss(load_job(job).spec.loss, "contrastive")(vectors["query"], vectors["positive"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in embedder.named_parameters() if p.requires_grad}
        results[padding_free] = (vectors["query"].detach(), vectors["positive"].detach(), float(loss.detach()), grads)
    (q0, p0, l0, g0), (q1, p1, l1, g1) = results[False], results[True]
    assert torch.allclose(q0, q1, atol=1e-5) and torch.allclose(p0, p1, atol=1e-5)
    assert l1 == pytest.approx(l0, abs=1e-5)
    assert g0.keys() == g1.keys() and g0
    for name in g0:
        assert torch.allclose(g0[name], g1[name], atol=1e-5, rtol=1e-4), name


def test_each_side_alone_gives_the_same_vectors_as_the_sides_in_one_row(write_job: Callable[..., Path]) -> None:
    embedder, preprocess = _build(write_job(adapter={"r": 4, "alpha": 8, "dropout": 0.0}), None, True)
    embedder.eval()
    batch = EmbeddingCollator(preprocess)(_examples())
    with torch.no_grad():
        together = embedder(query=batch["query"], positive=batch["positive"])
        alone = {side: embedder.encode(batch[side]) for side in ("query", "positive")}
    for side in alone:
        assert torch.allclose(together[side], alone[side], atol=1e-6)


@pytest.mark.parametrize("how", ["mean", "cls", "last-token"])
def test_packed_pooling_equals_padded_pooling(how: str) -> None:
    torch.manual_seed(0)
    lengths = torch.tensor([3, 1, 5])
    hidden = torch.randn(int(lengths.sum()), 4, dtype=torch.float64)
    padded = torch.zeros(3, 5, 4, dtype=torch.float64)
    mask = torch.zeros(3, 5, dtype=torch.long)
    start = 0
    for row, n in enumerate(lengths.tolist()):
        padded[row, :n], mask[row, :n] = hidden[start : start + n], 1
        start += n
    assert torch.allclose(pool_packed(hidden, lengths, how), pool(padded, mask, how))


def test_a_model_that_counts_positions_from_padding_stays_padded(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    from transformers import RobertaConfig, RobertaModel

    from ..data.helpers import make_tokenizer

    tokenizer = make_tokenizer(chat_template=None)
    folder = tmp_path / "roberta"
    RobertaModel(
        RobertaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=130,
            pad_token_id=tokenizer.pad_token_id,
        )
    ).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    _, preprocess = _build(write_job(model={"source": f"local:{folder}", "kind": "embedding"}), folder, True)
    assert preprocess.padding_free is False


def test_a_padding_free_run_counts_real_tokens_and_says_so_in_the_manifest(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = write_job()
    assert main(["run", str(job), "--runs-dir", str(tmp_path / "runs")]) == 0
    run = only_run(tmp_path / "runs")
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["runtime"]["padding_free"] is True
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    seen = [m["tokens_seen"] for m in metrics if "tokens_seen" in m]
    assert seen and seen[-1] > 0
