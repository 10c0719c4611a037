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

__all__ = ["batch_script", "memory_option", "node_command", "sbatch_options"]

_MEMORY = re.compile(r"^([1-9][0-9]*)\s*([KMGTkmgt]?)(?:i?[Bb])?$")


def memory_option(text: str) -> str:
    """'16GiB', '16GB', '16g', '16G' -> '16G' (sbatch --mem units are binary K/M/G/T; plain number: MB)."""
    match = _MEMORY.match(text.strip())
    if match is None:
        raise ValueError(f"resources.memory = {text!r} is not a size such as '64G', '500M' or '16GiB'")
    return match.group(1) + match.group(2).upper()


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


def node_command(python: str, spec_path: Path, *, run_dir: Path, runs_root: Path, registry: Path | None = None,
                 allow_remote_code: bool = False) -> list[str]:
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
