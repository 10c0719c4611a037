"""What a run's status is: its state, why it is there, its progress, its history, and its JSON form.

:class:`Status` is an immutable snapshot; it is changed only by the rules in
:mod:`runner.outputs.status` (the transition table) and written only by its
:class:`~runner.outputs.status.StatusFile`. Times are timezone-aware UTC, stored as ISO-8601 with
a ``Z``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "TERMINAL_STATES",
    "FailureClass",
    "HistoryEntry",
    "JobState",
    "Status",
    "StatusFormatError",
    "as_utc",
    "format_utc",
    "parse_utc",
    "utc_now",
]

SCHEMA_VERSION = 1


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    INVALID = "invalid"


class FailureClass(StrEnum):
    """Why a run is in the state it is in; the CLI groups and explains by this.

    Free-form detail (exception text, offending file) goes in ``error``.
    """

    CONFIG = "config"  # spec does not validate / contradicts itself
    DATA = "data"  # dataset missing, unreadable, too many bad records
    MODEL = "model"  # base model missing, checksum mismatch, cannot load
    OOM = "oom"  # out of (GPU or host) memory
    CRASH = "crash"  # unexpected exception or child died without a word
    TIMEOUT = "timeout"  # exceeded a configured time budget
    INTERRUPTED = "interrupted"  # signal / shutdown; resumable
    KILLED = "killed"  # SIGKILL from someone (an operator), not the OOM killer; resumable, not retried unasked
    DEPENDENCY = "dependency"  # a job this one depends on did not succeed
    DIVERGED = "diverged"  # the loss or the gradients became nan or infinite
    CANCELLED_BY_USER = "cancelled-by-user"


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INVALID}
)


class StatusFormatError(ValueError):
    """status.json exists but is not a status we can read."""


# --------------------------------------------------------------------------- time


def utc_now() -> datetime:
    return datetime.now(UTC)


def as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: pass a timezone-aware time (UTC)")
    return dt.astimezone(UTC)


def format_utc(dt: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``; microseconds so round trips compare equal."""
    return as_utc(dt).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_utc(text: str) -> datetime:
    """Inverse of :func:`format_utc`; a zone-less stamp is taken as UTC."""
    dt = datetime.fromisoformat(text)
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


# ------------------------------------------------------------------------- model


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    """One state change, kept so a run's story survives in its own folder."""

    from_state: JobState | None
    to_state: JobState
    at: datetime
    reason: FailureClass | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "from": None if self.from_state is None else str(self.from_state),
            "to": str(self.to_state),
            "at": format_utc(self.at),
            "reason": None if self.reason is None else str(self.reason),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HistoryEntry:
        return cls(
            from_state=None if d.get("from") is None else JobState(d["from"]),
            to_state=JobState(d["to"]),
            at=parse_utc(d["at"]),
            reason=None if d.get("reason") is None else FailureClass(d["reason"]),
        )


@dataclass(frozen=True, kw_only=True)
class Status:
    """Immutable snapshot of a run; change it with :func:`transition` / :func:`with_progress`."""

    job: str
    run_id: str
    state: JobState
    created: datetime
    updated: datetime
    reason: FailureClass | None = None
    error: str | None = None
    attempt: int = 1
    pid: int | None = None
    started: datetime | None = None  # start of the current attempt
    finished: datetime | None = None  # set iff state is terminal
    # progress
    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    eta_seconds: float | None = None
    tokens_per_second: float | None = None
    # what is being trained
    trainable_params: int | None = None
    total_params: int | None = None
    adapter: Mapping[str, Any] | None = None
    spec_sha256: str | None = None
    resumed_from: str | None = None  # checkpoint the current attempt started from
    extra: Mapping[str, Any] = field(default_factory=dict)  # free-form counters
    history: tuple[HistoryEntry, ...] = ()

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, datetime):
                value = format_utc(value)
            elif isinstance(value, StrEnum):
                value = str(value)
            elif f.name == "history":
                value = [h.to_dict() for h in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            d[f.name] = value
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Status:
        """Parse; unknown keys (a newer writer) are kept in ``extra``, not dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            kwargs: dict[str, Any] = {k: v for k, v in d.items() if k in known}
            kwargs["state"] = JobState(d["state"])
            if d.get("reason") is not None:
                kwargs["reason"] = FailureClass(d["reason"])
            for name in ("created", "updated", "started", "finished"):
                if d.get(name) is not None:
                    kwargs[name] = parse_utc(d[name])
            kwargs["history"] = tuple(HistoryEntry.from_dict(h) for h in d.get("history", ()))
            extra = dict(d.get("extra") or {})
            for k, v in d.items():
                if k not in known and k != "schema_version":
                    extra.setdefault(k, v)
            kwargs["extra"] = extra
            return cls(**kwargs)
        except (KeyError, TypeError, ValueError) as e:
            raise StatusFormatError(f"not a valid status: {e}") from e

    @classmethod
    def from_json(cls, text: str) -> Status:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise StatusFormatError(f"status is not valid JSON: {e}") from e
        if not isinstance(d, dict):
            raise StatusFormatError("status JSON is not an object")
        return cls.from_dict(d)
