"""A real Slurm for the tests: munged, slurmctld and two slurmd on 127.0.0.1, for the session.

Two slurmd on this one machine are two nodes to Slurm (each its own name and port), so a job over
two nodes (srun, a torchrun rendezvous on the first) runs for real; single-node jobs use either.

Everything lives in a temporary folder (its own munge key and socket, slurm.conf, state, spool and
logs, ports picked free), so it touches nothing of the machine's own Slurm or munge, and it is
stopped at the end. The tests that need it skip, saying why, where the Debian packages (slurmctld
slurmd slurm-client munge; `bash scripts/system-packages`) are missing or the tests do not run as
root (slurmd must).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.outputs.runs import list_runs, read_status

from ..watch.conftest import ALPACA_ROWS, Project, tiny_model_dir  # noqa: F401 - tiny_model_dir: a fixture

NODES = ("runner-n1", "runner-n2")
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"  # where Debian puts the daemons, if PATH lacks it


def _find(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=SBIN)


def _free_ports(count: int) -> list[int]:
    """Ports free now, all different (held open together while they are picked)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [int(probe.getsockname()[1]) for probe in probes]
    finally:
        for probe in probes:
            probe.close()


def _hardware() -> dict[str, int]:
    """Each node's share of this machine as slurmd sees it (`slurmd -C`): half the CPUs and memory,
    never more than the machine has (slurmd would drain the node)."""
    out = subprocess.run([str(_find("slurmd")), "-C"], capture_output=True, text=True, timeout=30).stdout
    first = out.splitlines()[0] if out else ""
    fields = dict(part.split("=", 1) for part in first.split() if "=" in part)
    return {
        "CPUs": max(1, int(fields.get("CPUs", "1")) // 2),
        "RealMemory": max(1, (int(fields.get("RealMemory", "2000")) - 256) // 2),
    }


@dataclass
class Cluster:
    root: Path
    conf: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(self, *args: str) -> str:
        return subprocess.run(list(args), capture_output=True, text=True, timeout=60, check=True).stdout

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-4000:]}" for p in sorted(self.root.glob("*.log"))
        )

    def job(self, job_id: str) -> str:
        """`scontrol show job` of one job, for assertions and failure messages."""
        return subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout

    def cancel_all(self, timeout: float = 30.0) -> None:
        """scancel every job and wait until none runs (slurmd leaves running jobs alive when it stops)."""
        ids = self.run("squeue", "--noheader", "--format=%i").split()
        if ids:
            subprocess.run(["scancel", *ids], capture_output=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.run("squeue", "--noheader", "--format=%i").split():
            time.sleep(0.5)


def _wait(what: str, check: object, timeout: float, cluster: Cluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        if any(p.poll() is not None for p in cluster.procs):
            break
        time.sleep(0.2)
    pytest.fail(f"the test Slurm cluster did not come up ({what})\n{cluster.logs()}")


def _stop(cluster: Cluster) -> None:
    for proc in reversed(cluster.procs):
        if proc.poll() is None:
            proc.terminate()
    for proc in reversed(cluster.procs):
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    missing = [name for name in BINARIES if _find(name) is None]
    if missing:
        pytest.skip(
            f"Slurm is not installed here ({', '.join(missing)} not found): install the Debian packages "
            "slurmctld slurmd slurm-client munge (`bash scripts/system-packages`) to run the Slurm tests"
        )
    if os.geteuid() != 0:
        pytest.skip("the single-node test Slurm needs root (slurmd runs the jobs as their user): run as root")
    root = tmp_path_factory.mktemp("slurm")
    root.chmod(0o700)
    for sub in ("state", *(f"spool-{node}" for node in NODES)):
        (root / sub).mkdir()
    key = root / "munge.key"  # the cluster's own key: /etc/munge is left alone
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munge_socket = root / "munge.sock"
    hardware = _hardware()
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    ctld_port, slurmd_port, *node_ports = _free_ports(2 + len(NODES))
    conf.write_text(f"""\
ClusterName=runnertest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={root / "state"}
SlurmdSpoolDir={root / "spool-%n"}
SlurmctldPidFile={root / "slurmctld.pid"}
SlurmdPidFile={root / "slurmd-%n.pid"}
SlurmctldLogFile={root / "slurmctld.log"}
SlurmdLogFile={root / "slurmd-%n.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
MpiDefault=none
ReturnToService=2
MinJobAge=60
KillWait=10
OverTimeLimit=0
InactiveLimit=0
Waittime=0
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
NodeName={NODES[0]} NodeHostname={host} NodeAddr=127.0.0.1 Port={node_ports[0]} CPUs={hardware["CPUs"]} RealMemory={hardware["RealMemory"]} State=UNKNOWN
NodeName={NODES[1]} NodeHostname={host} NodeAddr=127.0.0.1 Port={node_ports[1]} CPUs={hardware["CPUs"]} RealMemory={hardware["RealMemory"]} State=UNKNOWN
PartitionName=debug Nodes={",".join(NODES)} Default=YES MaxTime=INFINITE State=UP
""")  # noqa: E501 - slurm.conf wants each node on one line
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # for this process, the daemons and the jobs (sbatch exports it)
    cluster = Cluster(root, conf)
    try:
        _start(cluster, key, munge_socket)
        yield cluster
        cluster.cancel_all()
    finally:
        _stop(cluster)
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved


def _start(cluster: Cluster, key: Path, munge_socket: Path) -> None:
    """munged, then slurmctld and one slurmd per node in the foreground (our children); wait until
    sinfo shows every node idle. Fails with the daemons' logs if they do not come up."""
    root, conf = cluster.root, cluster.conf
    quiet = {"stdin": subprocess.DEVNULL, "start_new_session": True}
    with open(root / "munged.log", "ab") as log:
        cluster.procs.append(
            subprocess.Popen(
                [
                    str(_find("munged")),
                    "--foreground",
                    "--force",
                    f"--socket={munge_socket}",
                    f"--key-file={key}",
                    f"--pid-file={root / 'munged.pid'}",
                    f"--log-file={root / 'munged-own.log'}",
                    f"--seed-file={root / 'munged.seed'}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                **quiet,
            )
        )  # type: ignore[call-overload]
    _wait("munged's socket", munge_socket.exists, 20, cluster)
    for name, command in [
        ("slurmctld", [str(_find("slurmctld")), "-D", "-f", str(conf)]),
        *((f"slurmd-{node}", [str(_find("slurmd")), "-D", "-N", node, "-f", str(conf)]) for node in NODES),
    ]:
        with open(root / f"{name}.out.log", "ab") as log:
            cluster.procs.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, **quiet))  # type: ignore[call-overload]

    def idle() -> bool:
        done = subprocess.run(["sinfo", "--noheader", "--format=%t"], capture_output=True, text=True)
        return done.returncode == 0 and done.stdout.split() == ["idle"]

    _wait("sinfo never showed the nodes idle", idle, 60, cluster)


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path, slurm_cluster: Cluster) -> Iterator[Project]:  # noqa: F811
    """A project folder (jobs/, data/, runs/) whose runs go to the test cluster; afterwards its daemons
    are stopped and its Slurm jobs cancelled, so nothing carries over into the next test."""
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ALPACA_ROWS))
    proj = Project(tmp_path, tiny_model_dir)
    yield proj
    for daemon in proj.daemons:
        if daemon.proc.poll() is None:
            daemon.proc.kill()
            daemon.proc.wait(10)
    ids = [
        str(status.extra["slurm"]["job_id"])
        for job_dir in proj.runs.glob("*")
        for run in list_runs(proj.runs, job_dir.name)
        if (status := read_status(run)) is not None and isinstance(status.extra.get("slurm"), dict)
    ]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)
