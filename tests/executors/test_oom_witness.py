"""Telling the OOM killer's SIGKILL from an operator's: the cgroup counter and the kernel log, read
from files laid out as the kernel does (the real kill under a memory limit is in
tests/watch/test_kills.py, where this machine allows a cgroup to be made)."""

from __future__ import annotations

import os
from pathlib import Path

from runner.executors.oom import OomWitness, kernel_oom_victims, memory_counter, oom_kill_count

V2_MOUNTINFO = "30 1 0:26 / {root}/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTINFO = (
    "31 25 0:27 / {root}/cpu rw,relatime shared:5 - cgroup cgroup rw,cpu\n"
    "32 25 0:28 / {root}/memory rw,relatime shared:6 - cgroup cgroup rw,memory\n"
    "33 25 0:29 / {root}/unified rw,relatime shared:7 - cgroup2 cgroup2 rw\n"
)
EVENTS = "low 0\nhigh 0\nmax 12\noom 3\noom_kill {n}\noom_group_kill 0\n"
OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill {n}\n"


def test_the_v2_counter_is_memory_events_of_the_processs_cgroup(tmp_path: Path) -> None:
    job = tmp_path / "cgroup" / "system.slice" / "runner.service"
    job.mkdir(parents=True)
    (job / "memory.events").write_text(EVENTS.format(n=0))
    counter = memory_counter("0::/system.slice/runner.service\n", V2_MOUNTINFO.format(root=tmp_path))
    assert counter == job / "memory.events" and oom_kill_count(counter) == 0


def test_the_v1_counter_is_memory_oom_control_when_memory_is_a_v1_controller(tmp_path: Path) -> None:
    job = tmp_path / "memory" / "box" / "42"
    job.mkdir(parents=True)
    (job / "memory.oom_control").write_text(OOM_CONTROL.format(n=2))
    (tmp_path / "unified" / "box").mkdir(parents=True)  # a hybrid machine: v2 mounted, but without memory.events
    cgroup = "4:memory:/box/42\n1:cpu:/\n0::/box\n"
    counter = memory_counter(cgroup, V1_MOUNTINFO.format(root=tmp_path))
    assert counter == job / "memory.oom_control" and oom_kill_count(counter) == 2


def test_no_memory_cgroup_means_no_counter(tmp_path: Path) -> None:
    assert memory_counter("1:cpu:/\n", V1_MOUNTINFO.format(root=tmp_path)) is None
    assert oom_kill_count(None) is None and oom_kill_count(tmp_path / "missing") is None


def test_the_kernel_log_names_the_victims(tmp_path: Path) -> None:
    read, write = os.pipe()
    os.set_blocking(read, False)
    for record in [
        b"6,120,900,-;eth0: link up\n",
        b"4,341,9098010138,-;python3 invoked oom-killer: gfp_mask=0xcc0(GFP_KERNEL), order=0\n",
        b"3,418,9098013544,-;Memory cgroup out of memory: Killed process 10382 (python3) total-vm:323768kB\n",
    ]:
        os.write(write, record)
    try:
        assert 10382 in kernel_oom_victims(read)
    finally:
        os.close(read)
        os.close(write)


def test_the_verdict_is_oom_when_the_counter_grew_or_the_log_names_the_pid(tmp_path: Path) -> None:
    events = tmp_path / "memory.events"
    events.write_text(EVENTS.format(n=1))
    witness = OomWitness(events, oom_kill_count(events), None)
    assert witness.verdict(4242) is False, "the counter did not move: someone else's SIGKILL"
    events.write_text(EVENTS.format(n=2))
    assert witness.verdict(4242) is True

    read, write = os.pipe()
    os.set_blocking(read, False)
    os.write(write, b"3,5,7,-;Out of memory: Killed process 4242 (python) total-vm:1kB\n")
    logged = OomWitness(None, None, read)
    assert logged.verdict(4242) is True
    logged.close()
    os.close(write)
    assert OomWitness(None, None, None).verdict(4242) is None, "no witness: no guess"


def test_arming_here_reads_what_this_machine_offers() -> None:
    witness = OomWitness.arm()
    try:
        assert witness.verdict(os.getpid()) in (False, None)  # nothing was killed meanwhile
        if witness.counter is not None:
            assert witness.before is not None and witness.counter.name in ("memory.events", "memory.oom_control")
    finally:
        witness.close()
