"""What each endpoint does, as plain functions over the settings (no FastAPI here).

Each reuses the command that already does the job: `status_rows` (runner status) for the jobs
table, `read_status` / `MetricsLog` for a run, `parse_job` (runner validate) for a submitted
file, `cancel_runs` (runner cancel) for a cancel, `check_data_files` (runner data validate) for
a dataset. Failures are `ApiError`s carrying the HTTP status and a message that says what to fix.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, get_args

from runner.api.confine import OutsideRoots, confine, job_paths_outside
from runner.api.settings import ApiSettings
from runner.fsutil import atomic_write_bytes
from runner.outputs.metrics import MetricsFormatError, MetricsLog
from runner.outputs.runs import is_pid_alive, list_runs, read_status, run_paths
from runner.outputs.status import JobState, Status
from runner.spec import JobSpecError, SpecIssue, parse_job
from runner.spec.model import CANONICAL_FIELDS, DataFormat
from runner.watch.scan import fallback_job_name, scan_folder
from runner.watch.store import SPEC_SNAPSHOT

__all__ = [
    "ApiError",
    "JOB_NAME",
    "cancel_job",
    "finite",
    "job_detail",
    "job_metrics",
    "job_rows",
    "readiness",
    "run_spec_text",
    "submit_job",
    "validate_dataset_paths",
    "validate_dataset_upload",
]

JOB_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
RUN_ID = r"^\d{8}-\d{6}-[0-9a-f]{4}$"
DATA_FORMATS: tuple[str, ...] = get_args(DataFormat)
MAX_BAD_LISTED = 1000
_WRITE_LOCK = threading.Lock()  # one submission at a time decides and writes its file


class ApiError(Exception):
    def __init__(self, status: int, detail: str, *, errors: list[dict[str, Any]] | None = None,
                 extra: Mapping[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.errors = errors
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.detail, **self.extra}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


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
    daemon = {"ok": held, "pid": pid if held else None, "state_dir": str(settings.state_dir),
              "detail": "the daemon holds the lock" if held else
              f"no `runner watch {settings.jobs_dir}` holds {lock.path}: jobs are not being run"}
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
    ready = daemon["ok"] and queue["ok"]
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
    return finite({
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
    })


def _time(value: Any) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


def job_rows(settings: ApiSettings) -> list[tuple[Path, Status]]:
    from runner.outputs.runs import status_rows

    return status_rows(settings.runs_root)


def pick_run(settings: ApiSettings, name: str, run_id: str | None = None) -> tuple[Path, Status, list[Path]]:
    """The newest run of the job (or the one asked for); 404 when there is none."""
    runs = list_runs(settings.runs_root, name)
    if not runs:
        raise ApiError(404, f"no runs of job '{name}' under {settings.runs_root}; submit it with POST /jobs "
                            "or put its file in the jobs folder")
    if run_id is None:
        for run in reversed(runs):
            status = read_status(run)
            if status is not None:
                return run, status, runs
        raise ApiError(404, f"no readable status.json in the runs of job '{name}'")
    run = next((r for r in runs if r.name == run_id), None)
    status = read_status(run) if run is not None else None
    if run is None or status is None:
        raise ApiError(404, f"job '{name}' has no run '{run_id}' (runs: {', '.join(r.name for r in runs)})")
    return run, status, runs


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
    spec_model = spec.get("model") if isinstance(spec.get("model"), dict) else {}
    resolved = manifest.get("model") if isinstance(manifest.get("model"), dict) else {}
    model = {
        "source": resolved.get("source") or spec_model.get("source"),
        "kind": spec_model.get("kind", "causal-lm" if spec_model else None),
        "revision": resolved.get("revision"),
        "alias": resolved.get("alias"),
        "fine_tuned_from": resolved.get("fine_tuned_from"),
    }
    adapter = dict(status.adapter) if status.adapter else (spec.get("adapter") if isinstance(spec.get("adapter"), dict)
                                                           else None)
    watch = status.extra.get("watch") if isinstance(status.extra.get("watch"), dict) else {}
    errors = status.extra.get("errors") if isinstance(status.extra.get("errors"), list) else []
    others = []
    for other in runs:
        other_status = read_status(other)
        if other_status is not None:
            others.append({"run_id": other.name, "state": str(other_status.state),
                           "created": _time(other_status.created), "finished": _time(other_status.finished)})
    return finite({
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
    })


def job_metrics(settings: ApiSettings, name: str, since: int | None = None,
                run_id: str | None = None) -> dict[str, Any]:
    run, _, _ = pick_run(settings, name, run_id)
    log = MetricsLog(run_paths(run).metrics)
    try:
        records = log.read(since_step=since)
    except MetricsFormatError as exc:
        raise ApiError(500, f"{exc}; the metrics log is damaged (only its last line may be torn by a crash)") from None
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    return finite({"job": name, "run_id": run.name, "since": since, "last_step": max(steps) if steps else since,
                   "records": records})


# ------------------------------------------------------------------------------ submitting


def _issue_dicts(issues: list[SpecIssue]) -> list[dict[str, Any]]:
    return [issue.to_dict() for issue in issues]


def _target_file(settings: ApiSettings, name: str, named_inside: bool) -> Path:
    """Where a submitted job goes: the file that already defines the job, else `<name>.toml`.

    409 when that would clash: another file defines the job under a different file name while
    the submitted text has no `name` of its own (its job name would become that file's stem),
    `<name>.toml` belongs to another job, or the folder already has two files for this job.
    """
    jobs_dir = settings.jobs_dir
    owners = sorted(rel for rel, spec in scan_folder(jobs_dir).items()
                    if fallback_job_name(spec.data, Path(rel).stem) == name)
    if len(owners) > 1:
        raise ApiError(409, f"job '{name}' is defined by several files ({', '.join(owners)}); keep one of them")
    if owners:
        owner = owners[0]
        if named_inside or Path(owner).stem == name:
            return jobs_dir / owner
        raise ApiError(409, f"job '{name}' is defined by {owner}; add name = \"{name}\" to the submitted file "
                            "so it can replace that file's content")
    target = jobs_dir / f"{name}.toml"
    if target.exists():
        other = fallback_job_name(target.read_bytes(), name)
        raise ApiError(409, f"{target.name} in the jobs folder defines job '{other}', not '{name}'; "
                            "choose another name")
    return target


def submit_job(settings: ApiSettings, data: bytes, name: str | None) -> tuple[int, dict[str, Any]]:
    """Validate a job file like `runner validate`, then write it atomically into the jobs folder.

    Idempotent: the same bytes again change nothing (200); a new or changed file is written
    (201) and the daemon queues it as it queues any file it finds there.
    """
    import hashlib

    try:
        raw: dict[str, Any] | None = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        raw = None  # parse_job below reports where
    declared = raw.get("name") if raw is not None and isinstance(raw.get("name"), str) else None
    if declared is not None and name is not None and declared != name:
        raise ApiError(422, f"the file says name = \"{declared}\" but the request asks for job '{name}'; "
                            "drop ?name= or make them agree")
    job_name = declared or name
    if job_name is None and raw is not None:
        raise ApiError(422, "the job has no name: set name = \"...\" in the file or pass ?name=NAME")
    if name is not None and not re.fullmatch(JOB_NAME, name):
        raise ApiError(422, f"?name={name!r} is not a valid job name (letters, digits, '.', '_', '-'; "
                            "starting with a letter or digit; at most 64)")
    if job_name is not None and re.fullmatch(JOB_NAME, job_name):
        target = _target_file(settings, job_name, declared is not None)
    else:  # unnamed and unparseable, or an invalid name: parse_job says what is wrong, where
        target = settings.jobs_dir / f"{job_name if job_name and '/' not in job_name else 'submitted'}.toml"
    display = target.relative_to(settings.jobs_dir.parent).as_posix()
    try:
        job = parse_job(data, display=display, default_name=job_name or "submitted", path=target)
    except JobSpecError as exc:
        raise ApiError(422, f"{display} is not a valid job file ({len(exc.issues)} problem(s)); nothing was written",
                       errors=_issue_dicts(exc.issues)) from None
    outside = job_paths_outside(job, data.decode("utf-8"), display, settings.data_roots)
    if outside:
        raise ApiError(403, f"{display} names paths outside the allowed data roots; nothing was written",
                       errors=_issue_dicts(outside))
    sha256 = hashlib.sha256(data).hexdigest()
    with _WRITE_LOCK:
        try:
            unchanged = target.read_bytes() == data
        except FileNotFoundError:
            unchanged = False
        if not unchanged:
            atomic_write_bytes(target, data)
    existing = None
    for run in reversed(list_runs(settings.runs_root, job.name)):
        status = read_status(run)
        if status is not None and status.spec_sha256 == sha256:
            existing = {"run_id": run.name, "state": str(status.state)}
            break
    body = {"job": job.name, "file": display, "sha256": sha256, "created": not unchanged,
            "status_url": f"/jobs/{job.name}", "existing_run": existing,
            "detail": ("unchanged: the jobs folder already holds this exact file" if unchanged else
                       "written; the daemon queues it once it sees the file")}
    return (200 if unchanged else 201), body


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
    return 202, {"job": name, "requested": [run.name for run in outcome.targets], "messages": messages,
                 "runs": runs, "complete": outcome.code == 0}


# -------------------------------------------------------------------------------- datasets


def _check_format(data_format: str, fields: Mapping[str, Any] | None) -> dict[str, str]:
    if data_format not in DATA_FORMATS:
        raise ApiError(422, f"format {data_format!r} is not one of: {', '.join(DATA_FORMATS)}")
    mapping: dict[str, str] = {}
    for key, value in (fields or {}).items():
        if key not in CANONICAL_FIELDS or not isinstance(value, str) or not value:
            raise ApiError(422, f"fields: {key!r} -> {value!r} is not a mapping of a canonical field "
                                f"({', '.join(CANONICAL_FIELDS)}) to a field name of your records")
        mapping[key] = value
    return mapping


def _report(report: dict[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """The check's report with locations as data; temp paths of uploads shown as the upload's name."""
    from runner.data.report import in_file_order

    bad = in_file_order(report["bad_records"], [str(f) for f in report["files"]])
    listed = []
    for record in bad[:MAX_BAD_LISTED]:
        location = record.location
        file = names.get(location.file, location.file)
        listed.append({"file": file, "line": location.line, "index": location.index, "reason": record.reason,
                       "location": str(location).replace(location.file, file, 1)})
    return {"files": [names.get(str(f), str(f)) for f in report["files"]], "format": report["format"],
            "format_reason": report["format_reason"], "records": report["records_read"],
            "records_ok": report["records_ok"], "bad_count": len(bad), "bad_records": listed,
            "bad_records_truncated": len(bad) > MAX_BAD_LISTED, "valid": not bad}


def _run_check(files: list[str], data_format: str, fields: dict[str, str], names: Mapping[str, str]) -> dict[str, Any]:
    from runner.data.check import check_data_files
    from runner.data.report import DataError

    try:
        report = check_data_files(files, data_format=data_format, fields=fields or None)
    except DataError as exc:
        message = str(exc)
        for temp, shown in names.items():
            message = message.replace(temp, shown)
        raise ApiError(422, message) from None
    return _report(report, names)


def validate_dataset_paths(settings: ApiSettings, paths: list[str], data_format: str = "auto",
                           fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check data files on the server; relative paths are taken from the first data root."""
    mapping = _check_format(data_format, fields)
    if not paths:
        raise ApiError(422, "name at least one data file in \"path\"")
    files = []
    for given in paths:
        candidate = Path(given)
        if not candidate.is_absolute():
            candidate = settings.data_roots[0] / candidate
        try:
            resolved = confine(candidate, settings.data_roots, shown=given)
        except OutsideRoots as exc:
            raise ApiError(403, str(exc)) from None
        if not resolved.is_file():
            raise ApiError(404, f"{given}: no such file under {settings.data_roots[0]}")
        files.append(str(resolved))
    return _run_check(files, data_format, mapping, {})


def _safe_name(filename: str | None) -> str:
    base = Path((filename or "").replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).lstrip(".")
    return cleaned[:100] or "upload.jsonl"


def validate_dataset_upload(settings: ApiSettings, filename: str | None, content: IO[bytes], data_format: str = "auto",
                            fields: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Check an uploaded data file (its suffix tells JSON from JSONL, as for files on disk)."""
    mapping = _check_format(data_format, fields)
    folder = Path(tempfile.mkdtemp(prefix="runner-api-upload-"))
    try:
        name = _safe_name(filename)
        path = folder / name
        with open(path, "wb") as out:
            shutil.copyfileobj(content, out, 1 << 20)
        return _run_check([str(path)], data_format, mapping, {str(path): filename or name})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
