"""The Slurm commands the runner calls: sbatch, squeue, scontrol, sacct, scancel.

A thin layer: it runs the command, tells a refusal (fix the job) from an unreachable controller
(try again later), and hands the text to the pure parsers in `runner.slurm.states`. No pyslurm,
no REST API: the client commands are what every cluster has, and `SLURM_CONF` and the rest of the
environment apply as they do for the user's own commands.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

from runner.slurm.states import SACCT_FIELDS, SQUEUE_FORMAT, JobInfo, Phase, parse_sacct, parse_scontrol, parse_squeue

__all__ = ["SbatchRefused", "SlurmClient", "SlurmError", "SlurmUnavailable"]

# Messages of a controller that is down, restarting or overloaded: nothing is wrong with the job.
_TRANSIENT = (
    "unable to contact slurm controller",
    "socket timed out",
    "temporarily unavailable",
    "zero bytes were transmitted",
    "connection refused",
    "communication connection failure",
)


class SlurmError(RuntimeError):
    """A Slurm command failed; the message names the command and what it printed."""


class SlurmUnavailable(SlurmError):
    """The Slurm commands are missing or the controller cannot be reached: try again later."""


class SbatchRefused(SlurmError):
    """sbatch rejected the job (a bad partition, account, option or limit): the job file must change."""


def _first_lines(text: str, limit: int = 6) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return "\n".join(lines[:limit])


class SlurmClient:
    """Calls the Slurm client commands found on PATH."""

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout

    @staticmethod
    def available() -> str | None:
        """None if sbatch, squeue and scancel are on PATH; else what is missing (for the error message)."""
        missing = [name for name in ("sbatch", "squeue", "scancel") if shutil.which(name) is None]
        return ", ".join(missing) if missing else None

    def _run(self, command: Sequence[str]) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                list(command), capture_output=True, text=True, timeout=self.timeout, stdin=subprocess.DEVNULL
            )
        except FileNotFoundError as exc:
            raise SlurmUnavailable(
                f"{command[0]} not found: install the Slurm client commands (Debian: "
                "slurm-client) and its configuration on this machine"
            ) from exc
        except subprocess.TimeoutExpired as exc:
            raise SlurmUnavailable(f"{command[0]} did not answer within {self.timeout:g} s") from exc
        except OSError as exc:
            raise SlurmUnavailable(f"cannot run {command[0]}: {exc}") from exc

    def sbatch(self, script: Path, options: Sequence[str]) -> str:
        """Submit; the Slurm job id. `SbatchRefused` when the job is at fault, `SlurmUnavailable` else."""
        done = self._run(["sbatch", "--parsable", *options, str(script)])
        if done.returncode != 0:
            said = _first_lines(done.stderr or done.stdout) or f"exit code {done.returncode}"
            if any(marker in said.lower() for marker in _TRANSIENT):
                raise SlurmUnavailable(f"sbatch failed: {said}")
            raise SbatchRefused(said)
        job_id = done.stdout.strip().splitlines()[-1].split(";", 1)[0].strip() if done.stdout.strip() else ""
        if not job_id.isdigit():
            raise SlurmError(f"sbatch did not print a job id (it printed {done.stdout.strip()!r})")
        return job_id

    def query(self, job_ids: Iterable[str]) -> dict[str, JobInfo]:
        """What Slurm knows about these jobs. squeue for all of them (one call); for the ones that ended,
        scontrol for their exit code; sacct for the ones the controller has forgotten (MinJobAge), when
        the cluster keeps accounting. A job absent from the result is unknown to Slurm.
        `SlurmUnavailable` when the controller cannot be asked: nothing can be concluded then."""
        ids = sorted(set(job_ids), key=int)
        if not ids:
            return {}
        done = self._run(
            ["squeue", "--noheader", "--states=all", f"--jobs={','.join(ids)}", f"--format={SQUEUE_FORMAT}"]
        )
        if done.returncode != 0 and "invalid job id" not in (done.stderr or "").lower():
            raise SlurmUnavailable(f"squeue failed: {_first_lines(done.stderr) or done.returncode}")
        found = parse_squeue(done.stdout) if done.returncode == 0 else {}
        for job_id, info in list(found.items()):
            if info.phase is Phase.ENDED:  # squeue has no exit code; scontrol has, while it remembers the job
                detail = self._run(["scontrol", "show", "job", "-o", job_id])
                more = parse_scontrol(detail.stdout).get(job_id) if detail.returncode == 0 else None
                if more is not None and more.phase is Phase.ENDED:
                    found[job_id] = more
        missing = [job_id for job_id in ids if job_id not in found]
        if missing and shutil.which("sacct"):
            done = self._run(
                [
                    "sacct",
                    "--noheader",
                    "--parsable2",
                    "--allocations",
                    f"--jobs={','.join(missing)}",
                    f"--format={SACCT_FIELDS}",
                ]
            )
            if done.returncode == 0:  # else: accounting disabled or slurmdbd down; the job stays unknown
                found.update({k: v for k, v in parse_sacct(done.stdout).items() if k in missing})
        return found

    def cancel(self, job_id: str) -> None:
        """scancel: Slurm sends SIGTERM (the runner saves a checkpoint), then SIGKILL after KillWait."""
        done = self._run(["scancel", job_id])
        if done.returncode != 0:
            raise SlurmError(f"scancel {job_id} failed: {_first_lines(done.stderr) or done.returncode}")
