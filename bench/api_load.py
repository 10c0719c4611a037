"""Benchmark the HTTP API under load, on loopback only, for a bounded time.

Load phase: one `runner serve` with its default limits; 50 authenticated clients, each with its own
keep-alive connection, loop over GET /jobs and POST /jobs (a new job file each time: every POST
validates and writes), waiting a random think time (exponential, mean `--think`) between
requests; meanwhile an attacker holds `--idle` connections that never send a byte (63+), opening
a new one whenever the server closes one. Reported per request kind: count, p50 / p95 / p99 / max
latency, status codes, client errors; and how many idle connections were open (sampled every
0.1 s). Targets: p99 <= 250 ms, no 503 (nor any error) for the authenticated clients.

Folder-size phase: POST /jobs latency with `--files` job files already in the folder (default 20
and 420), one server per size, requests alternating between the servers in one run (the machine
is shared: the ratio between the sizes is the measurement). `--baseline DIR` adds the same
servers (and a load phase) run from another checkout of the runner (e.g. `git archive BASE | tar
-x -C /tmp/base`), so the old and new code are measured side by side.

Run: python bench/api_load.py [--duration 20] [--clients 50] [--idle 80] [--think 0.5]
                              [--files 20 420] [--posts 60] [--baseline DIR] [--json OUT]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from runner.outputs.runs import new_run_dir, run_paths  # noqa: E402
from runner.outputs.status import JobState, StatusFile, new_status  # noqa: E402

KEY = "bench-api-key-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
SPEC = (
    'name = "{name}"\n[model]\nsource = "local:../models/tiny"\n[data]\ntrain = "../data/train.jsonl"\n'
    "max_length = 128\n[adapter]\nr = 8\nalpha = 16\n[train]\nmax_steps = 4\nbatch_size = 4\nseed = {seed}\n"
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def make_project(root: Path, files: int, runs: int) -> Path:
    (root / "jobs").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text('{"text": "hello"}\n')
    for i in range(files):
        (root / "jobs" / f"existing-{i:04d}.toml").write_text(SPEC.format(name=f"existing-{i:04d}", seed=i))
    for i in range(runs):  # the jobs table reads one status.json per job
        run = new_run_dir(root / "runs", f"existing-{i:04d}")
        status = StatusFile(run_paths(run).status)
        status.create(new_status(f"existing-{i:04d}", run.name, spec_sha256="0" * 64))
        status.transition(JobState.RUNNING, pid=1, total_steps=10)
        status.transition(JobState.SUCCEEDED)
    return root


class Server:
    def __init__(self, root: Path, code: Path, label: str) -> None:
        self.label = label
        env = {**os.environ, "RUNNER_API_KEY": KEY, "PYTHONPATH": str(code)}
        self.log = root / "serve.log"
        with open(self.log, "wb") as log:  # the server keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runner", "serve", "jobs", "--listen", "127.0.0.1:0", "--runs-dir", "runs"],
                cwd=root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while True:
            match = re.search(r"serving http://127\.0\.0\.1:(\d+)/", self.log.read_text(errors="replace"))
            if match:
                try:
                    socket.create_connection(("127.0.0.1", int(match.group(1))), timeout=1).close()
                    self.port = int(match.group(1))
                    break
                except OSError:
                    pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise SystemExit(f"runner serve did not start:\n{self.log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class IdleHolder(threading.Thread):
    """Keeps `count` connections open that never send a byte; reopens each one the server closes."""

    def __init__(self, port: int, count: int) -> None:
        super().__init__(daemon=True)
        self.port, self.count = port, count
        self.stop_event = threading.Event()
        self.open_samples: list[int] = []
        self.reopened = 0
        self.refused = 0

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        open_now = 0
        last_sample = time.monotonic()
        while not self.stop_event.is_set():
            while open_now < self.count:
                try:
                    sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                except OSError:
                    self.refused += 1
                    break
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
                open_now += 1
            for key, _ in selector.select(timeout=0.02):
                sock = key.fileobj
                try:
                    data = sock.recv(1024)  # type: ignore[union-attr]
                except OSError:
                    data = b""
                if not data:  # closed by the server: open another one in its place
                    selector.unregister(sock)
                    sock.close()  # type: ignore[union-attr]
                    open_now -= 1
                    self.reopened += 1
            if time.monotonic() - last_sample >= 0.1 and (self.open_samples or open_now >= self.count):
                self.open_samples.append(open_now)
                last_sample = time.monotonic()
        for key in list(selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]


async def client_loop(
    url: str, client_id: int, until: float, think: float, post_share: float, results: dict[str, list[Any]]
) -> None:
    rng = random.Random(client_id)
    async with httpx.AsyncClient(
        base_url=url, headers=AUTH, timeout=30, limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
    ) as client:
        n = 0
        while time.monotonic() < until:
            await asyncio.sleep(rng.expovariate(1 / think))
            kind = "POST /jobs" if rng.random() < post_share else "GET /jobs"
            start = time.perf_counter()
            try:
                if kind == "GET /jobs":
                    answer = await client.get("/jobs")
                else:
                    name = f"bench-{client_id:02d}-{n:05d}"
                    answer = await client.post("/jobs", content=SPEC.format(name=name, seed=n).encode())
                results[kind].append((time.perf_counter() - start, answer.status_code))
            except httpx.HTTPError as exc:
                results[kind].append((time.perf_counter() - start, type(exc).__name__))
            n += 1


def load_phase(args: argparse.Namespace, tmp: Path, code: Path) -> dict[str, Any]:
    root = make_project(tmp, files=args.files[0], runs=40)
    server = Server(root, code, "load")
    holder = IdleHolder(server.port, args.idle)
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as warm:  # imports, the folder's index
            warm.get("/jobs")
            warm.post("/jobs", content=SPEC.format(name="warm-up", seed=0).encode())
            time.sleep(6)  # the warm-up connection is closed (keep-alive) before the idle sockets come
        holder.start()
        time.sleep(1.0)  # the idle connections are in place before the clients start
        results: dict[str, list[Any]] = {"GET /jobs": [], "POST /jobs": []}
        until = time.monotonic() + args.duration

        async def run_clients() -> None:
            await asyncio.gather(
                *(client_loop(server.url, i, until, args.think, args.post_share, results) for i in range(args.clients))
            )

        asyncio.run(run_clients())
    finally:
        holder.stop_event.set()
        holder.join(5)
        server.stop()
    report: dict[str, Any] = {
        "clients": args.clients,
        "think_s": args.think,
        "duration_s": args.duration,
        "idle_target": args.idle,
        "idle_open_min": min(holder.open_samples or [0]),
        "idle_open_median": statistics.median(holder.open_samples or [0]),
        "idle_63_or_more_share": sum(n >= 63 for n in holder.open_samples) / max(1, len(holder.open_samples)),
        "idle_closed_by_server": holder.reopened,
        "idle_refused": holder.refused,
        "kinds": {},
    }
    for kind, rows in results.items():
        times = [t * 1000 for t, status in rows if isinstance(status, int)] or [float("nan")]
        statuses = Counter(str(status) for _, status in rows)
        report["kinds"][kind] = {
            "requests": len(rows),
            "statuses": dict(statuses),
            "p50_ms": percentile(times, 0.5),
            "p95_ms": percentile(times, 0.95),
            "p99_ms": percentile(times, 0.99),
            "max_ms": max(times),
        }
    return report


def folder_phase(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """POST latency per folder size (and code tree), requests alternating between the servers."""
    trees = [("this tree", ROOT)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])
    servers = []
    try:
        for label, code in trees:
            for files in args.files:
                root = make_project(tmp / f"{label.replace(' ', '-')}-{files}", files=files, runs=0)
                servers.append((label, files, Server(root, code, f"{label} {files}")))
        times: dict[tuple[str, int], list[float]] = {(label, files): [] for label, files, _ in servers}
        with httpx.Client(headers=AUTH, timeout=60) as client:
            for i in range(args.posts):
                for label, files, server in servers:
                    body = SPEC.format(name=f"size-{i:04d}", seed=i).encode()
                    start = time.perf_counter()
                    answer = client.post(server.url + "/jobs", content=body)
                    elapsed = time.perf_counter() - start
                    assert answer.status_code == 201, answer.text
                    if i >= 3:  # the first posts warm the server (imports, the folder's index)
                        times[(label, files)].append(elapsed * 1000)
    finally:
        for _, _, server in servers:
            server.stop()
    return {
        f"{label}, {files} files": {
            "p50_ms": statistics.median(values),
            "p95_ms": percentile(values, 0.95),
            "posts": len(values),
        }
        for (label, files), values in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of load (bounded: at most 300)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--idle", type=int, default=80, help="idle connections the attacker keeps open (63+)")
    parser.add_argument("--think", type=float, default=0.5, help="mean seconds between a client's requests")
    parser.add_argument("--post-share", type=float, default=0.25, help="share of requests that are POST /jobs")
    parser.add_argument("--files", type=int, nargs="+", default=[20, 420], help="job files already in the folder")
    parser.add_argument("--posts", type=int, default=60, help="POSTs per server in the folder-size phase")
    parser.add_argument("--baseline", help="another checkout of the runner to measure beside this one")
    parser.add_argument("--json", help="write the results here as JSON")
    args = parser.parse_args()
    args.duration = min(args.duration, 300.0)

    trees = [("this tree", ROOT)] + ([("baseline", Path(args.baseline).resolve())] if args.baseline else [])
    loads: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, code in trees:
            loads[label] = load_phase(args, Path(tmp) / f"load-{label.replace(' ', '-')}", code)
        sizes = folder_phase(args, Path(tmp))
    load_avg = os.getloadavg()
    print(
        f"load: {args.clients} clients (think {args.think:g} s, {args.post_share:.0%} POST) for {args.duration:g} s "
        f"with {args.idle} idle connections held open; 1-min load avg {load_avg[0]:.2f}"
    )
    print(
        "| server | request | count | p50 ms | p95 ms | p99 ms | max ms | statuses | idle sockets open: median, "
        "share of time >= 63 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for label, load in loads.items():
        for kind, row in load["kinds"].items():
            print(
                f"| {label} | {kind} | {row['requests']} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
                f"{row['p99_ms']:.1f} | {row['max_ms']:.1f} | "
                f"{', '.join(f'{k}: {v}' for k, v in sorted(row['statuses'].items()))} | "
                f"{load['idle_open_median']:g}, {load['idle_63_or_more_share']:.0%} |"
            )
    print("\nPOST /jobs by folder size (sequential, servers alternating):")
    print("| variant | p50 ms | p95 ms | posts |")
    print("|---|---|---|---|")
    for label, row in sizes.items():
        print(f"| {label} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {row['posts']} |")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"args": vars(args), "load": loads, "folder_size": sizes, "loadavg": load_avg}, indent=2)
        )


if __name__ == "__main__":
    main()
