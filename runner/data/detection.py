"""Format detection shared by every kind of data: the first records vote, the most common answer
wins. Each kind (runner.data.formats for SFT, runner.data.embedding_formats, runner.data.preference)
brings its own classifier; runner.data.kinds compares the kinds."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from runner.data.report import DataError

DETECT_SAMPLE = 100  # records looked at by a detection


def vote_on_format(
    records: Sequence[Mapping[str, Any]], classify: Callable[[Mapping[str, Any]], tuple[str, str] | None], expected: str
) -> tuple[str, str]:
    """Each of the first DETECT_SAMPLE records votes with `classify`; the most common answer wins,
    so a few stray records do not flip the decision (they fail later as bad records). `expected`
    completes the error when no record matches ("cannot detect ...: the first records have keys ...")."""
    votes: Counter[tuple[str, str]] = Counter()
    sample = records[:DETECT_SAMPLE]
    for data in sample:
        guess = classify(data)
        if guess is not None:
            votes[guess] += 1
    if not votes:
        keys = sorted({k for data in sample for k in data})
        raise DataError(f"cannot detect the {expected.format(keys=keys)}")
    (fmt, reason), count = votes.most_common(1)[0]
    return fmt, f"{reason} ({count} of {len(sample)} sampled records)"
