"""The API served by a real `runner watch --api` process whose children train a tiny model:
submit -> the daemon runs it -> the API reports it; cancel through the API; the dashboard in a
real (headless) Chromium."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import AUTH, KEY, ROWS

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")


@dataclass
class Served:
    root: Path
    model: Path
    proc: subprocess.Popen[bytes]
    log_path: Path
    url: str
    client: httpx.Client

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, what: Callable[[], Any], timeout: float, why: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = what()
            if value:
                return value
            time.sleep(0.1)
        pytest.fail(f"timed out after {timeout} s waiting for {why}\n--- daemon log ---\n{self.log()}")

    def spec(self, name: str, *, steps: int, save_every: int = 100) -> bytes:
        return (
            f'name = "{name}"\n[model]\nsource = "local:{self.model}"\n'
            '[data]\ntrain = "../data/train.jsonl"\neval_fraction = 0.25\nmax_length = 128\n'
            "[adapter]\nr = 8\nalpha = 16\n"
            f"[train]\nmax_steps = {steps}\nbatch_size = 4\nlearning_rate = 1e-3\nlog_every = 1\n"
            f"save_every = {save_every}\n[eval]\nevery = 2\n[resources]\nthreads = 1\n"
        ).encode()

    def state(self, name: str) -> str | None:
        response = self.client.get(f"/jobs/{name}")
        return response.json()["state"] if response.status_code == 200 else None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import json

    import torch

    from ..train.tiny import save_tiny_causal_lm

    torch.set_num_threads(1)
    model = save_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "model")
    root = tmp_path_factory.mktemp("served")
    (root / "jobs").mkdir()
    (root / "data").mkdir()
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS * 6))
    env = {
        **os.environ,
        "RUNNER_API_KEY": KEY,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    env.pop("RUNNER_RUNS", None)
    log_path = root / "daemon.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runner",
                "watch",
                "jobs",
                "--runs-dir",
                "runs",
                "--api",
                "127.0.0.1:0",
                "--api-data-root",
                str(root),
                "--api-data-root",
                str(model),
            ],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    client = None
    try:
        deadline = time.monotonic() + 30
        url = None
        while time.monotonic() < deadline and proc.poll() is None:
            text = log_path.read_text(errors="replace")
            match = re.search(r"serving (http://127\.0\.0\.1:\d+)/", text)
            if match and "runner watch: watching" in text:
                url = match.group(1)
                break
            time.sleep(0.05)
        assert url is not None, f"the daemon did not start its API:\n{log_path.read_text(errors='replace')}"
        client = httpx.Client(base_url=url, headers=AUTH, timeout=15)
        yield Served(root, model, proc, log_path, url, client)
    finally:
        if client is not None:
            client.close()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


@pytest.fixture(scope="module")
def finished(served: Served) -> httpx.Response:
    """The job `tiny`, submitted through the API and run to its end by the daemon."""
    submitted = served.client.post(
        "/jobs", content=served.spec("tiny", steps=6), headers={"content-type": "application/toml"}
    )
    served.wait_for(
        lambda: served.state("tiny") in ("succeeded", "failed", "invalid", "cancelled"), 180, "tiny to finish"
    )
    return submitted


def test_a_submitted_job_is_run_by_the_daemon_and_reported_succeeded(served: Served, finished: httpx.Response) -> None:
    assert finished.status_code == 201 and finished.json()["file"] == "jobs/tiny.toml"
    assert served.client.get("/livez", headers={"Authorization": ""}).status_code == 200
    ready = served.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["daemon"]["pid"] == served.proc.pid
    detail = served.client.get("/jobs/tiny").json()
    assert detail["state"] == "succeeded", served.log()
    assert (detail["step"], detail["total_steps"], detail["attempt"], detail["reason"]) == (6, 6, 1, None)
    assert detail["adapter"]["r"] == 8 and detail["adapter"]["alpha"] == 16
    assert detail["model"]["source"] == f"local:{served.model}" and detail["model"]["kind"] == "causal-lm"
    metrics = served.client.get("/jobs/tiny/metrics", params={"since": 3}).json()["records"]
    assert {r["step"] for r in metrics if "loss" in r} == {4, 5, 6}
    assert any("eval_loss" in r for r in metrics)
    assert [row["job"] for row in served.client.get("/jobs").json()["jobs"]] == ["tiny"]
    again = served.client.post("/jobs", content=served.spec("tiny", steps=6))
    assert again.status_code == 200 and again.json()["existing_run"]["state"] == "succeeded"
    assert (
        served.client.get("/jobs").status_code == 200
        and served.client.get("/jobs", headers={"Authorization": ""}).status_code == 401
    )


def test_cancel_through_the_api_stops_the_running_job(served: Served, finished: httpx.Response) -> None:
    assert served.client.post("/jobs", content=served.spec("long", steps=5000, save_every=2500)).status_code == 201
    served.wait_for(
        lambda: (
            (d := served.client.get("/jobs/long")).status_code == 200
            and d.json()["state"] == "running"
            and (d.json()["step"] or 0) >= 1
        ),
        120,
        "long to be running",
    )
    cancel = served.client.post("/jobs/long/cancel")
    assert cancel.status_code == 202 and len(cancel.json()["requested"]) == 1
    served.wait_for(lambda: served.state("long") == "cancelled", 90, "long to be cancelled")
    detail = served.client.get("/jobs/long").json()
    assert detail["reason"] == "cancelled-by-user" and detail["step"] < 5000
    assert served.client.post("/jobs/long/cancel").status_code == 409


def _chromium(url: str, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--window-size=1280,1000",
            *extra,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_dashboard_shows_the_jobs_table_and_a_drawn_loss_curve_in_chromium(
    served: Served, finished: httpx.Response, tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(
            "/usr/bin/chromium is not installed (Debian package `chromium`; scripts/system-packages "
            "installs it): the browser test needs it"
        )
    # The key travels in the fragment: the page's script trades it for the session cookie and reloads.
    dom = _chromium(f"{served.url}/#key={KEY}", tmp_path / "profile-dom", "--dump-dom")
    page = dom.stdout
    assert 'id="jobs-table"' in page, f"no jobs table in the page:\n{page[:2000]}\n{dom.stderr[-2000:]}"
    assert 'data-job="tiny" data-state="succeeded"' in page
    curve = re.search(
        r'<svg[^>]*class="spark".*?<polyline class="series" data-series="loss" data-points="(\d+)"'
        r'[^>]*points="([^"]+)"',
        page,
    )
    assert curve and int(curve.group(1)) >= 2 and len(curve.group(2).split()) == int(curve.group(1))
    assert 'data-refreshed="' in page, "the script refreshed the table: the page works after JavaScript ran"
    assert 'action="/login"' not in page

    shot = tmp_path / "dashboard.png"
    _chromium(f"{served.url}/#key={KEY}", tmp_path / "profile-shot", f"--screenshot={shot}")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    with Image.open(shot) as image:
        data = image.convert("RGB").tobytes()
    blue = sum(
        1
        for r, g, b in zip(data[0::3], data[1::3], data[2::3], strict=False)
        if abs(r - 37) < 40 and abs(g - 99) < 40 and b > 190
    )
    assert blue > 30, "the sparkline (and the progress bar) are drawn in the screenshot"

    job = _chromium(f"{served.url}/ui/jobs/tiny#key={KEY}", tmp_path / "profile-job", "--dump-dom").stdout
    assert 'class="chart chart-loss"' in job and 'data-series="train loss" data-points="6"' in job
    assert job.count('class="marker" data-series="eval loss"') >= 3
