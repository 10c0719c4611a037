"""Evaluation of embedding models: retrieval (recall@k, MRR@10, nDCG@10) and Spearman correlation.

The metric functions are plain and hand-checkable; `EmbeddingEvaluator` runs a model over the
eval examples: each distinct query, document and sentence is encoded once, every Matryoshka
dimension is a slice of those vectors, and the held-out loss is computed from the same vectors
batch by batch (eval batches in file order; the loss never gathers across processes here).

Metric names: ``ndcg@10``, ``mrr@10``, ``recall@K`` (retrieval) or ``spearman`` (scored pairs),
``loss``; at a Matryoshka dimension ``dim{D}_<metric>``; per task ``{task}_<metric>``, with
the unprefixed metric the mean over tasks.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from runner.data.embedding import EmbeddingExample, Item, retrieval_set
from runner.train.embedder import Embedder, Preprocessor


def retrieval_metrics(
    scores: torch.Tensor, relevant: Sequence[set[int]], recall_at: Sequence[int] = (1, 5, 10)
) -> dict[str, float]:
    """Mean over queries of recall@k (relevant found in the top k / relevant), MRR@10 and nDCG@10
    (binary relevance), from a [queries, corpus] similarity matrix."""
    return ranked_metrics(top_documents(scores, _depth(recall_at)), relevant, recall_at)


def _depth(recall_at: Sequence[int]) -> int:
    return max([10, *recall_at])


def top_documents(scores: torch.Tensor, depth: int) -> list[list[int]]:
    """Each query's best `depth` corpus indices, best first."""
    return scores.topk(min(depth, scores.shape[1]), dim=1).indices.tolist()


def ranked_metrics(
    ranked: Sequence[Sequence[int]], relevant: Sequence[set[int]], recall_at: Sequence[int]
) -> dict[str, float]:
    """`retrieval_metrics` from each query's ranked corpus indices."""
    totals = {f"recall@{k}": 0.0 for k in recall_at} | {"mrr@10": 0.0, "ndcg@10": 0.0}
    for docs, rel in zip(ranked, relevant, strict=True):
        hits = [1 if d in rel else 0 for d in docs]
        for k in recall_at:
            totals[f"recall@{k}"] += sum(hits[:k]) / len(rel)
        first = next((rank for rank, hit in enumerate(hits[:10]) if hit), None)
        totals["mrr@10"] += 0.0 if first is None else 1.0 / (first + 1)
        dcg = sum(hit / math.log2(rank + 2) for rank, hit in enumerate(hits[:10]))
        ideal = sum(1.0 / math.log2(rank + 2) for rank in range(min(len(rel), 10)))
        totals["ndcg@10"] += dcg / ideal
    return {name: value / len(relevant) for name, value in totals.items()}


def _ranks(values: Sequence[float]) -> list[float]:
    """1-based ranks; tied values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson correlation of the tie-averaged ranks)."""
    if len(x) != len(y) or len(x) < 2:
        raise ValueError("spearman needs two sequences of the same length, at least 2")
    rx, ry = _ranks(list(x)), _ranks(list(y))
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sx = math.sqrt(sum((a - mx) ** 2 for a in rx))
    sy = math.sqrt(sum((b - my) ** 2 for b in ry))
    return cov / (sx * sy) if sx and sy else 0.0


def primary_metric(scored: bool) -> str:
    """The number a run is judged by: Spearman for scored pairs, nDCG@10 for retrieval."""
    return "spearman" if scored else "ndcg@10"


class EmbeddingEvaluator:
    def __init__(
        self,
        examples: Sequence[EmbeddingExample],
        preprocess: Preprocessor,
        loss: torch.nn.Module,
        *,
        batch_size: int,
        recall_at: Sequence[int] = (1, 5, 10),
        dims: Sequence[int] = (),
    ) -> None:
        self.preprocess = preprocess
        self.loss = loss
        self.batch_size = batch_size
        self.recall_at = list(recall_at)
        self.dims = list(dims)
        self.scored = bool(examples) and examples[0].score is not None
        self.groups: dict[str | None, list[EmbeddingExample]] = {}
        for example in examples:
            self.groups.setdefault(example.task, []).append(example)

    @property
    def primary(self) -> str:
        return primary_metric(self.scored)

    def __call__(self, model: Embedder) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                per_task = {task: self._evaluate(model, task, examples) for task, examples in self.groups.items()}
        finally:
            model.train(was_training)
        if list(per_task) == [None]:
            return per_task[None]
        metrics: dict[str, float] = {}
        for task, values in per_task.items():
            metrics.update({f"{task}_{name}": value for name, value in values.items()})
        for name in next(iter(per_task.values())):
            metrics[name] = sum(values[name] for values in per_task.values()) / len(per_task)
        return metrics

    def _encode(self, model: Embedder, items: Sequence[Item]) -> torch.Tensor:
        device = next(model.parameters()).device
        out = []
        for start in range(0, len(items), self.batch_size):
            features = _to_device(self.preprocess(items[start : start + self.batch_size]), device)
            out.append(model.encode(features).float())
        return torch.cat(out)

    def _evaluate(self, model: Embedder, task: str | None, examples: list[EmbeddingExample]) -> dict[str, float]:
        if task is not None:
            model.set_task(task)
        if self.scored:
            first = self._encode(model, [e.query for e in examples])
            second = self._encode(model, [e.positive for e in examples])
            gold = [e.score for e in examples]
            metrics = self._at_dims(lambda d: {"spearman": spearman(_cos(first, second, d), gold)})  # type: ignore[arg-type]
            negatives = None
        else:
            dataset = retrieval_set(examples)
            queries = self._encode(model, dataset.queries)
            corpus = self._encode(model, dataset.corpus)
            metrics = self._at_dims(
                lambda d: ranked_metrics(
                    _ranked(_unit(queries, d), _unit(corpus, d), _depth(self.recall_at)),
                    dataset.relevant,
                    self.recall_at,
                )
            )
            q_index = {item.key: i for i, item in enumerate(dataset.queries)}
            c_index = {item.key: i for i, item in enumerate(dataset.corpus)}
            first = queries[[q_index[e.query.key] for e in examples]]
            second = corpus[[c_index[e.positive.key] for e in examples]]
            negatives = [corpus[[c_index[n.key] for n in e.negatives]] for e in examples]
        metrics["loss"] = self._loss(examples, first, second, negatives, task)
        return metrics

    def _at_dims(self, compute: Callable[[int | None], dict[str, float]]) -> dict[str, float]:
        metrics = dict(compute(None))
        for dim in self.dims:
            metrics.update({f"dim{dim}_{name}": value for name, value in compute(dim).items()})
        return metrics

    def _loss(
        self,
        examples: list[EmbeddingExample],
        first: torch.Tensor,
        second: torch.Tensor,
        negatives: list[torch.Tensor] | None,
        task: str | None,
    ) -> float:
        """The training loss over eval batches of `batch_size`, averaged over batches."""
        kwargs = {"task": task} if task is not None else {}
        values = []
        for start in range(0, len(examples), self.batch_size):
            batch = slice(start, start + self.batch_size)
            negs = None
            if negatives is not None and any(n.shape[0] for n in negatives[batch]):
                negs = torch.cat(negatives[batch])
            scores = torch.tensor([e.score for e in examples[batch]], dtype=torch.float32) if self.scored else None
            values.append(float(self.loss(first[batch], second[batch], negs, scores, **kwargs)))
        return sum(values) / len(values)


def _ranked(queries: torch.Tensor, corpus: torch.Tensor, depth: int, block: int = 1024) -> list[list[int]]:
    """Top corpus indices per query, a block of queries at a time (never a full queries x corpus matrix)."""
    return [
        row
        for start in range(0, queries.shape[0], block)
        for row in top_documents(queries[start : start + block] @ corpus.T, depth)
    ]


def _unit(vectors: torch.Tensor, dim: int | None) -> torch.Tensor:
    return F.normalize(vectors if dim is None else vectors[:, :dim], dim=-1)


def _cos(a: torch.Tensor, b: torch.Tensor, dim: int | None) -> list[float]:
    return (_unit(a, dim) * _unit(b, dim)).sum(-1).tolist()


def _to_device(features: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (_to_device(v, device) if isinstance(v, dict) else v.to(device)) for k, v in features.items()}
