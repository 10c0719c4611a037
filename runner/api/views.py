"""What each endpoint does, as plain functions over the settings (no FastAPI here).

Each reuses the command that already does the job: `status_rows` (runner status) for the jobs
table, `read_status` / `MetricsLog` for a run, `cancel_runs` (runner cancel) for a cancel.
Submitting a job is `runner.api.submit`, checking a data file `runner.api.datacheck`. Failures
are `ApiError`s carrying the HTTP status and a message that says what to fix.
"""

from __future__ import annotations

import json
import math
import os
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.api.errors import ApiError
from runner.api.settings import ApiSettings
from runner.api.submit import JOB_NAME
from runner.outputs.metrics import MetricsFormatError, MetricsLog
from runner.outputs.runs import is_pid_alive, list_runs, read_status, run_paths
from runner.outputs.status import JobState, Status
from runner.watch.store import SPEC_SNAPSHOT

__all__ = [
    "JOB_NAME",
    "ApiError",
    "cancel_job",
    "finite",
    "job_detail",
    "job_metrics",
    "job_rows",
    "jobs_table",
    "readiness",
    "run_spec_text",
]

RUN_ID = r"^\d{8}-\d{6}-[0-9a-f]{4}$"


def finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become the strings "NaN", "Infinity", "-Infinity"
    (a NaN loss is exactly what a user needs to see, so it is not turned into null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


# ---------------------------------------------------------------------------------- health


def readiness(settings: ApiSettings) -> tuple[bool, dict[str, Any]]:
    """Ready when a daemon holds the jobs folder's lock and the queue and runs can be read."""
    from runner.watch.store import DaemonLock

    lock = DaemonLock(settings.state_dir)
    holder = lock.holder() or {}
    pid = holder.get("pid")
    held = False
    if isinstance(pid, int) and is_pid_alive(pid):
        if lock.try_acquire():  # daemon.json is stale (its pid now names another process)
            lock.release()
        else:
            held = True
    daemon = {
        "ok": held,
        "pid": pid if held else None,
        "state_dir": str(settings.state_dir),
        "detail": "the daemon holds the lock"
        if held
        else f"no `runner watch {settings.jobs_dir}` holds {lock.path}: jobs are not being run",
    }
    queue: dict[str, Any] = {"ok": True, "runs_root": str(settings.runs_root)}
    try:
        state_file = settings.state_dir / "state.json"
        if state_file.exists():
            state = json.loads(state_file.read_text(encoding="utf-8"))
            queue["queued"] = len(state.get("queue") or [])
        from runner.outputs.runs import status_rows

        queue["jobs"] = len({status.job for _, status in status_rows(settings.runs_root)})
    except (OSError, ValueError, AttributeError) as exc:
        queue.update(ok=False, detail=f"cannot read the queue: {exc}")
    ready = bool(daemon["ok"] and queue["ok"])
    return ready, {"ready": ready, "checks": {"daemon": daemon, "queue": queue}}


# ------------------------------------------------------------------------------------ jobs


def _progress(status: Status) -> float | None:
    if status.step is None or not status.total_steps:
        return None
    return max(0.0, min(1.0, status.step / status.total_steps))


def _first_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[0] if lines else None


def run_summary(run_dir: Path, status: Status) -> dict[str, Any]:
    """One row of the jobs table: the same facts `runner status` shows."""
    eval_loss = status.extra.get("eval_loss")
    return finite(
        {
            "job": status.job,
            "run_id": run_dir.name,
            "state": str(status.state),
            "reason": None if status.reason is None else str(status.reason),
            "error_summary": _first_line(status.error),
            "waiting": status.extra.get("waiting") if status.state is JobState.QUEUED else None,
            "attempt": status.attempt,
            "step": status.step,
            "total_steps": status.total_steps,
            "progress": _progress(status),
            "epoch": status.epoch,
            "loss": status.loss,
            "eval_loss": eval_loss if isinstance(eval_loss, (int, float)) else None,
            "eta_seconds": status.eta_seconds if status.state is JobState.RUNNING else None,
            "tokens_per_second": status.tokens_per_second,
            "created": _time(status.created),
            "started": _time(status.started),
            "updated": _time(status.updated),
            "finished": _time(status.finished),
        }
    )


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def _runs_fingerprint(runs_root: Path) -> tuple[Any, ...]:
    """What the jobs table is made of, by stat only: every run folder and its status.json's identity
    (a status is replaced by a rename, so a change shows in its inode, size or mtime)."""
    found: list[Any] = []
    try:
        jobs = sorted(os.scandir(runs_root), key=lambda e: e.name)
    except OSError:
        return ()
    for job in jobs:
        if job.name.startswith(".") or not job.is_dir():
            continue
        try:
            runs = sorted(os.scandir(job.path), key=lambda e: e.name)
        except OSError:
            continue
        for run in runs:
            try:
                st = os.stat(os.path.join(run.path, "status.json"))
                found.append((job.name, run.name, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                found.append((job.name, run.name))
    return tuple(found)


class _RowsCache:
    """The jobs table's rows, parsed again only when a run or a status file changed: the table is
    asked for by every client every few seconds, and reading every status.json each time costs
    milliseconds per request on a folder of a few dozen jobs."""

    def __init__(self) -> None:
        self._cached: dict[Path, tuple[tuple[Any, ...], list[tuple[Path, Status]], list[dict[str, Any]]]] = {}
        self._lock = threading.Lock()

    def get(self, runs_root: Path) -> tuple[list[tuple[Path, Status]], list[dict[str, Any]]]:
        from runner.outputs.runs import status_rows

        key = _runs_fingerprint(runs_root)
        with self._lock:
            hit = self._cached.get(runs_root)
        if hit is not None and hit[0] == key:
            return hit[1], hit[2]
        rows = status_rows(runs_root)
        summaries = [run_summary(run, status) for run, status in rows]
        with self._lock:
            self._cached[runs_root] = (key, rows, summaries)
        return rows, summaries


_ROWS = _RowsCache()


def job_rows(settings: ApiSettings) -> list[tuple[Path, Status]]:
    """`runner status`'s rows: each job's newest run and any other run still pending."""
    return _ROWS.get(settings.runs_root)[0]


def jobs_table(settings: ApiSettings) -> list[dict[str, Any]]:
    """GET /jobs: `run_summary` of each of `job_rows`."""
    return _ROWS.get(settings.runs_root)[1]


def pick_run(settings: ApiSettings, name: str, run_id: str | None = None) -> tuple[Path, Status, list[Path]]:
    """The newest run of the job (or the one asked for); 404 when there is none."""
    runs = list_runs(settings.runs_root, name)
    if not runs:
        raise ApiError(
            404,
            f"no runs of job '{name}' under {settings.runs_root}; submit it with POST /jobs "
            "or put its file in the jobs folder",
        )
    if run_id is None:
        for run in reversed(runs):
            status = read_status(run)
            if status is not None:
                return run, status, runs
        raise ApiError(404, f"no readable status.json in the runs of job '{name}'")
    asked = next((r for r in runs if r.name == run_id), None)
    status = read_status(asked) if asked is not None else None
    if asked is None or status is None:
        raise ApiError(404, f"job '{name}' has no run '{run_id}' (runs: {', '.join(r.name for r in runs)})")
    return asked, status, runs


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def run_spec(run_dir: Path) -> dict[str, Any] | None:
    """The job file the run trains: the resolved spec of its manifest, else its queued snapshot."""
    manifest = _read_json(run_paths(run_dir).manifest)
    if manifest is not None and isinstance(manifest.get("spec"), dict):
        return manifest["spec"]
    try:
        return tomllib.loads((run_dir / SPEC_SNAPSHOT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_spec_text(run_dir: Path) -> tuple[str | None, str]:
    """The spec as the user wrote it (the daemon's snapshot), else as resolved in the manifest."""
    try:
        return (run_dir / SPEC_SNAPSHOT).read_text(encoding="utf-8", errors="replace"), "the queued job file"
    except OSError:
        pass
    manifest = _read_json(run_paths(run_dir).manifest)
    if manifest is not None and isinstance(manifest.get("spec"), dict):
        import tomli_w

        try:
            return tomli_w.dumps(_without_none(manifest["spec"])), "the resolved spec (manifest.json)"
        except (TypeError, ValueError):
            return json.dumps(manifest["spec"], indent=2), "the resolved spec (manifest.json)"
    return None, "no spec recorded"


def _without_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_none(v) for v in value if v is not None]
    return value


def job_detail(settings: ApiSettings, name: str, run_id: str | None = None) -> dict[str, Any]:
    """A run's status with what it trains: model, adapter / LoRA settings, attempt, reason, errors."""
    run, status, runs = pick_run(settings, name, run_id)
    spec = run_spec(run) or {}
    manifest = _read_json(run_paths(run).manifest) or {}
    spec_model = found if isinstance(found := spec.get("model"), dict) else {}
    resolved = pinned if isinstance(pinned := manifest.get("model"), dict) else {}
    model = {
        "source": resolved.get("source") or spec_model.get("source"),
        "kind": spec_model.get("kind", "causal-lm" if spec_model else None),
        "revision": resolved.get("revision"),
        "alias": resolved.get("alias"),
        "fine_tuned_from": resolved.get("fine_tuned_from"),
    }
    adapter = (
        dict(status.adapter)
        if status.adapter
        else (spec.get("adapter") if isinstance(spec.get("adapter"), dict) else None)
    )
    watch = found_watch if isinstance(found_watch := status.extra.get("watch"), dict) else {}
    errors = status.extra.get("errors") if isinstance(status.extra.get("errors"), list) else []
    others = []
    for other in runs:
        other_status = read_status(other)
        if other_status is not None:
            others.append(
                {
                    "run_id": other.name,
                    "state": str(other_status.state),
                    "created": _time(other_status.created),
                    "finished": _time(other_status.finished),
                }
            )
    return finite(
        {
            **run_summary(run, status),
            "model": model,
            "adapter": adapter,
            "trainable_params": status.trainable_params,
            "total_params": status.total_params,
            "error": status.error,
            "errors": errors,
            "spec_file": watch.get("spec"),
            "spec_sha256": status.spec_sha256,
            "resumed_from": status.resumed_from,
            "data": status.extra.get("data"),
            "runs": others,
            "status": status.to_dict(),
        }
    )


def job_metrics(
    settings: ApiSettings, name: str, since: int | None = None, run_id: str | None = None
) -> dict[str, Any]:
    run, _, _ = pick_run(settings, name, run_id)
    log = MetricsLog(run_paths(run).metrics)
    try:
        records = log.read(since_step=since)
    except MetricsFormatError as exc:
        raise ApiError(500, f"{exc}; the metrics log is damaged (only its last line may be torn by a crash)") from None
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    return finite(
        {
            "job": name,
            "run_id": run.name,
            "since": since,
            "last_step": max(steps) if steps else since,
            "records": records,
        }
    )


# ------------------------------------------------------------------------------ cancelling


def cancel_job(settings: ApiSettings, name: str) -> tuple[int, dict[str, Any]]:
    """`runner cancel NAME`: 202 with what was done, 404 without runs, 409 with nothing pending."""
    from runner.watch.cancel import cancel_runs

    if not list_runs(settings.runs_root, name):
        raise ApiError(404, f"no runs of job '{name}' under {settings.runs_root}")
    messages: list[str] = []
    outcome = cancel_runs(name, settings.runs_root, say=messages.append, warn=messages.append)
    if outcome.pending == 0:
        raise ApiError(409, messages[0] if messages else f"nothing to cancel for job '{name}'")
    runs = []
    for run in list_runs(settings.runs_root, name):
        status = read_status(run)
        if status is not None and (run in outcome.targets or status.state is JobState.CANCELLED):
            runs.append({"run_id": run.name, "state": str(status.state)})
    return 202, {
        "job": name,
        "requested": [run.name for run in outcome.targets],
        "messages": messages,
        "runs": runs,
        "complete": outcome.code == 0,
    }
