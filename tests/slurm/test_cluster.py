"""`runner watch --executor slurm` and `runner run --executor slurm` on a real Slurm (two nodes on
this one machine, see conftest.py).

The jobs train the tiny saved model on the nodes through sbatch; the daemon follows them with
squeue/scontrol. What a user relies on: the run's state follows the Slurm job's, the Slurm job id,
state, reason and exit code are in status.json, a time limit interrupts the run and the next
allocation resumes it from its checkpoint, and `runner cancel` scancels.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys

from runner.outputs.status import FailureClass, JobState, Status

from ..watch.conftest import Project, _env
from .conftest import NODES, Cluster

TERMINAL = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.INVALID}


def states(status: Status) -> list[str]:
    return [str(h.to_state) for h in status.history]


def running_on_a_node(project: Project, job: str) -> Status | None:
    """The job's run once the node's process has trained a step."""
    status = project.latest(job) if project.runs_of(job) else None
    return status if status is not None and status.state is JobState.RUNNING and (status.step or 0) >= 1 else None


def slurm(status: Status) -> dict:  # type: ignore[type-arg]
    record = status.extra.get("slurm")
    assert isinstance(record, dict), f"no extra.slurm in {status.to_json()}"
    return record


def test_a_job_runs_as_an_sbatch_job_outlives_a_daemon_restart_and_succeeds_with_its_slurm_job_id_recorded(
    project: Project, slurm_cluster: Cluster
) -> None:
    first = project.start("--executor", "slurm", "--slurm-poll", "0.5").wait_ready()
    project.write("tiny.toml", project.spec(steps=60, resources={"memory": "1G", "cpus_per_node": 1}))
    running = project.wait_for(lambda: running_on_a_node(project, "tiny"), timeout=120, why="tiny running on a node")
    first.signal_group(15)
    assert first.wait() == 0, "stopping the daemon does not wait for (or stop) its Slurm jobs"
    assert project.latest("tiny").state is JobState.RUNNING
    project.start("--executor", "slurm", "--slurm-poll", "0.5").wait_ready()
    project.wait_for(lambda: project.state("tiny") in TERMINAL, timeout=180, why="tiny finished")

    status = project.latest("tiny")
    record = slurm(status)
    assert (status.state, status.step, status.reason) == (JobState.SUCCEEDED, 60, None), status.error
    assert states(status) == ["queued", "running", "succeeded"] and status.attempt == 1
    assert record["job_id"] == slurm(running)["job_id"] and record["job_id"].isdigit()
    assert (record["state"], record["exit_code"]) == ("COMPLETED", "0:0") and record["nodes"] in NODES
    assert record["jobs"] == [{"job_id": record["job_id"], "attempt": 1, "state": "COMPLETED", "exit_code": "0:0"}]
    job = slurm_cluster.job(record["job_id"])
    assert "JobState=COMPLETED" in job and "MinMemoryNode=1G" in job, job  # [resources] became sbatch options
    run_dir = project.run_dirs("tiny")[-1]
    assert (run_dir / "adapter").is_dir() and (run_dir / "manifest.json").is_file()
    script = (run_dir / ".slurm" / "attempt-1.sh").read_text()
    assert (
        f"exec {sys.executable} -m runner run {project.jobs / 'tiny.toml'} --runs-dir {project.runs} "
        f"--run-dir {run_dir}" in script
    )
    log = project.cli("logs", "tiny").stdout
    assert "attempt 1 of tiny/" in log and "[60/60]" in log and "succeeded in" in log  # the node's output
    assert f"following its Slurm job {record['job_id']} (running)" in project.daemons[1].log()
    shown = project.cli("status", "tiny").stdout
    assert f"slurm: job_id={record['job_id']} state=COMPLETED exit_code=0:0 nodes={record['nodes']}" in shown


def test_runner_run_with_the_slurm_executor_follows_its_job_ctrl_c_stops_it_and_running_again_resumes(
    project: Project,
) -> None:
    job = project.write("fg.toml", project.spec(steps=300, save_every=1000, train={"log_every": 10}))
    command = [sys.executable, "-m", "runner", "run", str(job), "--executor", "slurm", "--runs-dir", str(project.runs)]
    first = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=project.root, env=_env()
    )
    project.wait_for(
        lambda: (
            project.runs_of("fg")
            and project.latest("fg").state is JobState.RUNNING
            and (project.latest("fg").step or 0) >= 10
        ),
        timeout=120,
        why="fg running on a node",
    )
    first.send_signal(signal.SIGINT)  # Ctrl-C: scancel, the job saves a checkpoint, the run is resumable
    out, err = first.communicate(timeout=120)
    stopped = project.latest("fg")
    assert first.returncode == 3, err
    assert (stopped.state, slurm(stopped)["state"]) == (JobState.INTERRUPTED, "CANCELLED"), stopped.error
    assert "[10/300]" in out, "the job's output is printed as it lands"

    again = subprocess.run(command, capture_output=True, text=True, cwd=project.root, env=_env(), timeout=240)
    done = project.latest("fg")
    assert again.returncode == 0, again.stderr
    assert (done.state, done.step, done.attempt) == (JobState.SUCCEEDED, 300, 2) and len(project.runs_of("fg")) == 1
    assert done.resumed_from and int(done.resumed_from.rsplit("-", 1)[-1]) >= 10, "resumed from the Ctrl-C checkpoint"
    assert [j["state"] for j in slurm(done)["jobs"]] == ["CANCELLED", "COMPLETED"]
    assert f"submitted as Slurm job {slurm(done)['job_id']}" in again.stderr


def test_a_job_over_two_nodes_runs_one_torchrun_per_node_that_meet_on_the_first_node(project: Project) -> None:
    project.start("--executor", "slurm", "--slurm-poll", "0.5").wait_ready()
    project.write("wide.toml", project.spec(steps=3, resources={"nodes": 2}))
    project.wait_for(lambda: project.state("wide") in TERMINAL, timeout=240, why="wide finished")

    status = project.latest("wide")
    assert (status.state, status.step) == (JobState.SUCCEEDED, 3), status.error
    assert slurm(status)["nodes"] == "runner-n[1-2]"
    assert status.extra["processes"] == 2 and len(set(status.extra["replica_sha256"])) == 1, (
        "one rank per node, identical replicas at the end"
    )
    log = project.cli("logs", "wide").stdout
    assert "launching 1 processes on each of 2 nodes with torchrun" in log


def test_a_job_over_its_time_limit_is_interrupted_resumed_on_a_new_allocation_and_runner_cancel_scancels_it(
    project: Project, slurm_cluster: Cluster
) -> None:
    # Slurm's shortest limit is a minute (enforced within ~30 s): the job trains far longer than that.
    project.start("--executor", "slurm", "--slurm-poll", "0.5").wait_ready()
    project.write(
        "slow.toml",
        project.spec(steps=100_000, save_every=100_000, resources={"time_limit": 1}, train={"log_every": 20}),
    )

    def resumed() -> Status | None:
        """Attempt 2 running from a checkpoint, past the step it resumed from."""
        status = project.latest("slow") if project.runs_of("slow") else None
        if status is None or status.attempt != 2 or status.state is not JobState.RUNNING or not status.resumed_from:
            return None
        return status if (status.step or 0) > int(status.resumed_from.rsplit("-", 1)[-1]) else None

    second = project.wait_for(resumed, timeout=200, why="slow interrupted by its time limit and resumed")
    first_job, second_job = slurm(second)["jobs"]
    checkpoint_step = int(str(second.resumed_from).rsplit("-", 1)[-1])
    assert first_job["state"] == "TIMEOUT" and second_job["job_id"] != first_job["job_id"]
    assert states(second) == ["queued", "running", "interrupted", "queued", "running"]
    assert checkpoint_step > 0, "the SIGTERM at the time limit saved a checkpoint"
    interrupted = next(h for h in second.history if h.to_state is JobState.INTERRUPTED)
    assert interrupted.reason is FailureClass.INTERRUPTED

    cancel = project.cli("cancel", "slow", "--wait", "120")
    final = project.latest("slow")
    assert cancel.returncode == 0, cancel.stderr + cancel.stdout
    assert (final.state, final.reason) == (JobState.CANCELLED, FailureClass.CANCELLED_BY_USER), final.error
    assert slurm(final)["state"] == "CANCELLED" and slurm(final)["job_id"] == second_job["job_id"]
    assert "JobState=CANCELLED" in slurm_cluster.job(second_job["job_id"])
    steps = [
        r["step"]
        for r in map(json.loads, (project.run_dirs("slow")[-1] / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert steps == sorted(steps) and min(s for s in steps if s > checkpoint_step) > checkpoint_step
