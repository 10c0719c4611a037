"""Slurm's states, exit codes and command output -> our states, without a cluster.

The sample lines are what Slurm 22.05 printed on the test cluster (squeue, scontrol) and what
sacct prints on a cluster with accounting.
"""

from __future__ import annotations

import pytest

from runner.outputs.attempts import Intent, Outcome
from runner.outputs.status import FailureClass, JobState
from runner.slurm.states import (
    UNKNOWN,
    JobInfo,
    Phase,
    classify_end,
    parse_exit_code,
    parse_sacct,
    parse_scontrol,
    parse_squeue,
    phase_of,
)

SQUEUE = """\
4|PENDING||N/A|N/A|UNLIMITED|Resources
3|RUNNING|vm|2026-11-29T05:47:53|2026-11-29T05:48:53|1:00|None
1|FAILED|vm|2026-11-29T05:47:39|2026-11-29T05:47:39|UNLIMITED|NonZeroExitCode
"""
SCONTROL = (
    "JobId=3 JobName=t.sh UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=4294901758 Nice=0 Account=(null) "
    "QOS=(null) JobState=TIMEOUT Reason=TimeLimit Dependency=(null) Requeue=0 Restarts=0 BatchFlag=1 Reboot=0 "
    "ExitCode=3:0 RunTime=00:01:09 TimeLimit=00:01:00 TimeMin=N/A SubmitTime=2026-11-29T05:47:53 "
    "StartTime=2026-11-29T05:47:53 EndTime=2026-11-29T05:49:02 Partition=debug AllocNode:Sid=localhost:2529 "
    "NodeList=vm BatchHost=vm NumNodes=1 NumCPUs=1 CPUs/Task=1 Command=/tmp/my jobs/t.sh WorkDir=/tmp/slx\n"
)
SACCT = """\
812|TIMEOUT|0:0|gpu-[01-02]|2026-11-29T01:00:00|2026-11-29T03:00:05|02:00:00
812.batch|CANCELLED|0:15|gpu-01|2026-11-29T01:00:00|2026-11-29T03:00:06|
813|CANCELLED by 1000|0:0|None assigned|2026-11-29T01:05:00|2026-11-29T01:05:00|02:00:00
"""


def info(state: str, exit_code: str | None = None, **more: str) -> JobInfo:
    return JobInfo("812", state, exit_code=exit_code, **more)  # type: ignore[arg-type]


def test_squeue_lines_become_job_infos_with_blanks_as_none() -> None:
    jobs = parse_squeue(SQUEUE)
    assert jobs["4"] == JobInfo("4", "PENDING", "Resources", None, None, None, None, "UNLIMITED", "squeue")
    assert (jobs["3"].state, jobs["3"].nodes, jobs["3"].reason, jobs["3"].time_limit) == ("RUNNING", "vm", None, "1:00")
    assert [jobs[j].phase for j in ("4", "3", "1")] == [Phase.PENDING, Phase.RUNNING, Phase.ENDED]


def test_scontrol_gives_the_exit_code_and_keeps_values_with_spaces_whole() -> None:
    job = parse_scontrol(SCONTROL)["3"]
    assert (job.state, job.reason, job.exit_code, job.nodes, job.time_limit) == (
        "TIMEOUT",
        "TimeLimit",
        "3:0",
        "vm",
        "00:01:00",
    )
    assert parse_scontrol("slurm_load_jobs error: Invalid job id specified\n") == {}


def test_sacct_keeps_the_allocation_not_its_steps_and_trims_who_cancelled() -> None:
    jobs = parse_sacct(SACCT)
    assert sorted(jobs) == ["812", "813"]
    assert (jobs["812"].state, jobs["812"].nodes, jobs["812"].source) == ("TIMEOUT", "gpu-[01-02]", "sacct")
    assert (jobs["813"].state, jobs["813"].nodes) == ("CANCELLED", None)


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("3:0", (3, 0)), ("0:9", (0, 9)), (" 137:0 ", (137, 0)), ("", None), (None, None), ("n/a", None)],
)
def test_exit_codes_are_return_code_and_signal(text: str | None, parsed: tuple[int, int] | None) -> None:
    assert parse_exit_code(text) == parsed


SUCCESS = Outcome(JobState.SUCCEEDED, fields={"step": 30, "extra": {"train_seconds": 12.0}})


@pytest.mark.parametrize(
    ("state", "outcome", "ours", "reason"),
    [
        ("COMPLETED", SUCCESS, JobState.SUCCEEDED, None),
        ("FAILED", None, JobState.FAILED, FailureClass.CRASH),
        ("OUT_OF_MEMORY", None, JobState.FAILED, FailureClass.OOM),
        ("CANCELLED", None, JobState.CANCELLED, FailureClass.CANCELLED_BY_USER),
        ("TIMEOUT", None, JobState.INTERRUPTED, FailureClass.INTERRUPTED),
        ("PREEMPTED", None, JobState.INTERRUPTED, FailureClass.INTERRUPTED),
        ("NODE_FAIL", None, JobState.INTERRUPTED, FailureClass.INTERRUPTED),
        ("REQUEUED", None, JobState.INTERRUPTED, FailureClass.INTERRUPTED),
    ],
)
def test_the_issues_state_map(state: str, outcome: Outcome | None, ours: JobState, reason: FailureClass | None) -> None:
    final = classify_end(info(state, "1:0" if state == "FAILED" else "0:0"), outcome, None)
    assert (final.state, final.reason) == (ours, reason), final.error


@pytest.mark.parametrize("state", ["PENDING", "CONFIGURING"])
def test_waiting_states_are_pending_and_live_ones_running(state: str) -> None:
    assert phase_of(state) is Phase.PENDING
    assert {phase_of(s) for s in ("RUNNING", "COMPLETING", "SUSPENDED", "SOMETHING_NEW")} == {Phase.RUNNING}
    assert phase_of("CANCELLED by 0") is Phase.ENDED and phase_of("REQUEUE_HOLD") is Phase.REQUEUED


def test_the_runs_own_report_wins_where_slurm_knows_less() -> None:
    data_error = Outcome(JobState.FAILED, FailureClass.DATA, "data/train.jsonl:3: not JSON")
    signalled = Outcome(JobState.INTERRUPTED, FailureClass.INTERRUPTED, "SIGTERM: checkpoint saved at step 40")
    assert classify_end(info("FAILED", "1:0"), data_error, None).reason is FailureClass.DATA
    # --signal=B:TERM@120: a checkpoint before the limit, exit 3, which Slurm calls FAILED
    early = classify_end(info("FAILED", "3:0"), signalled, None)
    assert (early.state, early.reason) == (JobState.INTERRUPTED, FailureClass.INTERRUPTED)
    assert "checkpoint saved at step 40" in (early.error or "") and "Slurm job 812 FAILED" in (early.error or "")
    assert classify_end(info("TIMEOUT"), SUCCESS, None).state is JobState.SUCCEEDED, "done just before the limit"
    timeout = classify_end(info("TIMEOUT", "3:0", reason="TimeLimit", time_limit="02:00:00"), signalled, None)
    assert timeout.error == (
        "Slurm job 812 TIMEOUT (TimeLimit, time limit 02:00:00, exit code 3:0): SIGTERM: checkpoint "
        "saved at step 40; it resumes from its last complete checkpoint on a new allocation"
    )


def test_a_scancel_the_runner_sent_is_a_cancel_or_a_stop_depending_on_why() -> None:
    cancelled = classify_end(info("CANCELLED"), None, Intent.CANCEL)
    assert (cancelled.state, cancelled.error) == (
        JobState.CANCELLED,
        "cancelled with `runner cancel` (Slurm job 812 CANCELLED)",
    )
    assert classify_end(info("CANCELLED"), None, Intent.SHUTDOWN).state is JobState.INTERRUPTED  # Ctrl-C: resumable
    assert classify_end(info("CANCELLED"), None, Intent.DROP).error.startswith("cancelled: its job file was deleted")  # type: ignore[union-attr]
    failed_first = Outcome(JobState.FAILED, FailureClass.MODEL, "weights changed")
    assert classify_end(info("CANCELLED"), failed_first, Intent.CANCEL).reason is FailureClass.MODEL


def test_an_end_without_a_report_is_explained_by_what_slurm_knows() -> None:
    tail = "Traceback ...\nRuntimeError: boom"
    crashed = classify_end(info("FAILED", "1:0"), None, None, log_tail=tail)
    assert crashed.reason is FailureClass.CRASH and crashed.error.endswith(tail)  # type: ignore[union-attr]
    killed = classify_end(info("FAILED", "0:9"), None, None)  # an operator's SIGKILL; Slurm's OOM is OUT_OF_MEMORY
    assert (killed.state, killed.reason) == (JobState.INTERRUPTED, FailureClass.KILLED)
    assert "SIGKILL" in (killed.error or "") and "runner run" in (killed.error or "")
    no_python = classify_end(info("FAILED", "127:0"), None, None, python="/home/me/.venv/bin/python")
    assert "could not start /home/me/.venv/bin/python" in (no_python.error or "")
    unshared = classify_end(info("FAILED", "1:0"), None, None, log_missing=True)
    assert "a filesystem every node sees" in (unshared.error or "")
    silent = classify_end(info("COMPLETED", "0:0"), None, None)
    assert (silent.state, silent.reason) == (JobState.FAILED, FailureClass.CRASH), "success needs the run's report"
    gone = classify_end(JobInfo("812", UNKNOWN, source="none"), None, None)
    assert gone.state is JobState.INTERRUPTED and "no longer known to Slurm" in (gone.error or "")
