"""Retrieval metrics and Spearman against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from runner.train.embedding_eval import retrieval_metrics, spearman


def test_retrieval_metrics_by_hand() -> None:
    scores = torch.tensor(
        [
            [0.9, 0.8, 0.1, 0.0],  # relevant {1}: ranked 2nd
            [0.0, 0.1, 0.9, 0.5],  # relevant {2, 3}: ranked 1st and 2nd
        ]
    )
    metrics = retrieval_metrics(scores, [{1}, {2, 3}], recall_at=(1, 3))
    # recall@1: q0 0/1, q1 1/2; recall@3: both found all; MRR: 1/2 and 1
    assert metrics["recall@1"] == pytest.approx((0 + 0.5) / 2)
    assert metrics["recall@3"] == pytest.approx(1.0)
    assert metrics["mrr@10"] == pytest.approx((0.5 + 1.0) / 2)
    # nDCG@10: q0 = (1/log2 3) / 1; q1 = (1 + 1/log2 3) / (1 + 1/log2 3) = 1
    assert metrics["ndcg@10"] == pytest.approx((1 / math.log2(3) + 1.0) / 2)


def test_a_relevant_document_beyond_rank_10_counts_for_nothing_at_10() -> None:
    scores = torch.arange(12, 0, -1, dtype=torch.float32)[None, :]  # document i ranked i+1
    metrics = retrieval_metrics(scores, [{10}], recall_at=(10, 11))
    assert metrics["mrr@10"] == 0.0 and metrics["ndcg@10"] == 0.0 and metrics["recall@10"] == 0.0
    assert metrics["recall@11"] == 1.0


def test_spearman_by_hand() -> None:
    # ranks of y with the tie averaged: [1, 2, 3.5, 5, 3.5]; cov 8, sums of squares 10 and 9.5
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(10 * 9.5))
    assert spearman([1, 2, 3], [10, 20, 300]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        spearman([1.0], [1.0])
