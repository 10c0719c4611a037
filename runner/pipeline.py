"""Run one job through the pipeline: spec -> registry -> data -> train -> outputs.

This is what `runner run` (and the daemon's child process) calls. It owns the run folder, the
state transitions of the run, the manifest, resume, and the translation of failures into a
failure class with a message a user can act on. The training itself is the recipe's.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from runner.outputs.checkpoints import find_resume_point
from runner.outputs.manifest import build_manifest, write_manifest
from runner.outputs.metrics import MetricsLog
from runner.outputs.runs import find_interrupted_run, new_run_dir, run_paths
from runner.outputs.status import FailureClass, JobState, StatusFile, new_status
from runner.spec.loader import LoadedJob

if TYPE_CHECKING:
    from runner.train.context import RunContext, TrainOutcome


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
        status.transition(JobState.QUEUED)
        return previous, status, True
    run_dir = new_run_dir(runs_root, job.name)
    status = StatusFile(run_paths(run_dir).status)
    status.create(new_status(job.name, run_dir.name, spec_sha256=job.sha256))
    return run_dir, status, False


def run_job(job: LoadedJob, runs_root: Path, *, resume: bool | str = "auto", command: list[str] | None = None) -> RunResult:
    from runner.data.report import DataError
    from runner.registry.sources import SourceError, parse_source, resolve_source
    from runner.train.context import RunContext
    from runner.train.hooks import StopRequest
    from runner.train.model import ModelSetupError

    run_dir, status, resuming = prepare_run(job, runs_root, resume=resume)
    paths = run_paths(run_dir)
    resume_from = None
    if resuming:
        point, skipped = find_resume_point(paths.checkpoints)
        for info in skipped:
            print(f"skipping incomplete checkpoint {info.path.name}: {info.why_incomplete}", file=sys.stderr)
        if point is not None:
            resume_from = point.path
            print(f"resuming run {run_dir} from {point.path.name}", flush=True)
        else:
            print(f"resuming run {run_dir} from the start (no complete checkpoint)", flush=True)
    status.transition(JobState.RUNNING, pid=os.getpid(), resumed_from=str(resume_from) if resume_from else None)
    print(f"run {run_dir}", flush=True)

    stop = StopRequest()
    restore_signals = stop.install()
    try:
        recipe = _recipe_for(job.spec.model.kind)
        # relative local:/gguf: paths in a job file are relative to the file, like its data paths
        resolved = resolve_source(parse_source(job.spec.model.source, base_dir=job.path.parent))
        model_info = {
            "source": resolved.source,
            "revision": resolved.revision,
            "path": str(resolved.path),
            "files": resolved.files,
            "note": resolved.format_note,
        }
        write_manifest(paths.manifest, build_manifest(
            spec=job.spec.model_dump(mode="json"),
            spec_sha256=job.sha256,
            model=model_info,
            data_fingerprint=_data_fingerprint(job),
            seed=job.spec.train.seed,
            command=command or sys.argv,
            cwd=job.path.parent,
        ))
        with MetricsLog(paths.metrics) as metrics:
            if resume_from is not None:
                metrics.rewind_to(int(resume_from.name.rsplit("-", 1)[-1]))
            outcome = recipe(RunContext(
                job=job, run_dir=run_dir, model_path=resolved.path, model_info=model_info,
                status=status, metrics=metrics, stop=stop, resume_from=resume_from,
            ))
    except DataError as exc:
        return _fail(status, run_dir, FailureClass.DATA, str(exc))
    except (SourceError, ModelSetupError) as exc:
        return _fail(status, run_dir, FailureClass.CONFIG, str(exc))
    except MemoryError as exc:
        return _fail(status, run_dir, FailureClass.OOM, f"out of memory: {exc}")
    except KeyboardInterrupt:
        status.transition(JobState.INTERRUPTED, error="stopped before a checkpoint could be written")
        return RunResult(run_dir, JobState.INTERRUPTED, "interrupted", "stopped")
    except Exception as exc:  # a crash: keep the traceback for the user, in the run folder
        if _is_oom(exc):
            return _fail(status, run_dir, FailureClass.OOM, f"out of memory: {exc}")
        (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        return _fail(status, run_dir, FailureClass.CRASH, f"{type(exc).__name__}: {exc} (traceback in {run_dir / 'error.log'})")
    finally:
        restore_signals()

    if outcome.interrupted:
        status.transition(JobState.INTERRUPTED, error=f"{stop.signal_name}: checkpoint saved at step {outcome.global_step}")
        print(f"interrupted at step {outcome.global_step}; `runner run {job.path}` resumes it", flush=True)
        return RunResult(run_dir, JobState.INTERRUPTED, "interrupted")
    summary = {"eval_loss_before": outcome.eval_loss_before, "eval_loss_after": outcome.eval_loss_after,
               "train_seconds": round(outcome.seconds, 1), **outcome.extra}
    status.transition(JobState.SUCCEEDED, step=outcome.global_step, extra=summary)
    if outcome.eval_loss_before is not None and outcome.eval_loss_after is not None:
        print(f"held-out loss: {outcome.eval_loss_before:.4f} -> {outcome.eval_loss_after:.4f}", flush=True)
    print(f"succeeded in {outcome.seconds:.0f} s; adapter in {paths.adapter}", flush=True)
    return RunResult(run_dir, JobState.SUCCEEDED)


def _recipe_for(kind: str) -> Callable[[RunContext], TrainOutcome]:
    """The training recipe of a model kind, imported only when a job needs it."""
    if kind == "causal-lm":
        from runner.train.causal_lm import train_causal_lm

        return train_causal_lm
    from runner.train.model import ModelSetupError

    try:
        from runner.train.embedding import train_embedding
    except ImportError as exc:
        raise ModelSetupError(f"model.kind '{kind}' cannot be trained: {exc}") from exc
    return train_embedding


def _fail(status: StatusFile, run_dir: Path, reason: FailureClass, message: str) -> RunResult:
    status.transition(JobState.FAILED, reason=reason, error=message)
    print(f"failed ({reason.value}): {message}", file=sys.stderr, flush=True)
    return RunResult(run_dir, JobState.FAILED, reason.value, message)


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _data_fingerprint(job: LoadedJob) -> str:
    """sha256 over the data files' bytes, in order: a changed dataset shows in the manifest."""
    import hashlib

    digest = hashlib.sha256()
    for name in [*job.spec.data.train, *job.spec.data.eval]:
        path = job.resolve_path(name)
        digest.update(name.encode())
        try:
            with path.open("rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            digest.update(b"<missing>")
    return digest.hexdigest()
