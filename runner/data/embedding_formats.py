"""The embedding data formats (pairs, triplets, scored-pairs, image-text; runner.data.embedding
reads them): their field names and their detection. Apart from the module that builds the examples,
so that runner.data.kinds can compare every kind of data without importing the readers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from runner.data.detection import vote_on_format

FORMATS: tuple[str, ...] = ("pairs", "triplets", "scored-pairs", "image-text")

# canonical field -> names tried, in order, when data.fields does not map it
ALIASES: dict[str, tuple[str, ...]] = {
    "query": ("query", "anchor", "question", "q"),
    "positive": ("positive", "pos", "document", "passage", "answer"),
    "negative": ("negative", "negatives", "neg", "hard_negative", "hard_negatives"),
    "sentence1": ("sentence1", "text1", "sentence_a"),
    "sentence2": ("sentence2", "text2", "sentence_b"),
    "score": ("score", "label", "similarity"),
    "image": ("image", "image_path"),
    "query_image": ("query_image",),
    "task": ("task",),
}


def field_key(data: Mapping[str, Any], canonical: str, fields: Mapping[str, str]) -> str | None:
    """The record key holding `canonical`: the mapped name if data.fields maps it, else an alias."""
    if canonical in fields:
        return fields[canonical] if fields[canonical] in data else None
    return next((name for name in ALIASES[canonical] if name in data), None)


def _classify(data: Mapping[str, Any], fields: Mapping[str, str]) -> tuple[str, str] | None:
    def has(canonical: str) -> str | None:
        return field_key(data, canonical, fields)

    if has("sentence1") and has("sentence2"):
        return "scored-pairs", f"'{has('sentence1')}'/'{has('sentence2')}' keys"
    if has("image") or has("query_image"):
        return "image-text", f"'{has('image') or has('query_image')}' key"
    if has("query") and has("positive"):
        if has("negative"):
            return "triplets", f"'{has('query')}'/'{has('positive')}'/'{has('negative')}' keys"
        return "pairs", f"'{has('query')}'/'{has('positive')}' keys"
    return None


def detect_format(records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Guess the embedding format from the first records; return (format, reason)."""
    given = dict(fields or {})
    return vote_on_format(
        records,
        lambda data: _classify(data, given),
        "embedding data format: the first records have keys {keys}; expected "
        "query + positive (pairs), + negative (triplets), sentence1 + sentence2 + score (scored-pairs) "
        "or image / query_image + text (image-text). Set data.format and map your field names with data.fields.",
    )
