"""What the submitter writes to status.json as Slurm reports on a job (no cluster: the reports are
given as Slurm would print them), and which queued runs a Slurm daemon submits."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from runner.outputs.attempts import Final, write_outcome
from runner.outputs.runs import OUTCOME_FILE, find_interrupted_run, new_run_dir, run_paths
from runner.outputs.status import FailureClass, JobState, StatusFile, new_status
from runner.slurm.executor import SLURM_KEY, SlurmExecutor, Submission, live_job
from runner.slurm.node import check_allocation
from runner.slurm.states import JobInfo
from runner.watch.queue import DepState, Item, decide

JOB_ID = "990001"  # far above the test cluster's ids: nothing here may name a real job


@pytest.fixture
def run(tmp_path: Path) -> Submission:
    run_dir = new_run_dir(tmp_path / "runs", "demo")
    status = StatusFile(run_paths(run_dir).status)
    status.create(new_status("demo", run_dir.name, spec_sha256="0" * 64))
    status.update(
        extra={
            SLURM_KEY: {
                "job_id": JOB_ID,
                "attempt": 1,
                "state": "PENDING",
                "ended": False,
                "jobs": [{"job_id": JOB_ID, "attempt": 1, "state": "PENDING", "exit_code": None}],
            }
        }
    )
    return Submission(JOB_ID, run_dir, 1)


@pytest.fixture
def executor(tmp_path: Path) -> SlurmExecutor:
    return SlurmExecutor(runs_root=tmp_path / "runs", log=lambda message: None)


def states(sub: Submission) -> list[str]:
    status = sub.status_file.read()
    assert status is not None
    return [str(h.to_state) for h in status.history]


def apply(sub: Submission, final: object) -> None:
    assert isinstance(final, Final)
    sub.status_file.transition(final.state, reason=final.reason, error=final.error, **final.fields)


def test_a_pending_job_keeps_the_run_queued_and_shows_slurms_reason(executor: SlurmExecutor, run: Submission) -> None:
    assert executor.observe(run, JobInfo(JOB_ID, "PENDING", "Priority")) is None
    status = run.status_file.read()
    assert status is not None and status.state is JobState.QUEUED
    assert status.extra["waiting"] == f"slurm job {JOB_ID}: pending (Priority)"  # shown by `runner status`
    assert status.extra[SLURM_KEY]["reason"] == "Priority"


def test_a_started_job_sets_the_run_running_with_its_nodes(executor: SlurmExecutor, run: Submission) -> None:
    assert executor.observe(run, JobInfo(JOB_ID, "RUNNING", None, None, "gpu-07")) is None
    status = run.status_file.read()
    assert status is not None and status.state is JobState.RUNNING and status.extra["waiting"] is None
    assert status.extra[SLURM_KEY]["nodes"] == "gpu-07" and status.extra[SLURM_KEY]["state"] == "RUNNING"


def test_a_job_that_ran_and_ended_between_two_polls_still_shows_it_ran(
    executor: SlurmExecutor, run: Submission
) -> None:
    write_outcome(run.run_dir / OUTCOME_FILE, JobState.SUCCEEDED, step=12, extra={"train_seconds": 3.0})
    final = executor.observe(run, JobInfo(JOB_ID, "COMPLETED", None, "0:0", "gpu-07"))
    apply(run, final)
    executor.done(run)
    status = run.status_file.read()
    assert status is not None and states(run) == ["queued", "running", "succeeded"] and status.step == 12
    record = status.extra[SLURM_KEY]
    assert (record["state"], record["exit_code"], record["ended"]) == ("COMPLETED", "0:0", True)
    assert record["jobs"] == [{"job_id": JOB_ID, "attempt": 1, "state": "COMPLETED", "exit_code": "0:0"}]
    assert status.extra["train_seconds"] == 3.0 and live_job(status) is None
    assert not (run.run_dir / OUTCOME_FILE).exists(), "a spent report must not speak for the next attempt"


def test_a_job_cancelled_before_it_started_never_shows_running(executor: SlurmExecutor, run: Submission) -> None:
    apply(run, executor.observe(run, JobInfo(JOB_ID, "CANCELLED", "Resources", "0:0")))
    assert states(run) == ["queued", "cancelled"]


def test_an_end_without_the_runs_report_waits_for_it_a_moment(executor: SlurmExecutor, run: Submission) -> None:
    ended = JobInfo(JOB_ID, "FAILED", "NonZeroExitCode", "1:0", "gpu-07")
    assert executor.observe(run, ended) is None, "a network filesystem may show the report late"
    run.ended_seen = time.monotonic() - 60
    final = executor.observe(run, ended)
    assert final is not None and (final.state, final.reason) == (JobState.FAILED, FailureClass.CRASH)


def test_only_the_current_attempts_job_is_live(run: Submission) -> None:
    status = run.status_file.read()
    assert status is not None and live_job(status) == JOB_ID
    run.status_file.transition(JobState.RUNNING)
    run.status_file.transition(JobState.INTERRUPTED)
    run.status_file.transition(JobState.QUEUED)  # attempt 2: its job is not submitted yet
    requeued = run.status_file.read()
    assert requeued is not None and requeued.attempt == 2 and live_job(requeued) is None


def test_the_node_runs_only_the_job_the_status_records(run: Submission) -> None:
    assert check_allocation(run.run_dir, JOB_ID, wait=0) is None
    assert "not running the same run twice" in (check_allocation(run.run_dir, "990002", wait=0) or "")


def test_runner_run_never_resumes_a_run_a_slurm_job_is_running(run: Submission, tmp_path: Path) -> None:
    run.status_file.transition(JobState.RUNNING, pid=4_000_000)  # the node's pid: meaningless on this machine
    assert find_interrupted_run(tmp_path / "runs", "demo", "0" * 64) is None


def test_a_slurm_daemon_submits_every_ready_run_in_queue_order() -> None:
    items = [Item("a/1", "a", 0, 1), Item("b/1", "b", 5, 2), Item("c/1", "c", 0, 3, ("a",))]
    decision = decide(items, {"a": DepState.PENDING})
    assert [i.key for i in decision.ready] == ["b/1", "a/1"] and decision.start == decision.ready[0]
    assert [b.item.key for b in decision.wait] == ["c/1"], "job: dependencies still wait for success"
