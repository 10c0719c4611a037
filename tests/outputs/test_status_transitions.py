"""The state machine of a run, spelled out.

The expected table is written here independently of the implementation, so
the test fails if someone edits runner.outputs.status.TRANSITIONS by accident.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from runner.outputs.status import (
    TERMINAL_STATES,
    TRANSITIONS,
    FailureClass,
    IllegalTransition,
    JobState,
    Status,
    StatusFile,
    new_status,
    transition,
    with_progress,
)

from ._support import T0

Q, R, S, F, C, I, V = (  # noqa: E741 - the initials of the states, as in the table they check
    JobState.QUEUED,
    JobState.RUNNING,
    JobState.SUCCEEDED,
    JobState.FAILED,
    JobState.CANCELLED,
    JobState.INTERRUPTED,
    JobState.INVALID,
)

EXPECTED: dict[JobState, set[JobState]] = {
    Q: {R, C, V, F},  # failed from queued: e.g. a dependency failed
    R: {S, F, C, I},
    I: {Q},  # resumable: same run, next attempt
    S: set(),
    F: set(),
    C: set(),
    V: set(),
}
ALLOWED = [(a, b) for a, tos in EXPECTED.items() for b in sorted(tos)]
DISALLOWED = [(a, b) for a in JobState for b in JobState if b not in EXPECTED[a]]


def status_in(state: JobState) -> Status:
    """A status that reached ``state`` through legal steps."""
    paths = {Q: [], R: [R], S: [R, S], F: [R, F], C: [C], I: [R, I], V: []}
    s = new_status("demo", "20261122-044501-3f2a", state=V if state is V else Q, now=T0)
    for i, to in enumerate(paths[state], start=1):
        s = transition(s, to, now=T0 + timedelta(seconds=i))
    assert s.state is state
    return s


def test_table_matches_the_documented_one() -> None:
    assert {k: set(v) for k, v in TRANSITIONS.items()} == EXPECTED
    assert {S, F, C, V} == TERMINAL_STATES


@pytest.mark.parametrize(("frm", "to"), ALLOWED, ids=lambda s: str(s))
def test_allowed_transition_changes_state(frm: JobState, to: JobState) -> None:
    before = status_in(frm)
    after = transition(before, to, now=T0 + timedelta(hours=1))
    assert after.state is to
    assert before.state is frm, "transition is pure: the input is not modified"
    assert after.history[-1].from_state is frm and after.history[-1].to_state is to


@pytest.mark.parametrize(("frm", "to"), DISALLOWED, ids=lambda s: str(s))
def test_disallowed_transition_raises(frm: JobState, to: JobState) -> None:
    with pytest.raises(IllegalTransition) as info:
        transition(status_in(frm), to)
    assert (info.value.from_state, info.value.to_state) == (frm, to)


@pytest.mark.parametrize("terminal", sorted(TERMINAL_STATES))
def test_requeue_of_a_finished_run_points_to_a_new_run(terminal: JobState) -> None:
    with pytest.raises(IllegalTransition, match="new run"):
        transition(status_in(terminal), Q)


@pytest.mark.parametrize("state", [Q, V])
def test_status_is_born_queued_or_invalid(state: JobState) -> None:
    s = new_status("demo", "r1", state=state, now=T0)
    assert s.state is state and s.attempt == 1 and s.created == T0


@pytest.mark.parametrize("state", [R, S, F, C, I])
def test_status_cannot_be_born_in_other_states(state: JobState) -> None:
    with pytest.raises(IllegalTransition):
        new_status("demo", "r1", state=state)


def test_born_invalid_is_finished_with_config_reason() -> None:
    s = new_status("demo", "r1", state=V, error="lora.r must be > 0", now=T0)
    assert s.finished == T0
    assert s.reason is FailureClass.CONFIG
    assert s.error == "lora.r must be > 0"


def test_timestamps_follow_the_lifecycle() -> None:
    t = [T0 + timedelta(seconds=i) for i in range(4)]
    s = new_status("demo", "r1", now=t[0])
    assert (s.created, s.started, s.finished) == (t[0], None, None)
    s = transition(s, R, now=t[1], pid=4242)
    assert (s.started, s.finished, s.updated, s.pid) == (t[1], None, t[1], 4242)
    s = transition(s, S, now=t[2])
    assert (s.started, s.finished, s.updated) == (t[1], t[2], t[2])
    assert s.pid is None, "a finished run has no owning process"


def test_interrupted_run_requeues_as_next_attempt_of_the_same_run() -> None:
    s = status_in(I)
    assert s.attempt == 1 and s.reason is FailureClass.INTERRUPTED and s.finished is None
    s = transition(s, Q, now=T0 + timedelta(minutes=1))
    assert s.attempt == 2 and s.run_id == "20261122-044501-3f2a"
    assert s.reason is None, "reason describes the current state only"
    s = transition(s, R, now=T0 + timedelta(minutes=2), resumed_from="checkpoints/step-20")
    assert s.started == T0 + timedelta(minutes=2), "started is the start of this attempt"
    assert s.resumed_from == "checkpoints/step-20"


def test_reason_and_error_are_separate_from_state() -> None:
    s = transition(status_in(R), F, reason="oom", error="CUDA out of memory at step 12")
    assert (s.state, s.reason, s.error) == (F, FailureClass.OOM, "CUDA out of memory at step 12")


@pytest.mark.parametrize(
    ("to", "default"), [(F, FailureClass.CRASH), (C, FailureClass.CANCELLED_BY_USER), (I, FailureClass.INTERRUPTED)]
)
def test_unexplained_failures_get_a_default_reason(to: JobState, default: FailureClass) -> None:
    assert transition(status_in(R), to).reason is default


def test_dependency_failure_fails_a_queued_run() -> None:
    s = transition(status_in(Q), F, reason=FailureClass.DEPENDENCY, error="job 'base' failed")
    assert s.state is F and s.reason is FailureClass.DEPENDENCY and s.finished is not None


def test_unknown_reason_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown failure reason"):
        transition(status_in(R), F, reason="gremlins")


def test_transition_cannot_smuggle_managed_fields() -> None:
    with pytest.raises(TypeError, match="attempt"):
        transition(status_in(R), F, attempt=7)


def test_progress_update_cannot_change_state() -> None:
    s = status_in(R)
    with pytest.raises(TypeError, match="state"):
        with_progress(s, state=S)
    with pytest.raises(TypeError, match="finished"):
        with_progress(s, finished=T0)
    after = with_progress(s, step=10, total_steps=100, loss=1.5, extra={"bad_records_skipped": 2})
    assert (after.state, after.step, after.loss) == (R, 10, 1.5)
    assert after.extra == {"bad_records_skipped": 2}


def test_unknown_progress_field_is_a_typo_not_a_silent_extra() -> None:
    with pytest.raises(TypeError, match="stpe"):
        with_progress(status_in(R), stpe=3)


def test_extra_counters_merge_rather_than_replace() -> None:
    s = with_progress(status_in(R), extra={"bad_records_skipped": 1})
    s = with_progress(s, extra={"truncated": 4})
    assert s.extra == {"bad_records_skipped": 1, "truncated": 4}


def test_json_round_trip_is_lossless() -> None:
    s = transition(status_in(R), I, now=T0 + timedelta(hours=2))
    s = with_progress(
        s,
        step=7,
        total_steps=9,
        epoch=0.5,
        loss=0.25,
        adapter={"type": "lora", "r": 8},
        trainable_params=1234,
        spec_sha256="f" * 64,
        extra={"bad_records_skipped": 3},
    )
    text = s.to_json()
    d = json.loads(text)
    assert d["state"] == "interrupted" and d["started"].endswith("Z")
    assert Status.from_json(text) == s


def test_unknown_keys_from_a_newer_writer_are_kept_in_extra() -> None:
    d = status_in(Q).to_dict()
    d["gpu_name"] = "H100"
    assert Status.from_dict(d).extra["gpu_name"] == "H100"


# ------------------------------------------------------------------ StatusFile


def test_status_file_read_of_missing_file_is_none(tmp_path: Path) -> None:
    assert StatusFile(tmp_path / "status.json").read() is None


def test_status_file_transition_and_update_persist(tmp_path: Path) -> None:
    sf = StatusFile(tmp_path / "status.json")
    sf.create(new_status("demo", "r1", now=T0))
    sf.transition(R, pid=99, now=T0)
    sf.update(step=3, total_steps=10, eta_seconds=70.0, now=T0 + timedelta(seconds=5))
    on_disk = StatusFile(tmp_path / "status.json").read()
    assert on_disk is not None
    assert (on_disk.state, on_disk.pid, on_disk.step, on_disk.eta_seconds) == (R, 99, 3, 70.0)
    assert on_disk.updated == T0 + timedelta(seconds=5)


def test_status_file_update_with_state_raises_and_leaves_file_untouched(tmp_path: Path) -> None:
    sf = StatusFile(tmp_path / "status.json")
    sf.create(new_status("demo", "r1", now=T0))
    before = (tmp_path / "status.json").read_bytes()
    with pytest.raises(TypeError):
        sf.update(state="succeeded")
    assert (tmp_path / "status.json").read_bytes() == before


def test_progress_after_a_cancel_does_not_resurrect_running(tmp_path: Path) -> None:
    """Trainer and daemon hold separate StatusFile objects; each write re-reads the file."""
    trainer = StatusFile(tmp_path / "status.json")
    daemon = StatusFile(tmp_path / "status.json")
    trainer.create(new_status("demo", "r1"))
    trainer.transition(R)
    daemon.transition(C)
    trainer.update(step=5)
    s = daemon.read()
    assert s is not None and s.state is C and s.step == 5


def test_create_refuses_to_clobber_an_existing_run(tmp_path: Path) -> None:
    sf = StatusFile(tmp_path / "status.json")
    sf.create(new_status("demo", "r1"))
    with pytest.raises(FileExistsError):
        sf.create(new_status("demo", "r1"))


def test_illegal_transition_on_file_leaves_it_unchanged(tmp_path: Path) -> None:
    sf = StatusFile(tmp_path / "status.json")
    sf.create(new_status("demo", "r1"))
    before = (tmp_path / "status.json").read_bytes()
    with pytest.raises(IllegalTransition):
        sf.transition(S)
    assert (tmp_path / "status.json").read_bytes() == before


def test_tensor_like_scalars_are_stored_as_plain_numbers() -> None:
    class FakeScalar:  # what torch.Tensor / numpy scalars look like to us
        def item(self) -> float:
            return 0.5

    s = with_progress(status_in(R), loss=FakeScalar())
    assert s.loss == 0.5 and type(s.loss) is float
    assert json.loads(s.to_json())["loss"] == 0.5
