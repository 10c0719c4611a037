"""[resources] -> sbatch options, the batch script and the multi-node torchrun launch, without a cluster."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from runner.slurm.sbatch import batch_script, memory_option, node_command, sbatch_options
from runner.spec import JobSpecError, parse_job
from runner.spec.model import ResourcesSection
from runner.train.launch import multinode_command

LOG = Path("/shared/runs/job/run/train.log")


def options(**resources: object) -> list[str]:
    return sbatch_options(ResourcesSection.model_validate(resources), job_name="runner-job", log_path=LOG)


def spec_text(resources: str) -> str:
    return f'[model]\nsource = "local:m"\n[data]\ntrain = "t.jsonl"\n[resources]\n{resources}\n'


def problems(resources: str) -> list[str]:
    with pytest.raises(JobSpecError) as caught:
        parse_job(spec_text(resources), display="job.toml", default_name="job")
    return [f"{issue.line}: {issue.path}: {issue.message}" for issue in caught.value.issues]


def test_defaults_ask_for_one_node_one_task_and_one_cpu_per_process_with_output_appended_to_train_log() -> None:
    assert options() == [
        "--job-name=runner-job",
        f"--output={LOG}",
        "--open-mode=append",
        "--no-requeue",
        "--nodes=1",
        "--ntasks-per-node=1",
        "--cpus-per-task=1",
    ]


def test_every_resource_maps_to_its_sbatch_option_and_extra_options_come_last_as_written() -> None:
    got = options(
        nproc=4,
        nodes=2,
        cpus_per_node=32,
        gpus_per_node=4,
        memory="64GiB",
        time_limit="1-12:00:00",
        slurm={"partition": "gpu", "account": "ml", "options": ["--qos=high", "--constraint=a100"]},
    )
    assert got[4:] == [
        "--nodes=2",
        "--ntasks-per-node=1",
        "--cpus-per-task=32",
        "--gpus-per-node=4",
        "--mem=64G",
        "--time=1-12:00:00",
        "--partition=gpu",
        "--account=ml",
        "--qos=high",
        "--constraint=a100",
    ]


def test_cuda_jobs_get_one_gpu_per_process_unless_gpus_per_node_says_otherwise() -> None:
    assert "--gpus-per-node=2" in options(device="cuda", nproc=2)
    assert not any(o.startswith("--gpus") for o in options(device="cuda", nproc=2, gpus_per_node=0))
    assert not any(o.startswith("--gpus") for o in options(device="auto", nproc=2))
    assert "--cpus-per-task=8" in options(nproc=2, threads=4), "cpus default to nproc x threads"


@pytest.mark.parametrize(
    ("written", "sbatch"),
    [
        ("64G", "64G"),
        ("64GiB", "64G"),
        ("16gib", "16G"),
        ("500m", "500M"),
        ("1 T", "1T"),
        ("1.5G", "1536M"),
        ("16GB", "15259M"),
        ("500MB", "477M"),
        ("2048MiB", "2G"),
    ],
)
def test_memory_sizes_are_written_the_way_sbatch_reads_them(written: str, sbatch: str) -> None:
    """GB is 10^9 bytes and GiB (or G) 2^30, as everywhere in the runner; sbatch's G is 2^30, so a
    GB size becomes whole MiB, rounded up (never less memory than was written)."""
    assert memory_option(written) == sbatch


@pytest.mark.parametrize("written", ["2048", "lots", "0G", "16Gi"])
def test_a_memory_size_without_a_unit_or_unreadable_is_refused(written: str) -> None:
    with pytest.raises(ValueError, match=r"resources.memory"):
        memory_option(written)
    assert any("resources.memory" in p for p in problems(f'memory = "{written}"'))


def test_time_limit_takes_minutes_as_a_number_or_a_slurm_time_string() -> None:
    minutes = parse_job(spec_text("time_limit = 90"), display="job.toml", default_name="job")
    clock = parse_job(spec_text('time_limit = "2:00:00"'), display="job.toml", default_name="job")
    assert minutes.spec.resources.time_limit == "90" and clock.spec.resources.time_limit == "2:00:00"
    assert "--time=90" in sbatch_options(minutes.spec.resources, job_name="j", log_path=LOG)
    assert any("resources.time_limit" in p for p in problems('time_limit = "two hours"'))
    assert any("resources.memory" in p for p in problems('memory = "lots"'))


def test_options_the_runner_sets_itself_are_refused_with_the_key_to_use_and_the_line() -> None:
    found = problems('[resources.slurm]\noptions = ["--qos=high", "--time=10", "-p gpu", "--output=x.log"]')
    assert found == [
        "7: resources.slurm.options[1]: '--time=10': the runner sets --time itself; use resources.time_limit instead",
        "7: resources.slurm.options[2]: '-p gpu': the runner sets --partition itself; use resources.slurm.partition instead",
        "7: resources.slurm.options[3]: '--output=x.log': the runner sets --output itself; remove it",
    ]
    assert any("resources.slurm.options[0]" in p for p in problems('[resources.slurm]\noptions = ["qos=high"]'))


def test_the_batch_script_execs_the_submitters_python_on_the_run_folder() -> None:
    command = node_command(
        "/venv/bin/python",
        Path("/p/jobs/a b.toml"),
        run_dir=Path("/p/runs/a/r1"),
        runs_root=Path("/p/runs"),
        registry=Path("/p/registry/registry.json"),
        allow_remote_code=True,
    )
    script = batch_script(command, ["--time=5", "--comment=two words"], comment="attempt 2 of a/r1")
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and "# attempt 2 of a/r1" in lines
    assert lines[-1] == (
        "exec /venv/bin/python -m runner run '/p/jobs/a b.toml' --runs-dir /p/runs --run-dir /p/runs/a/r1 "
        "--registry /p/registry/registry.json --allow-remote-code"
    )
    assert shlex.split(lines[-1])[1:] == command, "quoted so that paths with spaces survive"
    assert "# sbatch --time=5 '--comment=two words'" in lines


def test_several_nodes_start_one_torchrun_per_node_with_srun_and_meet_on_the_first_node() -> None:
    command = multinode_command(
        "/venv/bin/python",
        2,
        4,
        Path("/runs/r/.workers/launch.json"),
        head="gpu-01",
        port=29411,
        rdzv_id="12345",
        cpus_per_task="32",
    )
    assert command[:6] == [
        "srun",
        "--nodes=2",
        "--ntasks=2",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        "--cpus-per-task=32",
    ]
    torchrun = command[command.index("/venv/bin/python") :]
    assert torchrun == [
        "/venv/bin/python",
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc-per-node=4",
        "--max-restarts=0",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=gpu-01:29411",
        "--rdzv-id=12345",
        "-m",
        "runner.train.launch",
        "/runs/r/.workers/launch.json",
    ]


def test_world_size_counts_every_process_on_every_node() -> None:
    assert ResourcesSection(nproc=4, nodes=2).world_size == 8
    assert ResourcesSection().world_size == 1
    assert problems('strategy = "fsdp"\nnodes = 1') == [
        '6: resources.strategy: fsdp shards across processes: set resources.nproc > 1, or use "ddp"'
    ]
    two_nodes = parse_job(spec_text('strategy = "fsdp"\nnodes = 2'), display="job.toml", default_name="job")
    assert two_nodes.spec.resources.world_size == 2, "one process on each of two nodes is sharded too"


def test_several_nodes_outside_a_slurm_allocation_are_refused_with_the_way_to_run_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from runner.train.launch import _slurm_rendezvous
    from runner.train.model import ModelSetupError

    for name in ("SLURM_JOB_ID", "SLURM_JOB_NUM_NODES", "SLURM_NNODES"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(
        ModelSetupError,
        match=r"resources.nodes = 2 needs a Slurm allocation of 2 nodes \(not inside one\)"
        r".*--executor slurm",
    ):
        _slurm_rendezvous(2)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_JOB_NUM_NODES", "1")
    with pytest.raises(ModelSetupError, match=r"\(this one has 1\)"):
        _slurm_rendezvous(2)
