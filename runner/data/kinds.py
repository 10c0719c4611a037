"""What kind of data records are, across the kinds: SFT (runner.data.formats), preference
(runner.data.preference) and embedding (runner.data.embedding_formats). The modules of each kind
know only their own formats; what compares the kinds lives here, above them all.

- `detect_format`: the SFT format of records, refusing preference records (they would pass for
  sharegpt or alpaca records with every record bad);
- `guess_format`: what records look like, whatever the kind, for the message that explains why
  every record failed under a format set by hand;
- `usage_problems`: what is wrong with a format and a field mapping given by hand.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from runner.data.embedding_formats import ALIASES as EMBEDDING_FIELDS
from runner.data.embedding_formats import FORMATS as EMBEDDING_FORMATS
from runner.data.embedding_formats import detect_format as detect_embedding
from runner.data.formats import FIELD_SYNONYMS, FORMAT_FIELDS, FORMATS, detect_sft_format
from runner.data.preference import FORMATS as PREFERENCE_FORMATS
from runner.data.preference import detect_format as detect_preference
from runner.data.preference import field_names as preference_fields
from runner.data.preference import preference_vote
from runner.data.report import DataError


def detect_format(records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None) -> tuple[str, str]:
    """Guess the SFT format from the first records; return (format, human-readable reason)."""
    preference = preference_vote(records, fields)
    if preference is not None:  # they would pass for sharegpt or alpaca records with every record bad
        raise DataError(
            f"the records are preference data ({preference[0]}: {preference[1]}): train them with "
            'loss.type = "dpo" (or ipo, orpo, simpo, kto), or set data.format'
        )
    return detect_sft_format(records, fields)


def guess_format(
    records: Sequence[Mapping[str, Any]], fields: Mapping[str, str] | None = None
) -> tuple[str, str] | None:
    """What the records look like, causal, preference or embedding format (None: nothing fits): for
    the message that explains why every record failed under a format set by hand."""
    for detect in (detect_preference, detect_format, detect_embedding):
        try:
            return detect(records, fields)
        except (DataError, ValueError):
            continue
    return None


def usage_problems(data_format: str, fields: Mapping[str, str]) -> list[str]:
    """What is wrong with a format and a field mapping given by hand (a command line, a request),
    worded with the valid choices; empty when both are usable."""
    formats = ("auto", *FORMATS, *EMBEDDING_FORMATS, *PREFERENCE_FORMATS)
    problems = []
    if data_format not in formats:
        close = difflib.get_close_matches(data_format, formats, n=1, cutoff=0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(f"--format {data_format!r}: expected one of {', '.join(formats)}{hint}")
    if data_format in FORMATS:
        valid = [
            *FORMAT_FIELDS[data_format],
            *(k for k, v in FIELD_SYNONYMS.items() if v in FORMAT_FIELDS[data_format]),
        ]
    elif data_format in EMBEDDING_FORMATS:
        valid = list(EMBEDDING_FIELDS)
    elif data_format in PREFERENCE_FORMATS:
        valid = preference_fields(data_format)
    else:
        valid = sorted(
            {
                *(c for names in FORMAT_FIELDS.values() for c in names),
                *FIELD_SYNONYMS,
                *EMBEDDING_FIELDS,
                *(c for fmt in PREFERENCE_FORMATS for c in preference_fields(fmt)),
            }
        )
    for canonical, name in fields.items():
        if canonical not in valid:
            swapped = f" (did you mean {name}={canonical}? the field name comes first)" if name in valid else ""
            problems.append(
                f"--fields {canonical}={name}: {canonical!r} is not a field of "
                f"{'format ' + repr(data_format) if data_format != 'auto' else 'any format'}{swapped}; "
                f"expected one of {', '.join(valid)}"
            )
    return problems
