"""Run one job through the pipeline: spec -> registry -> data -> train -> outputs.

This is what `runner run` (and the daemon's child process) calls. It owns the run folder, the
state transitions of the run, the manifest, resume, and the translation of failures into a
failure class with a message a user can act on. The training itself is the recipe's.

Under `runner watch` (a `Supervision`), the daemon owns the run folder and the state changes
around the process: it made the run and set it running, and it writes how the run ended only
after this process has exited. Here the end is then *reported* to an outcome file instead of
written, so a terminal state never precedes the exit and the daemon can tell a cancel or a
shutdown it asked for from a failure.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.data.reading import digest_source
from runner.outputs.attempts import Outcome, read_outcome, write_outcome
from runner.outputs.checkpoints import find_resume_point
from runner.outputs.leftovers import remove_leftovers
from runner.outputs.manifest import build_manifest, write_manifest
from runner.outputs.metrics import MetricsLog
from runner.outputs.runs import OUTCOME_FILE, find_interrupted_run, new_run_dir, run_paths
from runner.outputs.status import FailureClass, JobState, StatusFile, new_status
from runner.spec.loader import LoadedJob

if TYPE_CHECKING:
    from runner.train.context import TrainOutcome
    from runner.train.stop import StopRequest

# How a supervised run reports its end; defined with the outputs (runner.outputs.attempts).
__all__ = [
    "OUTCOME_FILE",
    "Outcome",
    "RunResult",
    "Supervision",
    "prepare_run",
    "read_outcome",
    "run_job",
    "write_outcome",
]


@dataclass(frozen=True)
class Supervision:
    """A run driven by `runner watch`: the daemon created `run_dir` and set it running.

    The process reports how the run ended to `outcome` (see `write_outcome`); the daemon applies
    it through the one transition function once the process has exited.
    """

    run_dir: Path
    outcome: Path


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    state: JobState
    reason: str | None = None
    message: str | None = None

    @property
    def exit_code(self) -> int:
        return {JobState.SUCCEEDED: 0, JobState.INTERRUPTED: 3}.get(self.state, 1)


def prepare_run(job: LoadedJob, runs_root: Path, *, resume: bool | str = "auto") -> tuple[Path, StatusFile, bool]:
    """The run folder to use: an interrupted run of the same spec to resume, or a new one.

    `resume="auto"` resumes only an interrupted run (or one whose process died); `True` also
    requires one to exist; `False` always starts fresh.
    """
    previous = find_interrupted_run(runs_root, job.name, job.sha256) if resume else None
    if resume is True and previous is None:
        raise FileNotFoundError(f"no interrupted run of job '{job.name}' with this spec to resume under {runs_root}")
    if previous is not None:
        status = StatusFile(run_paths(previous).status)
        current = status.read()
        assert current is not None
        if current.state is JobState.RUNNING:  # its process died without a word (SIGKILL, power loss)
            status.transition(JobState.INTERRUPTED, reason=FailureClass.INTERRUPTED, error="the run's process died")
        remove_leftovers(previous)  # what the dead attempt left half-written
        status.transition(JobState.QUEUED)
        return previous, status, True
    run_dir = new_run_dir(runs_root, job.name)
    status = StatusFile(run_paths(run_dir).status)
    status.create(new_status(job.name, run_dir.name, spec_sha256=job.sha256))
    return run_dir, status, False


@dataclass(frozen=True)
class _Attempt:
    """One attempt at a run: its folder, status, the checkpoint it resumes from, and how it ends
    (a transition, or an outcome reported to the daemon)."""

    run_dir: Path
    status: StatusFile
    resume_from: Path | None
    finish: Callable[..., object]


def run_job(
    job: LoadedJob,
    runs_root: Path,
    *,
    resume: bool | str = "auto",
    command: list[str] | None = None,
    supervised: Supervision | None = None,
    registry: Path | None = None,
    allow_remote_code: bool = False,
) -> RunResult:
    """`registry`: the registry file for registry: sources and output.register_as (None: found from
    the job file's folder, see runner.registry.store.find_registry); `allow_remote_code`: the
    runner's --allow-remote-code (model.trust_remote_code is refused without it)."""
    from runner.train.startup import lean_imports

    with lean_imports(job.spec):  # before the first import of the training libraries
        return _run_job(
            job,
            runs_root,
            resume=resume,
            command=command,
            supervised=supervised,
            registry=registry,
            allow_remote_code=allow_remote_code,
        )


def _run_job(
    job: LoadedJob,
    runs_root: Path,
    *,
    resume: bool | str,
    command: list[str] | None,
    supervised: Supervision | None,
    registry: Path | None,
    allow_remote_code: bool,
) -> RunResult:
    from runner.data.report import DataError
    from runner.lineage import ResumeRefused
    from runner.registry.sources import SourceError
    from runner.train.health import TrainingDiverged
    from runner.train.model import ModelSetupError
    from runner.train.stop import StopRequest

    attempt = _begin_attempt(job, runs_root, resume=resume, supervised=supervised)
    run_dir, finish = attempt.run_dir, attempt.finish
    stop = StopRequest()
    restore_signals = stop.install()
    try:
        outcome = _train(
            job,
            attempt,
            stop,
            runs_root=runs_root,
            registry=registry,
            allow_remote_code=allow_remote_code,
            command=command,
        )
    except DataError as exc:
        return _fail(finish, run_dir, FailureClass.DATA, str(exc))
    except TrainingDiverged as exc:
        return _fail(finish, run_dir, FailureClass.DIVERGED, str(exc))
    except ResumeRefused as exc:
        return _fail(finish, run_dir, FailureClass.MODEL, str(exc))
    except (SourceError, ModelSetupError) as exc:
        return _fail(finish, run_dir, FailureClass.CONFIG, str(exc))
    except MemoryError as exc:
        return _fail(finish, run_dir, FailureClass.OOM, f"out of memory: {exc}")
    except KeyboardInterrupt:
        finish(JobState.INTERRUPTED, error="stopped before a checkpoint could be written")
        return RunResult(run_dir, JobState.INTERRUPTED, "interrupted", "stopped")
    except Exception as exc:  # noqa: BLE001 - a crash of any kind: keep the traceback for the user, in the run folder
        if _is_oom(exc):
            return _fail(finish, run_dir, FailureClass.OOM, f"out of memory: {exc}")
        (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        return _fail(
            finish, run_dir, FailureClass.CRASH, f"{type(exc).__name__}: {exc} (traceback in {run_dir / 'error.log'})"
        )
    finally:
        restore_signals()
        remove_leftovers(run_dir)  # nothing half-written outlives the attempt (a torn save, the staging folder)
    return _conclude(job, attempt, outcome, stop, runs_root=runs_root, registry=registry, supervised=supervised)


def _begin_attempt(job: LoadedJob, runs_root: Path, *, resume: bool | str, supervised: Supervision | None) -> _Attempt:
    """The run folder (new, or an interrupted run to resume), its resume point, and the run set running."""
    if supervised is None:
        run_dir, status, resuming = prepare_run(job, runs_root, resume=resume)
    else:  # the daemon's run: resume from whatever complete checkpoint an earlier attempt left
        run_dir, status, resuming = supervised.run_dir, StatusFile(run_paths(supervised.run_dir).status), True
    resume_from = None
    if resuming:
        point, skipped = find_resume_point(run_paths(run_dir).checkpoints)
        for info in skipped:
            print(f"skipping incomplete checkpoint {info.path.name}: {info.why_incomplete}", file=sys.stderr)
        if point is not None:
            resume_from = point.path
            print(f"resuming run {run_dir} from {point.path.name}", flush=True)
        elif supervised is None:
            print(f"resuming run {run_dir} from the start (no complete checkpoint)", flush=True)
    resumed_from = str(resume_from) if resume_from else None
    # A resumed attempt starts at its checkpoint's step, not where the interrupted one got to.
    start: dict[str, Any] = {"step": point.step if point is not None else 0} if resuming else {}
    finish: Callable[..., object]
    if supervised is None:
        status.transition(JobState.RUNNING, pid=os.getpid(), resumed_from=resumed_from, **start)
        finish = status.transition
    else:
        status.update(pid=os.getpid(), resumed_from=resumed_from, **start)
        finish = partial(write_outcome, supervised.outcome)
    print(f"run {run_dir}", flush=True)
    return _Attempt(run_dir, status, resume_from, finish)


def _train(
    job: LoadedJob,
    attempt: _Attempt,
    stop: StopRequest,
    *,
    runs_root: Path,
    registry: Path | None,
    allow_remote_code: bool,
    command: list[str] | None,
) -> TrainOutcome:
    """Resolve the model, write the manifest, and run the job's recipe (in torchrun workers when
    the job has several processes: this process owns the run)."""
    from runner.lineage import resolve_job_model, verify_resume_base
    from runner.train.context import RunContext
    from runner.train.recipes import recipe_for

    # the data first: a missing or unreadable data file fails the run (reason data) before a model
    # is resolved, which may mean a download or a GGUF conversion
    _require_data_files(job)
    data_fingerprint = _data_fingerprint(job)
    recipe = recipe_for(job.spec)
    train = recipe.load()  # an import problem shows before any model is resolved
    paths, resume_from = run_paths(attempt.run_dir), attempt.resume_from
    # relative local:/gguf: paths in a job file are relative to the file, like its data paths;
    # a resumed checkpoint trains on exactly the base it recorded (verified), or the run is refused
    pinned = verify_resume_base(job, resume_from, runs_root=runs_root, registry=registry) if resume_from else None
    resolved, model_info = resolve_job_model(
        job, runs_root=runs_root, registry=registry, allow_remote_code=allow_remote_code, pinned=pinned
    )
    write_manifest(
        paths.manifest,
        build_manifest(
            spec=job.spec.model_dump(mode="json"),
            spec_sha256=job.sha256,
            model=model_info,
            data_fingerprint=data_fingerprint,
            seed=job.spec.train.seed,
            command=command or sys.argv,
            cwd=job.path.parent,
        ),
    )
    with MetricsLog(paths.metrics) as metrics:
        if resume_from is not None:
            metrics.rewind_to(int(resume_from.name.rsplit("-", 1)[-1]))
        context = RunContext(
            job=job,
            run_dir=attempt.run_dir,
            model_path=resolved.path,
            model_info=model_info,
            status=attempt.status,
            metrics=metrics,
            stop=stop,
            resume_from=resume_from,
        )
        if job.spec.resources.world_size > 1:
            from runner.train.launch import launch_workers

            return launch_workers(context, recipe)
        return train(context)


def _conclude(
    job: LoadedJob,
    attempt: _Attempt,
    outcome: TrainOutcome,
    stop: StopRequest,
    *,
    runs_root: Path,
    registry: Path | None,
    supervised: Supervision | None,
) -> RunResult:
    """How the run ended: interrupted (resumable), or succeeded once its result is registered."""
    from runner.lineage import register_job_result

    run_dir, finish = attempt.run_dir, attempt.finish
    if outcome.interrupted:
        finish(JobState.INTERRUPTED, error=f"{stop.signal_name}: checkpoint saved at step {outcome.global_step}")
        how = "the daemon resumes it when it runs again" if supervised else f"`runner run {job.path}` resumes it"
        print(f"interrupted at step {outcome.global_step}; {how}", flush=True)
        return RunResult(run_dir, JobState.INTERRUPTED, "interrupted")
    summary = {
        "eval_loss_before": outcome.eval_loss_before,
        "eval_loss_after": outcome.eval_loss_after,
        "train_seconds": round(outcome.seconds, 1),
        **outcome.extra,
    }
    if job.spec.output.register_as:  # before the success is recorded: a job: source may use the entry next
        try:
            print(register_job_result(job, run_dir, runs_root=runs_root, registry=registry), flush=True)
        except Exception as exc:  # noqa: BLE001 - the adapter is kept; the run says why it is not registered
            return _fail(finish, run_dir, FailureClass.MODEL, f"trained, but registering the result failed: {exc}")
    finish(JobState.SUCCEEDED, step=outcome.global_step, extra=summary)
    if outcome.eval_loss_before is not None and outcome.eval_loss_after is not None:
        print(f"held-out loss: {outcome.eval_loss_before:.4f} -> {outcome.eval_loss_after:.4f}", flush=True)
    print(f"succeeded in {outcome.seconds:.0f} s; adapter in {run_paths(run_dir).adapter}", flush=True)
    return RunResult(run_dir, JobState.SUCCEEDED)


def _fail(finish: Callable[..., object], run_dir: Path, reason: FailureClass, message: str) -> RunResult:
    finish(JobState.FAILED, reason=reason, error=message)
    print(f"failed ({reason.value}): {message}", file=sys.stderr, flush=True)
    return RunResult(run_dir, JobState.FAILED, reason.value, message)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _require_data_files(job: LoadedJob) -> None:
    """DataFileError for the first data file that is missing or not a file (hf: data sets are read later)."""
    from runner.data.records import DataFileError
    from runner.spec.data_source import is_hub_data

    for name in [*job.spec.data.train, *job.spec.data.eval]:
        path = job.resolve_path(name)
        if not is_hub_data(name) and not path.is_file():
            problem, fix = (
                ("is a folder", "list the data files inside it instead")
                if path.is_dir()
                else ("file not found", f"check the path (resolved to {path.absolute()})")
            )
            raise DataFileError(name, problem, fix)


def _data_fingerprint(job: LoadedJob) -> str:
    """sha256 over the data files' bytes, in order: a changed dataset shows in the manifest."""
    import hashlib

    digest = hashlib.sha256()
    for name in [*job.spec.data.train, *job.spec.data.eval]:
        digest.update(name.encode())
        digest_source(digest, job.resolve_data(name))
    return digest.hexdigest()
