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

What a status holds (states, failure classes, fields, JSON form, UTC times) is
:mod:`runner.outputs.status_record`; its names are importable from here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_write_text, file_lock
from runner.outputs.status_record import (
    TERMINAL_STATES,
    FailureClass,
    HistoryEntry,
    JobState,
    Status,
    StatusFormatError,
    as_utc,
    format_utc,
    parse_utc,
    utc_now,
)

__all__ = [
    "DEFAULT_REASON",
    "INITIAL_STATES",
    "MANAGED_FIELDS",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "FailureClass",
    "HistoryEntry",
    "IllegalTransition",
    "JobState",
    "Status",
    "StatusFile",
    "StatusFormatError",
    "format_utc",
    "new_status",
    "parse_utc",
    "transition",
    "utc_now",
    "with_progress",
]

INITIAL_STATES: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.INVALID})

TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.INVALID, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INTERRUPTED}),
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


# Fields only transition()/new_status() may set.  Everything else is "data
# about the run" and may be set by progress updates.
MANAGED_FIELDS: frozenset[str] = frozenset(
    {"job", "run_id", "state", "reason", "error", "attempt", "created", "updated", "started", "finished", "history"}
)
_SETTABLE_FIELDS: frozenset[str] = frozenset(f.name for f in dataclasses.fields(Status) if f.name not in MANAGED_FIELDS)


def _coerce_reason(reason: FailureClass | str | None) -> FailureClass | None:
    if reason is None:
        return None
    try:
        return FailureClass(reason)
    except ValueError:
        valid = ", ".join(c.value for c in FailureClass)
        raise ValueError(f"unknown failure reason {reason!r} (valid: {valid}); put details in error=") from None


def _settable(fields: Mapping[str, Any], *, what: str) -> dict[str, Any]:
    """Validate free fields; merge ``extra`` instead of replacing it."""
    bad = sorted(set(fields) & MANAGED_FIELDS)
    if bad:
        raise TypeError(f"{what} cannot set {', '.join(bad)}; use transition()")
    unknown = sorted(set(fields) - _SETTABLE_FIELDS)
    if unknown:
        raise TypeError(f"unknown status field(s) {', '.join(unknown)}; put free-form counters in extra={{...}}")
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
    now = as_utc(now) if now is not None else utc_now()
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
    now = as_utc(now) if now is not None else utc_now()
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
        history=(*status.history, HistoryEntry(from_state=status.state, to_state=to, at=now, reason=why)),
    )


def with_progress(status: Status, *, now: datetime | None = None, **fields: Any) -> Status:
    """Return ``status`` with progress fields changed; never its state.

    ``TypeError`` for managed fields (state, reason, attempt, timestamps, ...)
    so a stray ``state=`` in a progress call fails loudly instead of bypassing
    the transition table.
    """
    changes = _settable(fields, what="a progress update")
    now = as_utc(now) if now is not None else utc_now()
    return _apply(status, changes, updated=now)


# --------------------------------------------------------------------- the file


class StatusFile:
    """The one reader/writer of a run's ``status.json``.

    Writes are atomic (readers never see a torn file) and read-modify-write
    operations hold an ``flock`` on a sibling lock file (:func:`runner.fsutil.file_lock`),
    so the trainer's progress updates and the daemon's transitions serialise
    instead of overwriting each other.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")

    def __repr__(self) -> str:
        return f"StatusFile({str(self.path)!r})"

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
        with file_lock(self.lock_path):
            atomic_write_text(self.path, status.to_json())

    def create(self, status: Status) -> Status:
        """Write the first status; ``FileExistsError`` rather than clobber an existing run."""
        if status.state not in INITIAL_STATES:
            raise ValueError(f"a new status file must start in {sorted(INITIAL_STATES)}")
        with file_lock(self.lock_path):
            if self.path.exists():
                raise FileExistsError(f"{self.path} already exists")
            atomic_write_text(self.path, status.to_json())
        return status

    def update(self, *, now: datetime | None = None, **fields: Any) -> Status:
        """Progress update (step, loss, eta_seconds, extra=...); cannot change state."""
        with file_lock(self.lock_path):
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
        with file_lock(self.lock_path):
            status = transition(self._require(), to, reason=reason, error=error, now=now, **fields)
            atomic_write_text(self.path, status.to_json())
        return status
