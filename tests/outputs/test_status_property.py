"""Whatever sequence of state changes and progress updates is attempted,
the status file stays within the table and keeps its invariants."""

from __future__ import annotations

import os
import tempfile
from datetime import datetime, timedelta
from pathlib import Path
from unittest import mock

from hypothesis import event, given, settings
from hypothesis import strategies as st

from runner.outputs.status import IllegalTransition, JobState, Status, StatusFile, new_status

from ._support import T0
from .test_status_transitions import EXPECTED

FAST_TMP = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


def no_fsync(fd: int) -> None:
    pass


TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INVALID}

# Legal non-terminal moves, used to walk runs deep (queued -> running ->
# interrupted -> queued -> ...) before attempting an arbitrary target, so that
# attempts start from every state, not mostly from the first one.
ADVANCE = {
    JobState.QUEUED: JobState.RUNNING,
    JobState.RUNNING: JobState.INTERRUPTED,
    JobState.INTERRUPTED: JobState.QUEUED,
}

attempt_op = st.tuples(st.just("attempt"), st.integers(min_value=0, max_value=3), st.sampled_from(list(JobState)))
progress_op = st.tuples(st.just("progress"), st.integers(min_value=0, max_value=10_000), st.none())
ops = st.lists(st.one_of(attempt_op, attempt_op, progress_op), min_size=1, max_size=25)


def check_invariants(prev: Status, cur: Status, now: datetime) -> None:
    assert cur.attempt >= prev.attempt, "attempt only increases"
    assert (cur.finished is not None) == (cur.state in TERMINAL), "finished iff terminal"
    if cur.finished is not None and cur.started is not None:
        assert cur.started <= cur.finished
    assert cur.history[-1].to_state is cur.state
    assert cur.attempt == 1 + sum(h.from_state is JobState.INTERRUPTED for h in cur.history)
    if cur != prev:
        assert cur.updated == now
    if cur.state is not prev.state:
        assert cur.state in EXPECTED[prev.state], "state left the table"
        if cur.state is JobState.RUNNING:
            assert cur.started == now, "started marks the start of the current attempt"


@settings(max_examples=100, deadline=None)
@given(initial=st.sampled_from([JobState.QUEUED, JobState.QUEUED, JobState.INVALID]), ops=ops)
def test_random_operations_keep_status_file_consistent(
    initial: JobState, ops: list[tuple[str, int, JobState | None]]
) -> None:
    # Thousands of writes: fsync is skipped and tmpfs used when there is one, or
    # this test is slow on a shared disk.  Durability is tested in test_fsutil.
    with tempfile.TemporaryDirectory(dir=FAST_TMP) as d, mock.patch.object(os, "fsync", no_fsync):
        sf = StatusFile(Path(d) / "status.json")
        sf.create(new_status("demo", "r1", state=initial, now=T0))
        prev = sf.read()
        assert prev is not None
        clock = iter(T0 + timedelta(seconds=i) for i in range(1, 10_000))

        def attempt(target: JobState) -> None:
            nonlocal prev
            assert prev is not None
            now = next(clock)
            event(f"{prev.state} -> {target}")
            try:
                sf.transition(target, now=now)
            except IllegalTransition:
                assert target not in EXPECTED[prev.state], "a legal transition was refused"
            else:
                assert target in EXPECTED[prev.state], "an illegal transition was accepted"
            cur = sf.read()  # the file on disk parses after every write
            assert cur is not None
            if cur.state is prev.state:
                assert cur == prev, "a refused transition must not touch the file"
            check_invariants(prev, cur, now)
            prev = cur

        for kind, n, target in ops:
            if kind == "progress":
                now = next(clock)
                sf.update(step=n, now=now)
                cur = sf.read()
                assert cur is not None
                assert cur.state is prev.state and cur.step == n, "progress never changes state"
                check_invariants(prev, cur, now)
                prev = cur
                continue
            for _ in range(n):
                if prev.state in ADVANCE:
                    attempt(ADVANCE[prev.state])
            assert target is not None
            attempt(target)
