"""The jobs folder -> runs: each settled new version of a job file becomes one run.

Filesystem events are only hints: after a debounce, at start-up, on SIGHUP and every
`rescan_every` seconds, the whole folder is rescanned and each file's bytes hashed. Policies
(documented in README.md, "runner watch"):

* a spec version is queued once: the daemon remembers per file the sha256 it last acted on;
* a newer version of a file cancels that file's runs that have not started ("superseded");
  a started one (running or interrupted) finishes, and the new version runs after it, unless
  `--on-change restart`, which stops the running version (it ends `cancelled`);
* a deleted file's runs that have not started are cancelled; started ones finish.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_write_bytes
from runner.outputs.attempts import Intent, cancel_waiting_run, never_started
from runner.outputs.runs import SPEC_SNAPSHOT, list_runs, new_run_dir, read_status, run_paths
from runner.outputs.status import FailureClass, JobState, StatusFile, format_utc, new_status, utc_now
from runner.spec import SpecIssue
from runner.watch.config import WatchConfig
from runner.watch.scan import Settler, SpecFile, SpecInfo, fallback_job_name, inspect_spec, scan_folder
from runner.watch.store import KnownFile, WatchState
from runner.watch.supervise import Supervisor, Tracked
from runner.watch.wakeup import Wakeups

__all__ = ["Intake"]


class Intake:
    def __init__(
        self,
        config: WatchConfig,
        jobs_dir: Path,
        state_dir: Path,
        state: WatchState,
        supervisor: Supervisor,
        log: Callable[[str], None],
    ) -> None:
        self.config = config
        self.jobs_dir = jobs_dir
        self.state_dir = state_dir
        self.state = state
        self.supervisor = supervisor
        self.log = log
        self.settler = Settler()
        self._infos: dict[str, SpecInfo] = {}  # path + sha256 -> inspection: a version is validated once
        self.last_scan = 0.0
        self.recheck_at: float | None = None  # a file due to settle, or the folder could not be read

    # ------------------------------------------------------------------ when

    def due(self, now: float, wakeups: Wakeups) -> bool:
        if wakeups.rescan or now - self.last_scan >= self.config.rescan_every:
            return True
        if self.recheck_at is not None and now >= self.recheck_at:
            return True
        return wakeups.events_settled(now, self.config.debounce, self.config.max_delay)

    def deadlines(self, wakeups: Wakeups) -> list[float]:
        found = [
            self.last_scan + self.config.rescan_every,
            self.recheck_at,
            wakeups.events_deadline(self.config.debounce, self.config.max_delay),
        ]
        return [deadline for deadline in found if deadline is not None]

    # ------------------------------------------------------------------ scanning

    def scan(self, now: float, wakeups: Wakeups) -> None:
        """Compare the folder with what was last acted on; queue settled new versions."""
        wakeups.clear_events()
        self.last_scan = now
        self.recheck_at = None
        try:
            files = scan_folder(self.jobs_dir)
        except OSError as exc:
            self.log(f"cannot read the jobs folder ({exc}); nothing changed, trying again in 5 s")
            self.recheck_at = now + 5.0
            return
        self.settler.keep_only(set(files))
        owners = {known.job: path for path, known in sorted(self.state.files.items()) if path in files and known.valid}
        for path, spec in sorted(files.items()):
            known = self.state.files.get(path)
            if known is not None and known.sha256 == spec.sha256:
                self.settler.forget(path)
                continue
            info = self._inspect(spec)
            left = self.settler.wait(
                path, spec.sha256, now, self.config.settle if info.valid else self.config.invalid_grace
            )
            if left > 0:
                self.recheck_at = min(self.recheck_at or now + left, now + left)
                continue
            self.settler.forget(path)
            owner = owners.get(info.job)
            if owner is not None and owner != path:
                # Never record under a name another file holds: it would become that job's latest run.
                errors = (
                    (_conflict(self.jobs_dir / path, info.job, self.jobs_dir / owner),) if info.valid else info.errors
                )
                name = fallback_job_name(b"", Path(path).stem)
                info = SpecInfo(job=name if owners.get(name, path) == path else f"{name[:56]}-invalid", errors=errors)
            elif info.valid:
                owners[info.job] = path
            self._accept(spec, info, known)
        for path in sorted(set(self.state.files) - set(files)):
            self._deleted(path)

    def _inspect(self, spec: SpecFile) -> SpecInfo:
        key = f"{spec.path}\0{spec.sha256}"  # the path matters too: the job name defaults to the stem
        info = self._infos.get(key)
        if info is None:
            info = inspect_spec(self.jobs_dir, spec)
            if len(self._infos) > 4096:
                self._infos.clear()
            self._infos[key] = info
        return info

    # ------------------------------------------------------------------ new versions

    def _accept(self, spec: SpecFile, info: SpecInfo, known: KnownFile | None) -> None:
        """A settled new version of a file: one run for it (queued or invalid), older waiting ones superseded."""
        if known is None and self._adopt_existing(spec, info):
            return
        if known is not None:
            self._supersede(spec.path, spec.sha256)
        seq = self.state.take_seq()
        run_dir = self._create_run(spec, info, seq)
        self.state.files[spec.path] = KnownFile(
            spec.sha256, info.job, run_dir.name, format_utc(utc_now()), seq, info.valid
        )
        if info.valid:
            self.supervisor.track(
                Tracked(run_dir, info.job, spec.path, spec.sha256, seq, info.priority, info.depends_on)
            )
            self.log(
                f"queued {info.job} ({spec.path} {spec.sha256[:12]}, priority {info.priority}) as run {run_dir.name}"
            )
        else:
            self.log(f"invalid {spec.path} ({len(info.errors)} problem(s)); recorded as run {info.job}/{run_dir.name}")

    def _adopt_existing(self, spec: SpecFile, info: SpecInfo) -> bool:
        """A file the daemon has no memory of, whose job's newest run already ran this version
        (state.json lost, or `runner run` ran it): remember that run instead of running it again."""
        runs = list_runs(self.supervisor.runs_root, info.job)
        status = read_status(runs[-1]) if runs else None
        if status is None or status.spec_sha256 != spec.sha256:
            return False
        recorded = status.extra.get("watch")
        watch: dict[str, Any] = recorded if isinstance(recorded, dict) else {}
        seq = int(watch.get("seq", 0)) or self.state.take_seq()
        self.state.files[spec.path] = KnownFile(
            spec.sha256, info.job, runs[-1].name, format_utc(status.created), seq, status.state is not JobState.INVALID
        )
        self.state.dirty = True
        self.log(
            f"{spec.path}: this version already has run {info.job}/{runs[-1].name} ({status.state}); not queued again"
        )
        return True

    def _create_run(self, spec: SpecFile, info: SpecInfo, seq: int) -> Path:
        run_dir = new_run_dir(self.supervisor.runs_root, info.job)
        atomic_write_bytes(run_dir / SPEC_SNAPSHOT, spec.data)
        watch = {
            "state_dir": str(self.state_dir),
            "jobs_dir": str(self.jobs_dir),
            "spec": spec.path,
            "seq": seq,
            "priority": info.priority,
            "depends_on": list(info.depends_on),
        }
        if info.valid:
            status = new_status(info.job, run_dir.name, spec_sha256=spec.sha256, extra={"watch": watch})
        else:
            status = new_status(
                info.job,
                run_dir.name,
                state=JobState.INVALID,
                reason=FailureClass.CONFIG,
                error="\n".join(str(issue) for issue in info.errors),
                spec_sha256=spec.sha256,
                extra={"watch": watch, "errors": [issue.to_dict() for issue in info.errors]},
            )
        StatusFile(run_paths(run_dir).status).create(status)
        return run_dir

    def _supersede(self, path: str, sha256: str) -> None:
        """A newer version of `path` arrived: cancel its runs that have not started (all waiting
        ones with --on-change restart, which also stops the running one)."""
        restart = self.config.on_change == "restart"
        why = f"superseded by a newer version of {path} ({sha256[:12]})"
        for tracked in self.supervisor.runs_of_file(path):
            status = read_status(tracked.run_dir)  # None if unreadable: skipped, not fatal
            if status is None:
                continue
            fresh = never_started(status)
            active = self.supervisor.active_for(tracked)
            if active is not None:  # an attempt works on it (a pending Slurm job has not started either)
                if (fresh or restart) and active.attempt.intent is None:
                    self.supervisor.stop(
                        active, Intent.SUPERSEDE, f"stopping it: {why}" + ("" if fresh else " (--on-change restart)")
                    )
            elif status.state in (JobState.QUEUED, JobState.INTERRUPTED) and (fresh or restart):
                cancel_waiting_run(
                    tracked.status_file, why + (" before it started" if fresh else " (--on-change restart)")
                )
                self.supervisor.forget(tracked, why)

    def _deleted(self, path: str) -> None:
        """A deleted file: its runs that never started are cancelled; started ones finish."""
        for tracked in self.supervisor.runs_of_file(path):
            status = read_status(tracked.run_dir)  # None if unreadable: skipped, not fatal
            if status is None or not never_started(status):
                continue
            active = self.supervisor.active_for(tracked)
            if active is not None:  # submitted but not started (a pending Slurm job): stop it
                if active.attempt.intent is None:
                    self.supervisor.stop(active, Intent.DROP)
            elif status.state is JobState.QUEUED:
                cancel_waiting_run(tracked.status_file, f"its job file {path} was deleted before it started")
                self.supervisor.forget(tracked, "dropped: its job file was deleted")
        del self.state.files[path]
        self.state.dirty = True
        self.log(f"{path} deleted")


def _conflict(path: Path, job: str, owner: Path) -> SpecIssue:
    return SpecIssue(
        str(path), 1, 1, "name", f"job name '{job}' is already used by {owner}; give one of them a distinct `name`"
    )
