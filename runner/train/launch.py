"""`runner run` with resources.nproc > 1: the recipe runs in torchrun workers; this process owns the run.

The parent (the `runner run` process, or the daemon's child) has made the run folder, set the
run running and written the manifest before it calls `launch_workers`. It then:
- checks that the job can run here (device, backend, QLoRA support) before any worker starts;
- starts `python -m torch.distributed.run --standalone --nproc-per-node N -m runner.train.launch
  RUN/.workers/launch.json` in its own session (so a terminal's Ctrl-C reaches only the parent),
  with gloo on the CPU and nccl on GPUs;
- forwards its first SIGTERM/SIGINT as SIGTERM to the workers (straight to them, so torchrun's
  30-second shutdown deadline does not cut a checkpoint short; to torchrun itself if they cannot
  be found) and remembers that it did: that exit is an interruption, not a failure;
- a second Ctrl-C kills the process tree at once (no checkpoint), as in a single process;
- maps the end to what the single-process recipe would have returned or raised: rank 0's
  outcome, or the error a worker reported (data, config, out of memory, crash).

The workers (`worker_main`, rank = $RANK) run the same recipe with the same RunContext, except
that only rank 0 gets the run's status and metrics files; the other ranks get writers that write
nothing. If the parent dies (even by SIGKILL), torchrun and the workers die with it, like a single
process would; the run's status still says running with a dead pid, and the next start resumes it.
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from runner.fsutil import atomic_write_json
from runner.outputs.metrics import MetricsLog
from runner.outputs.runs import run_paths
from runner.outputs.status import Status, StatusFile
from runner.train import distributed
from runner.train.context import RunContext, TrainOutcome
from runner.train.health import TrainingDiverged
from runner.train.model import DeviceChoice, ModelSetupError, choose_device
from runner.train.recipes import Recipe

WORKERS = ".workers"  # inside the run folder: launch.json (parent), outcome.json (rank 0), errors
LAUNCH_FILE = "launch.json"
OUTCOME_FILE = "outcome.json"
_PR_SET_PDEATHSIG = 1


class WorkerCrashed(RuntimeError):
    """A worker died of an unexpected error (its traceback is attached as a note)."""


# ------------------------------------------------------------------------------------ parent


def launch_workers(ctx: RunContext, recipe: Recipe) -> TrainOutcome:
    """Run `recipe` in resources.nproc torchrun workers and return rank 0's outcome."""
    spec = ctx.job.spec
    nproc = spec.resources.nproc
    if not recipe.distributed:
        raise ModelSetupError(
            f"resources.nproc > 1 is not supported for model.kind '{spec.model.kind}' yet; set resources.nproc = 1"
        )
    device = choose_device(spec.model, spec.resources, spec.adapter).device  # fails here, before any worker starts
    backend = _backend(device)
    workers_dir = ctx.run_dir / WORKERS
    if workers_dir.exists():  # an earlier attempt's reports must not be read as this one's
        shutil.rmtree(workers_dir)
    workers_dir.mkdir(parents=True)
    launch = {
        "job_path": str(ctx.job.path.absolute()),
        "spec_sha256": ctx.job.sha256,
        "run_dir": str(ctx.run_dir.absolute()),
        "model_path": str(ctx.model_path),
        "model_info": ctx.model_info,
        "resume_from": str(ctx.resume_from) if ctx.resume_from else None,
        "plain_logs": ctx.plain_logs,
        "recipe": recipe.target,
        "backend": backend,
    }
    atomic_write_json(workers_dir / LAUNCH_FILE, launch)
    threads = spec.resources.threads or max(1, _cpus_here() // nproc)
    if spec.resources.nodes > 1:  # one torchrun per node (srun), rendezvous on the first node
        command = multinode_command(
            sys.executable,
            spec.resources.nodes,
            nproc,
            workers_dir / LAUNCH_FILE,
            **_slurm_rendezvous(spec.resources.nodes),
        )
    else:
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={nproc}",
            "--max-restarts=0",
            "-m",
            "runner.train.launch",
            str(workers_dir / LAUNCH_FILE),
        ]
    where = f" on each of {spec.resources.nodes} nodes" if spec.resources.nodes > 1 else ""
    print(
        f"launching {nproc} processes{where} with torchrun ({backend}, {spec.resources.strategy}, "
        f"{threads} thread(s) each)",
        flush=True,
    )
    proc = subprocess.Popen(command, env=_worker_env(threads), start_new_session=True, preexec_fn=_die_with_parent)
    forwarded = False
    try:
        while proc.poll() is None:
            if ctx.stop.requested and not forwarded:
                _forward_stop(proc.pid)
                forwarded = True
            time.sleep(0.1)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, without a checkpoint
        _kill_tree(proc)
        raise
    outcome = _collect(workers_dir, proc.returncode, forwarded)
    if outcome.interrupted and ctx.stop.signal_name is None:  # the workers were signalled, not us
        ctx.stop.signal_name = "a signal to the workers"
    return outcome


def multinode_command(
    python: str,
    nodes: int,
    nproc: int,
    launch_file: Path,
    *,
    head: str,
    port: int,
    rdzv_id: str,
    cpus_per_task: str | None = None,
) -> list[str]:
    """srun starts one torchrun agent per node of the allocation; the agents meet at the c10d
    rendezvous on the first node (where this process, the batch script's, runs)."""
    srun = ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    if cpus_per_task:  # srun inside sbatch does not inherit --cpus-per-task (Slurm >= 22.05)
        srun.append(f"--cpus-per-task={cpus_per_task}")
    return [
        *srun,
        python,
        "-m",
        "torch.distributed.run",
        f"--nnodes={nodes}",
        f"--nproc-per-node={nproc}",
        "--max-restarts=0",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={head}:{port}",
        f"--rdzv-id={rdzv_id}",
        "-m",
        "runner.train.launch",
        str(launch_file),
    ]


def _slurm_rendezvous(nodes: int) -> dict[str, Any]:
    """The first node of this Slurm allocation, a free port on it (it is this machine) and the job id."""
    job_id = os.environ.get("SLURM_JOB_ID")
    have = int(os.environ.get("SLURM_JOB_NUM_NODES") or os.environ.get("SLURM_NNODES") or 0)
    if not job_id or have < nodes:
        raise ModelSetupError(
            f"resources.nodes = {nodes} needs a Slurm allocation of {nodes} nodes "
            + (f"(this one has {have})" if job_id else "(not inside one)")
            + ": run it with `runner run --executor slurm` or `runner watch --executor slurm`, or set resources.nodes = 1"
        )
    try:
        listed = subprocess.run(
            ["scontrol", "show", "hostnames", os.environ.get("SLURM_JOB_NODELIST", "")],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ModelSetupError(f"cannot list the allocation's nodes with `scontrol show hostnames`: {exc}") from exc
    import socket

    with socket.socket() as probe:  # a port free here: the batch script runs on the first node
        probe.bind(("", 0))
        port = int(probe.getsockname()[1])
    return {
        "head": _resolvable(listed[0]) if listed else socket.gethostname(),
        "port": port,
        "rdzv_id": job_id,
        "cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK"),
    }


def _resolvable(node: str) -> str:
    """The first node's Slurm name if it resolves (the usual case), else this machine's host name
    (NodeName differs from the host name; this process runs on the first node). A name, not an
    address: each node resolves it on its own network, where 127.0.1.1 from /etc/hosts would not do."""
    import socket

    try:
        socket.getaddrinfo(node, None)
        return node
    except OSError:
        return socket.gethostname()


def _cpus_here() -> int:
    """Cores this process may use: its Slurm allocation's or affinity mask's, not the whole machine's."""
    allocated = os.environ.get("SLURM_CPUS_PER_TASK")
    if allocated and allocated.isdigit():
        return int(allocated)
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _backend(device: str) -> str:
    import torch.distributed as dist

    if not dist.is_available():
        raise ModelSetupError("this torch build has no torch.distributed; set resources.nproc = 1")
    if device == "cuda":
        if not dist.is_nccl_available():
            raise ModelSetupError(
                "several GPU processes need NCCL, which this torch build lacks; set resources.nproc = 1"
            )
        return "nccl"
    if not dist.is_gloo_available():
        raise ModelSetupError(
            "several CPU processes need the gloo backend, which this torch build lacks; set resources.nproc = 1"
        )
    return "gloo"


def _worker_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(threads)
    # the workers import this very runner, wherever it was imported from
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _die_with_parent() -> None:
    """In the child, before exec: SIGKILL this process when its parent dies (Linux; else a no-op)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass


def _children(pid: int) -> list[int]:
    """Direct children of `pid` (Linux /proc), or [] when they cannot be listed."""
    found: set[int] = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text()
            found.update(int(p) for p in text.split())
    except OSError:
        return []
    return sorted(found)


def _forward_stop(agent_pid: int) -> None:
    workers = _children(agent_pid)
    targets = workers or [agent_pid]  # torchrun forwards it, but kills workers that take over 30 s
    print(
        f"stopping {len(workers) or 'the'} worker(s): each finishes its step, rank 0 saves a checkpoint",
        file=sys.stderr,
        flush=True,
    )
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def _kill_tree(proc: subprocess.Popen[Any]) -> None:
    for pid in _children(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.kill()
    proc.wait()


def _collect(workers_dir: Path, returncode: int, forwarded: bool) -> TrainOutcome:
    errors = []
    for path in workers_dir.glob("rank-*.error.json"):
        try:
            errors.append(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
    outcome_path = workers_dir / OUTCOME_FILE
    if outcome_path.is_file() and not errors:
        return _outcome_from_dict(json.loads(outcome_path.read_text(encoding="utf-8")))
    if errors:
        # the first error is the cause; later ones are usually other ranks losing their peer
        first = min(errors, key=lambda e: (e.get("kind") == "crash", e.get("time", 0.0)))
        if forwarded and first.get("kind") in ("interrupted", "crash"):
            raise KeyboardInterrupt
        raise _exception_for(first)
    if forwarded:  # stopped before anything could be reported: no new checkpoint
        raise KeyboardInterrupt
    raise WorkerCrashed(
        f"torchrun exited with code {returncode} and no worker reported why (see the job's output above)"
    )


def _exception_for(report: dict[str, Any]) -> BaseException:
    from runner.data.report import DataError

    message = f"rank {report.get('rank')}: {report.get('message')}"
    kind = report.get("kind")
    exc: BaseException
    if kind == "data":
        exc = DataError(message)
    elif kind == "config":
        exc = ModelSetupError(message)
    elif kind == "oom":
        exc = MemoryError(message)
    elif kind == "diverged":
        exc = TrainingDiverged(message)
    else:
        exc = WorkerCrashed(f"{report.get('type')}: {message}")
    exc.add_note(f"traceback of rank {report.get('rank')}:\n{report.get('traceback', '')}")
    return exc


def _outcome_to_dict(outcome: TrainOutcome) -> dict[str, Any]:
    data = asdict(outcome)
    data["device"] = outcome.device.to_dict()
    return data


def _outcome_from_dict(data: dict[str, Any]) -> TrainOutcome:
    data = dict(data)
    data["device"] = DeviceChoice(**data["device"])
    return TrainOutcome(**data)


# ------------------------------------------------------------------------------------ workers


class _NoStatus(StatusFile):
    """What ranks other than 0 get as the run's status: reads work, writes do nothing."""

    def update(self, **fields: Any) -> Status:
        return self.read()  # type: ignore[return-value]

    def write(self, status: Status) -> None:
        return None

    def create(self, status: Status) -> Status:
        return status

    def transition(self, *args: Any, **kwargs: Any) -> Status:
        raise RuntimeError("only the launching process changes a run's state")


class _NoMetrics(MetricsLog):
    """What ranks other than 0 get as the run's metrics log: nothing is written."""

    def append(self, record: Any) -> None:
        return None

    def rewind_to(self, step: int) -> int:
        return 0


def _classify(exc: BaseException) -> str:
    from runner.data.report import DataError

    if isinstance(exc, DataError):
        return "data"
    if isinstance(exc, ModelSetupError):
        return "config"
    if isinstance(exc, TrainingDiverged):
        return "diverged"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "oom"
    return "crash"


def worker_main(launch_file: str) -> int:
    """One torchrun worker: run the recipe; rank 0 reports the outcome, a failing rank reports why."""
    from runner.train.stop import StopRequest

    _die_with_parent()  # torchrun gone (even by SIGKILL): this worker goes too
    launch = json.loads(Path(launch_file).read_text(encoding="utf-8"))
    workers_dir = Path(launch_file).parent
    rank = distributed.rank()
    writer = distributed.is_writer()
    if not writer:  # rank 0 speaks for the job; the others' lines would repeat it (errors still show)
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    stop = StopRequest()
    restore = stop.install()
    try:
        job = _launched_job(launch)
        if job.sha256 != launch["spec_sha256"]:
            raise ModelSetupError(f"{job.path} changed after the run started; run it again")
        paths = run_paths(launch["run_dir"])
        status = StatusFile(paths.status) if writer else _NoStatus(paths.status)
        module, _, name = launch["recipe"].partition(":")
        recipe = getattr(importlib.import_module(module), name)
        with MetricsLog(paths.metrics) if writer else _NoMetrics(paths.metrics) as metrics:
            outcome = recipe(
                RunContext(
                    job=job,
                    run_dir=Path(launch["run_dir"]),
                    model_path=Path(launch["model_path"]),
                    model_info=launch["model_info"],
                    status=status,
                    metrics=metrics,
                    stop=stop,
                    resume_from=Path(launch["resume_from"]) if launch["resume_from"] else None,
                    plain_logs=launch["plain_logs"],
                )
            )
    except BaseException as exc:  # noqa: BLE001 - every failure is reported, then the exit code says it
        atomic_write_json(
            workers_dir / f"rank-{rank}.error.json",
            {
                "rank": rank,
                "kind": _classify(exc),
                "type": type(exc).__name__,
                "message": str(exc),
                "traceback": traceback.format_exc(),
                "time": time.time(),
            },
        )
        print(f"rank {rank} failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        restore()
    if writer:
        atomic_write_json(workers_dir / OUTCOME_FILE, _outcome_to_dict(outcome))
    _shutdown_group()
    return 0


def _launched_job(launch: dict[str, Any]) -> Any:
    """The job as its parent runs it: the run folder's spec.toml when `runner watch` queued it (the
    job file may have changed while the run waited, e.g. in a Slurm queue), else the job file."""
    from runner.spec import load_job, parse_job

    path = Path(launch["job_path"])
    snapshot = Path(launch["run_dir"]) / "spec.toml"  # runner.watch.store.SPEC_SNAPSHOT
    if snapshot.is_file():
        job = parse_job(snapshot.read_bytes(), display=str(path), default_name=path.stem, path=path)
        if job.sha256 == launch["spec_sha256"]:
            return job
    return load_job(path)


def _shutdown_group() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        try:
            # Leave together: a rank that destroys the group while a peer's gloo work is still in
            # flight aborts ("terminate called without an active exception"; seen under load).
            dist.barrier()
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - the run is over; a teardown hiccup must not fail it
            pass


if __name__ == "__main__":
    raise SystemExit(worker_main(sys.argv[1]))
