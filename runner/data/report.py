"""Where records come from, what went wrong with them, and what the data looked like.

Every problem found in the data (unparseable JSONL line, record in the wrong shape,
example with nothing left to learn after truncation) becomes a `BadRecord` that points
at its file and line/index. They are collected across all stages so that, under the
"error" policy, the user sees the *full* list in one go instead of fixing one record
per run.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

BAD_RECORD_POLICIES: tuple[str, ...] = ("error", "skip")


class DataError(Exception):
    """Base class of every error this package raises about the user's data."""


@dataclass(frozen=True)
class Location:
    """Where a record lives: `file:line` for JSONL and text, `file[index]` for JSON arrays and Hub
    data sets, `file, row N` for tables (CSV/TSV/Parquet).

    `line` is 1-based and is also filled for JSON array elements (the line where the
    element starts) so editors can jump there; `index` is 0-based within the array; `row` is
    1-based, counting a CSV header as row 1 as a spreadsheet does.
    """

    file: str
    line: int | None = None
    index: int | None = None
    row: int | None = None

    def __str__(self) -> str:
        if self.row is not None:
            return f"{self.file}, row {self.row}"
        if self.index is not None:
            return f"{self.file}[{self.index}]"
        if self.line is not None:
            return f"{self.file}:{self.line}"
        return self.file


@dataclass(frozen=True)
class BadRecord:
    """One record that could not be used, and the precise reason why."""

    location: Location
    reason: str

    def __str__(self) -> str:
        return f"{self.location}: {self.reason}"


class BadRecordsError(DataError):
    """Raised under on_bad_record="error"; carries every bad record and prints the first
    MAX_LISTED, with the most common reasons (and `summary`, e.g. why every record failed)."""

    MAX_LISTED = 100

    def __init__(self, bad_records: Sequence[BadRecord], summary: str | None = None) -> None:
        self.bad_records = list(bad_records)
        n = len(self.bad_records)
        lines = "\n".join(str(b) for b in self.bad_records[: self.MAX_LISTED])
        if n > self.MAX_LISTED:
            lines += f"\n... and {n - self.MAX_LISTED} more; most common reasons: {common_reasons(self.bad_records)}"
        head = f"{summary}\n" if summary else ""
        super().__init__(
            f"{head}{n} bad record{'s' if n != 1 else ''}:\n{lines}\n"
            'Fix them, or set data.on_bad_record = "skip" to drop them (they are counted in the data report).'
        )


def common_reasons(bad_records: Sequence[BadRecord], top: int = 3) -> str:
    """The most common reasons with their counts; numbers are folded, so "turn 3" and "turn 5" of
    the same mistake count together (the first one seen stands for the group)."""
    counts: Counter[str] = Counter()
    example: dict[str, str] = {}
    for bad in bad_records:
        group = re.sub(r"\d+", "N", bad.reason)
        counts[group] += 1
        example.setdefault(group, bad.reason)
    parts = [f"{example[group]} ({n} record{'s' if n != 1 else ''})" for group, n in counts.most_common(top)]
    if len(counts) > top:
        parts.append(f"{len(counts) - top} other reason(s)")
    return "; ".join(parts)


def all_bad_message(
    total: int, bad_records: Sequence[BadRecord], *, fmt: str, forced: bool, looks_like: tuple[str, str] | None = None
) -> str:
    """Why no record at all is usable: the common reasons and, when the format was set by hand
    and the records look like another one, that format and how to choose it."""
    message = f"all {total} records are bad as format '{fmt}'; most common reasons: {common_reasons(bad_records)}"
    if forced and looks_like is not None and looks_like[0] != fmt:
        other, why = looks_like
        message += f'. The records look like {other} ({why}): set data.format = "{other}" (--format {other}), or "auto"'
    return message


def in_file_order(bad_records: Sequence[BadRecord], files: Sequence[str]) -> list[BadRecord]:
    """Sort by file (in the order given; unknown files last), then by line/index in the file."""
    rank = {f: i for i, f in reversed(list(enumerate(files)))}  # first appearance wins

    def key(b: BadRecord) -> tuple[int, int, int, int]:
        loc = b.location
        return rank.get(loc.file, len(rank)), loc.row or 0, loc.line or 0, loc.index or 0

    return sorted(bad_records, key=key)


def enforce_policy(bad_records: Sequence[BadRecord], on_bad_record: str, summary: str | None = None) -> None:
    """Raise `BadRecordsError` with the full list under "error"; do nothing under "skip"."""
    check_policy(on_bad_record)
    if bad_records and on_bad_record == "error":
        raise BadRecordsError(bad_records, summary)


def check_policy(on_bad_record: str) -> None:
    if on_bad_record not in BAD_RECORD_POLICIES:
        raise ValueError(f"on_bad_record must be one of {BAD_RECORD_POLICIES}, got {on_bad_record!r}")


@dataclass(frozen=True)
class LengthStats:
    """Token length distribution of the kept examples (after truncation)."""

    min: int
    mean: float
    p50: int
    p95: int
    max: int

    @classmethod
    def from_lengths(cls, lengths: Sequence[int]) -> LengthStats | None:
        if not lengths:
            return None
        ordered = sorted(lengths)
        return cls(
            min=ordered[0],
            mean=sum(ordered) / len(ordered),
            p50=_percentile(ordered, 50),
            p95=_percentile(ordered, 95),
            max=ordered[-1],
        )


def _percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile: always an observed length, easy to reason about."""
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


@dataclass
class DataReport:
    """What the data stage did; logged by the trainer and saved with the run's outputs."""

    format: str
    format_reason: str
    records_read: int = 0
    records_kept: int = 0
    bad_records: list[BadRecord] = field(default_factory=list)
    lengths: LengthStats | None = None
    truncated: int = 0
    trainable_tokens: int = 0
    max_length: int | None = None
    warnings: list[str] = field(default_factory=list)
    tools: dict[str, int] = field(default_factory=dict)  # how tool definitions reached the prompt -> records
    media_dropped: int = 0

    @property
    def records_bad(self) -> int:
        return len(self.bad_records)

    def summary(self) -> str:
        """A few human-readable lines for the log."""
        out = [
            f"format: {self.format} ({self.format_reason})",
            f"records: {self.records_read} read, {self.records_kept} kept, {self.records_bad} bad",
        ]
        if self.lengths is not None:
            s = self.lengths
            out.append(
                f"tokens per example: min {s.min}, mean {s.mean:.1f}, p50 {s.p50}, p95 {s.p95}, max {s.max}; "
                f"{self.truncated} truncated to max_length={self.max_length}; "
                f"{self.trainable_tokens} trainable tokens"
            )
        out.extend(f"warning: {w}" for w in self.warnings)
        out.extend(f"  bad: {b}" for b in self.bad_records[:20])
        if self.records_bad > 20:
            out.append(f"  ... and {self.records_bad - 20} more")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (locations and reasons as strings)."""
        d = asdict(self)
        d["bad_records"] = [str(b) for b in self.bad_records]
        return d


# Score scales of scored-pair datasets, narrowest first: STS-B is 0-5, most others 0-1 or -1-1.
SCORE_SCALES: tuple[tuple[float, float], ...] = (
    (0.0, 1.0),
    (-1.0, 1.0),
    (0.0, 5.0),
    (1.0, 5.0),
    (0.0, 10.0),
    (0.0, 100.0),
)


def score_scale_warning(scores: Sequence[tuple[float, Location | None]], share: float = 0.9) -> str | None:
    """A warning when most scores (`share`) lie on one common scale and a few do not: two files on
    different scales merged, or a typo. CoSENT ranks every pair of scores, so an outlier pushes its
    pairs above all others."""
    if not scores:
        return None
    for low, high in SCORE_SCALES:
        outside = [(value, where) for value, where in scores if not low <= value <= high]
        if len(scores) - len(outside) >= share * len(scores):
            if not outside:
                return None
            value, where = outside[0]
            inside = 100 * (len(scores) - len(outside)) / len(scores)
            return (
                f"{len(outside)} of {len(scores)} scores lie outside {low:g} to {high:g}, where the other "
                f"{inside:.0f}% lie (first: {where}, score {value:g}); do the files mix scales? "
                "put every score on one scale"
            )
    return None
