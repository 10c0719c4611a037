"""A run's lifecycle state, and the one place that changes it.

Two rules keep ``status.json`` trustworthy while a daemon, a child trainer and
``runner status`` all touch it:

* State only changes through :func:`transition`, which enforces
  :data:`TRANSITIONS` and owns the bookkeeping (timestamps, attempt, history).
* The file is only written through :class:`StatusFile`, atomically and under
  an inter-process lock, so a progress update racing a cancel cannot resurrect
  ``running``.

Terminal states (succeeded, failed, cancelled, invalid) are terminal *within a
run*.  Re-queueing a finished job -- typically after its spec changed -- starts a
NEW run (new run id, fresh :func:`new_status`), so each run folder describes
exactly one spec and one outcome.  Only ``interrupted`` goes back to ``queued``
in the same run, with ``attempt + 1``, so training resumes from its checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_write_text

try:  # POSIX; elsewhere StatusFile falls back to unlocked read-modify-write.
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "DEFAULT_REASON",
    "FailureClass",
    "HistoryEntry",
    "IllegalTransition",
    "INITIAL_STATES",
    "JobState",
    "MANAGED_FIELDS",
    "Status",
    "StatusFile",
    "StatusFormatError",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "format_utc",
    "new_status",
    "parse_utc",
    "transition",
    "utc_now",
    "with_progress",
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
    DEPENDENCY = "dependency"  # a job this one depends on did not succeed
    CANCELLED_BY_USER = "cancelled-by-user"


TERMINAL_STATES: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INVALID}
)
INITIAL_STATES: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.INVALID})

TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset(
        {JobState.RUNNING, JobState.CANCELLED, JobState.INVALID, JobState.FAILED}
    ),
    JobState.RUNNING: frozenset(
        {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}
    ),
    JobState.INTERRUPTED: frozenset({JobState.QUEUED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    JobState.INVALID: frozenset(),
}

# Used when a caller enters one of these states without saying why, so that
# `reason` is never empty for a non-success outcome.
DEFAULT_REASON: Mapping[JobState, FailureClass] = {
    JobState.FAILED: FailureClass.CRASH,
    JobState.CANCELLED: FailureClass.CANCELLED_BY_USER,
    JobState.INTERRUPTED: FailureClass.INTERRUPTED,
    JobState.INVALID: FailureClass.CONFIG,
}


class IllegalTransition(ValueError):
    """A state change the table does not allow (a bug in the caller, not the job)."""

    def __init__(self, from_state: JobState | None, to_state: JobState, hint: str = "") -> None:
        """``from_state=None`` means "creating a new status in ``to_state``"."""
        self.from_state = from_state
        self.to_state = to_state
        if from_state is None:
            allowed = " or ".join(sorted(INITIAL_STATES))
            msg = f"a status cannot be created in state {to_state}; only in {allowed}"
        else:
            allowed = ", ".join(sorted(TRANSITIONS[from_state])) or "nothing (terminal)"
            msg = f"illegal transition {from_state} -> {to_state}; {from_state} may go to: {allowed}"
        super().__init__(f"{msg}. {hint}" if hint else msg)


class StatusFormatError(ValueError):
    """status.json exists but is not a status we can read."""


# --------------------------------------------------------------------------- time


def utc_now() -> datetime:
    return datetime.now(UTC)


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None:
        raise ValueError(f"naive datetime {dt!r}: pass a timezone-aware time (UTC)")
    return dt.astimezone(UTC)


def format_utc(dt: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``; microseconds so round trips compare equal."""
    return _as_utc(dt).isoformat(timespec="microseconds").replace("+00:00", "Z")


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


# Fields only transition()/new_status() may set.  Everything else is "data
# about the run" and may be set by progress updates.
MANAGED_FIELDS: frozenset[str] = frozenset(
    {
        "job",
        "run_id",
        "state",
        "reason",
        "error",
        "attempt",
        "created",
        "updated",
        "started",
        "finished",
        "history",
    }
)
_SETTABLE_FIELDS: frozenset[str] = frozenset(
    f.name for f in dataclasses.fields(Status) if f.name not in MANAGED_FIELDS
)


def _coerce_reason(reason: FailureClass | str | None) -> FailureClass | None:
    if reason is None:
        return None
    try:
        return FailureClass(reason)
    except ValueError:
        valid = ", ".join(c.value for c in FailureClass)
        raise ValueError(
            f"unknown failure reason {reason!r} (valid: {valid}); put details in error="
        ) from None


def _settable(fields: Mapping[str, Any], *, what: str) -> dict[str, Any]:
    """Validate free fields; merge ``extra`` instead of replacing it."""
    bad = sorted(set(fields) & MANAGED_FIELDS)
    if bad:
        raise TypeError(f"{what} cannot set {', '.join(bad)}; use transition()")
    unknown = sorted(set(fields) - _SETTABLE_FIELDS)
    if unknown:
        raise TypeError(
            f"unknown status field(s) {', '.join(unknown)}; put free-form counters in extra={{...}}"
        )
    return {k: _plain(v) for k, v in fields.items()}


def _plain(value: Any) -> Any:
    """numpy/torch scalars -> Python numbers, so a trainer can pass ``loss=loss_tensor``
    without the status write failing on JSON serialisation (duck-typed: no torch import)."""
    if isinstance(value, (str, bytes, int, float, bool, Mapping, list, tuple)) or value is None:
        return value
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _apply(status: Status, changes: dict[str, Any], **managed: Any) -> Status:
    if "extra" in changes:
        changes["extra"] = {**status.extra, **(changes["extra"] or {})}
    if changes.get("adapter") is not None:
        changes["adapter"] = dict(changes["adapter"])
    return dataclasses.replace(status, **changes, **managed)


# ----------------------------------------------------------------- pure changes


def new_status(
    job: str,
    run_id: str,
    *,
    state: JobState | str = JobState.QUEUED,
    reason: FailureClass | str | None = None,
    error: str | None = None,
    now: datetime | None = None,
    **fields: Any,
) -> Status:
    """A brand-new run's status: born ``queued``, or ``invalid`` when its spec is rejected."""
    state = JobState(state)
    if state not in INITIAL_STATES:
        raise IllegalTransition(None, state)
    now = _as_utc(now) if now is not None else utc_now()
    why = _coerce_reason(reason) or DEFAULT_REASON.get(state)
    changes = _settable(fields, what="new_status")
    base = Status(
        job=job,
        run_id=run_id,
        state=state,
        reason=why,
        error=error,
        created=now,
        updated=now,
        finished=now if state in TERMINAL_STATES else None,
        history=(HistoryEntry(from_state=None, to_state=state, at=now, reason=why),),
    )
    return _apply(base, changes)


def transition(
    status: Status,
    to: JobState | str,
    *,
    reason: FailureClass | str | None = None,
    error: str | None = None,
    now: datetime | None = None,
    **fields: Any,
) -> Status:
    """Return ``status`` moved to ``to``; raise :class:`IllegalTransition` if the table forbids it.

    Owns the bookkeeping so callers cannot get it wrong:
    ``started`` is set on entering running (start of this attempt), ``finished``
    on entering a terminal state, ``attempt`` grows by one on interrupted ->
    queued, ``pid`` and ``eta_seconds`` are cleared when leaving running (unless
    given), ``reason``/``error`` describe the new state only (defaulted by
    :data:`DEFAULT_REASON`), and the change is appended to ``history``.
    Other keyword fields (step, pid, extra, ...) are applied in the same write.
    """
    to = JobState(to)
    if to not in TRANSITIONS[status.state]:
        hint = ""
        if status.state in TERMINAL_STATES and to is JobState.QUEUED:
            hint = "A finished run is never re-queued: start a new run (new run id, new_status())."
        raise IllegalTransition(status.state, to, hint)
    now = _as_utc(now) if now is not None else utc_now()
    why = _coerce_reason(reason) or DEFAULT_REASON.get(to)
    changes = _settable(fields, what="transition")
    if to is not JobState.RUNNING:
        changes.setdefault("pid", None)
        changes.setdefault("eta_seconds", None)
    bumps_attempt = status.state is JobState.INTERRUPTED and to is JobState.QUEUED
    return _apply(
        status,
        changes,
        state=to,
        reason=why,
        error=error,
        attempt=status.attempt + 1 if bumps_attempt else status.attempt,
        started=now if to is JobState.RUNNING else status.started,
        finished=now if to in TERMINAL_STATES else None,
        updated=now,
        history=(
            *status.history,
            HistoryEntry(from_state=status.state, to_state=to, at=now, reason=why),
        ),
    )


def with_progress(status: Status, *, now: datetime | None = None, **fields: Any) -> Status:
    """Return ``status`` with progress fields changed; never its state.

    ``TypeError`` for managed fields (state, reason, attempt, timestamps, ...)
    so a stray ``state=`` in a progress call fails loudly instead of bypassing
    the transition table.
    """
    changes = _settable(fields, what="a progress update")
    now = _as_utc(now) if now is not None else utc_now()
    return _apply(status, changes, updated=now)


# --------------------------------------------------------------------- the file


class StatusFile:
    """The one reader/writer of a run's ``status.json``.

    Writes are atomic (readers never see a torn file) and read-modify-write
    operations hold an ``flock`` on a sibling lock file, so the trainer's
    progress updates and the daemon's transitions serialise instead of
    overwriting each other.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")

    def __repr__(self) -> str:
        return f"StatusFile({str(self.path)!r})"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover
            yield
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def read(self) -> Status | None:
        """The current status, or None if the run has none yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            return Status.from_json(text)
        except StatusFormatError as e:
            raise StatusFormatError(f"{self.path}: {e}") from e

    def _require(self) -> Status:
        status = self.read()
        if status is None:
            raise FileNotFoundError(f"{self.path}: no status yet; create() it first")
        return status

    def write(self, status: Status) -> None:
        """Overwrite unconditionally (atomic); prefer create/update/transition."""
        with self._locked():
            atomic_write_text(self.path, status.to_json())

    def create(self, status: Status) -> Status:
        """Write the first status; ``FileExistsError`` rather than clobber an existing run."""
        if status.state not in INITIAL_STATES:
            raise ValueError(f"a new status file must start in {sorted(INITIAL_STATES)}")
        with self._locked():
            if self.path.exists():
                raise FileExistsError(f"{self.path} already exists")
            atomic_write_text(self.path, status.to_json())
        return status

    def update(self, *, now: datetime | None = None, **fields: Any) -> Status:
        """Progress update (step, loss, eta_seconds, extra=...); cannot change state."""
        with self._locked():
            status = with_progress(self._require(), now=now, **fields)
            atomic_write_text(self.path, status.to_json())
        return status

    def transition(
        self,
        to: JobState | str,
        *,
        reason: FailureClass | str | None = None,
        error: str | None = None,
        now: datetime | None = None,
        **fields: Any,
    ) -> Status:
        """Read, apply :func:`transition`, write -- atomically with respect to other writers."""
        with self._locked():
            status = transition(
                self._require(), to, reason=reason, error=error, now=now, **fields
            )
            atomic_write_text(self.path, status.to_json())
        return status
