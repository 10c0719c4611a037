"""A job's [resources] as sbatch options, and the batch script that runs it on the allocation.

Pure functions, so the mapping is tested without a cluster. One Slurm task per node: that task is
`runner run` on the first node, which starts torchrun (`nproc` processes per node; with several
nodes, one torchrun per node through srun, rendezvous on the first). So the CPUs of a node are
`--cpus-per-task`, and `--ntasks-per-node=1`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from pathlib import Path

from runner.spec.model import ResourcesSection
from runner.units import SIZE_WITH_UNIT_PATTERN, parse_size

__all__ = ["batch_script", "memory_option", "node_command", "sbatch_options"]


def memory_option(text: str) -> str:
    """resources.memory (runner.units: 16GB = 16 x 10^9 bytes, 16GiB = 16G = 16 x 2^30) as sbatch
    --mem reads it (its K/M/G/T are powers of 1024): '16GiB' and '16G' -> '16G'; '16GB' -> '15259M'
    (whole MiB, rounded up). A size without a unit is refused: sbatch would read it as megabytes."""
    if re.fullmatch(SIZE_WITH_UNIT_PATTERN, text.strip()) is None:
        raise ValueError(f"resources.memory = {text!r} is not a size such as '64G', '500M' or '16GiB'")
    size = parse_size(text)
    for suffix, scale in (("T", 2**40), ("G", 2**30), ("M", 2**20)):
        if size % scale == 0:
            return f"{size // scale}{suffix}"
    return f"{-(-size // 2**20)}M"


def sbatch_options(resources: ResourcesSection, *, job_name: str, log_path: Path) -> list[str]:
    """The sbatch options of one attempt: ours first, then `[resources.slurm] options` as written.

    `--no-requeue`: an interruption (time limit, preemption, node failure) ends the Slurm job, and
    the submitter queues the run again under its own attempt count, resuming from the checkpoint.
    Output goes to the run's train.log, appended, so `runner logs` shows every attempt.
    """
    options = [
        f"--job-name={job_name}",
        f"--output={log_path}",
        "--open-mode=append",
        "--no-requeue",
        f"--nodes={resources.nodes}",
        "--ntasks-per-node=1",
    ]
    cpus = resources.cpus_per_node or resources.nproc * (resources.threads or 1)
    options.append(f"--cpus-per-task={cpus}")
    gpus = resources.gpus_per_node
    if gpus is None and resources.device == "cuda":
        gpus = resources.nproc
    if gpus:
        options.append(f"--gpus-per-node={gpus}")
    if resources.memory:
        options.append(f"--mem={memory_option(resources.memory)}")
    if resources.time_limit:
        options.append(f"--time={resources.time_limit}")
    if resources.slurm.partition:
        options.append(f"--partition={resources.slurm.partition}")
    if resources.slurm.account:
        options.append(f"--account={resources.slurm.account}")
    options.extend(resources.slurm.options)
    return options


def node_command(
    python: str,
    spec_path: Path,
    *,
    run_dir: Path,
    runs_root: Path,
    registry: Path | None = None,
    allow_remote_code: bool = False,
) -> list[str]:
    """What the allocation runs: the submitter's interpreter on the run folder it queued."""
    command = [python, "-m", "runner", "run", str(spec_path), "--runs-dir", str(runs_root), "--run-dir", str(run_dir)]
    if registry is not None:
        command += ["--registry", str(registry)]
    if allow_remote_code:
        command.append("--allow-remote-code")
    return command


def batch_script(command: Sequence[str], options: Sequence[str], *, comment: str = "") -> str:
    """The script sbatch runs on the first node. The options are passed on the sbatch command line
    (no quoting rules of #SBATCH lines to trip over); they are repeated here for whoever reads it.
    `exec`: Slurm's signals (time limit, scancel) reach the runner itself, which saves a checkpoint."""
    lines = ["#!/bin/bash"]
    if comment:
        lines += [f"# {line}" for line in comment.splitlines()]
    lines += ["# sbatch " + shlex.join(options), "export PYTHONUNBUFFERED=1", "exec " + shlex.join(command), ""]
    return "\n".join(lines)
