"""What each endpoint answers, on run folders written the way the daemon and the trainer write them."""

from __future__ import annotations

import json
import os

from runner.outputs.metrics import MetricsLog
from runner.outputs.runs import list_runs, read_status, run_paths
from runner.outputs.status import JobState
from runner.watch.store import DaemonLock, holder_info, pending_requests

from .conftest import AUTH, ApiProject, spec_text


def test_jobs_lists_each_jobs_newest_run_with_state_progress_eta_and_loss(api: ApiProject) -> None:
    api.add_run("a", JobState.FAILED, reason="data", error="bad record")
    api.add_run("a", JobState.SUCCEEDED, steps=6)
    api.add_run("b", JobState.RUNNING, steps=10, done=4)
    api.add_run("c", JobState.QUEUED)
    rows = {row["job"]: row for row in api.client.get("/jobs", headers=AUTH).json()["jobs"]}
    assert set(rows) == {"a", "b", "c"}, "one row per job: its newest run"
    assert rows["a"]["state"] == "succeeded" and rows["a"]["progress"] == 1.0 and rows["a"]["eta_seconds"] is None
    assert (rows["b"]["state"], rows["b"]["step"], rows["b"]["total_steps"]) == ("running", 4, 10)
    assert rows["b"]["progress"] == 0.4 and rows["b"]["eta_seconds"] == 42.0
    assert abs(rows["b"]["loss"] - 1.7) < 1e-9
    assert rows["c"]["state"] == "queued" and rows["c"]["step"] is None


def test_a_job_reports_its_model_adapter_attempt_reason_and_errors(api: ApiProject) -> None:
    older = api.add_run("a", JobState.SUCCEEDED)
    api.add_run("a", JobState.FAILED, attempt=2, reason="oom", error="killed by SIGKILL\nlast lines of the log")
    detail = api.client.get("/jobs/a", headers=AUTH).json()
    assert (detail["state"], detail["reason"], detail["attempt"]) == ("failed", "oom", 2)
    assert detail["error_summary"] == "killed by SIGKILL" and "last lines" in detail["error"]
    assert detail["model"] == {
        "source": "local:../models/tiny",
        "kind": "causal-lm",
        "revision": None,
        "alias": None,
        "fine_tuned_from": None,
    }
    assert detail["adapter"]["method"] == "lora" and detail["adapter"]["r"] == 8 and detail["adapter"]["alpha"] == 16
    assert detail["trainable_params"] == 32768 and detail["spec_file"] == "a.toml"
    assert [r["state"] for r in detail["runs"]] == ["succeeded", "failed"]
    assert detail["status"]["history"][-1]["to"] == "failed"
    chosen = api.client.get(f"/jobs/a?run={older.name}", headers=AUTH).json()
    assert chosen["run_id"] == older.name and chosen["state"] == "succeeded"

    api.add_run(
        "broken",
        JobState.INVALID,
        error="jobs/broken.toml:6:1: adapter.rnak: unknown key",
        extra={
            "errors": [
                {
                    "file": "jobs/broken.toml",
                    "line": 6,
                    "column": 1,
                    "path": "adapter.rnak",
                    "message": "unknown key 'rnak' (did you mean 'r'?)",
                }
            ]
        },
    )
    invalid = api.client.get("/jobs/broken", headers=AUTH).json()
    assert invalid["state"] == "invalid" and invalid["reason"] == "config"
    assert (invalid["errors"][0]["line"], invalid["errors"][0]["column"]) == (6, 1)


def test_unknown_jobs_and_runs_are_404_and_malformed_names_422(api: ApiProject) -> None:
    api.add_run("a")
    missing = api.client.get("/jobs/nope", headers=AUTH)
    assert missing.status_code == 404 and "POST /jobs" in missing.json()["detail"]
    assert api.client.get("/jobs/a?run=20000101-000000-0000", headers=AUTH).status_code == 404
    assert api.client.get("/jobs/..%2Fetc", headers=AUTH).status_code in (404, 422)
    assert api.client.get("/jobs/-a", headers=AUTH).status_code == 422
    assert api.client.get("/jobs/a?run=../../x", headers=AUTH).status_code == 422


def test_metrics_come_from_metrics_jsonl_and_since_returns_only_later_steps(api: ApiProject) -> None:
    run = api.add_run("a", steps=6)
    everything = api.client.get("/jobs/a/metrics", headers=AUTH).json()
    assert everything["run_id"] == run.name and everything["last_step"] == 6
    assert [r["step"] for r in everything["records"] if "loss" in r] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in everything["records"] if "eval_loss" in r] == [2, 4, 6]
    later = api.client.get("/jobs/a/metrics?since=4", headers=AUTH).json()
    assert {r["step"] for r in later["records"]} == {5, 6}
    with MetricsLog(run_paths(run).metrics) as log:
        log.append({"step": 7, "loss": float("nan")})
    nan = api.client.get("/jobs/a/metrics?since=6", headers=AUTH).json()["records"]
    assert nan == [{"step": 7, "loss": "NaN"}], "a NaN loss is shown, as JSON allows"
    assert api.client.get("/jobs/a/metrics?since=-1", headers=AUTH).status_code == 422


def test_an_invalid_spec_is_refused_with_every_problem_located_and_nothing_written(api: ApiProject) -> None:
    text = (
        'name = "bad"\n[model]\nsource = "local:../models/tiny"\n[data]\ntrain = "../data/train.jsonl"\n'
        "[adapter]\nrnak = 4\n[train]\nbatch_size = 0\n"
    )
    response = api.client.post("/jobs", content=text.encode(), headers=AUTH)
    assert response.status_code == 422
    errors = {(e["path"], e["line"], e["column"]) for e in response.json()["errors"]}
    assert ("adapter.rnak", 7, 1) in errors and ("train.batch_size", 9, 14) in errors
    assert all(e["file"] == "jobs/bad.toml" for e in response.json()["errors"])
    syntax = api.client.post("/jobs", content=b'name = "x"\n[model\n', headers=AUTH)
    assert syntax.status_code == 422 and syntax.json()["errors"][0]["line"] == 2
    assert "TOML syntax error" in syntax.json()["errors"][0]["message"]
    assert list(api.jobs.iterdir()) == []


def test_a_valid_spec_is_written_atomically_once_per_content(api: ApiProject) -> None:
    text = spec_text("a").encode()
    first = api.client.post("/jobs", content=text, headers=AUTH)
    assert first.status_code == 201 and first.json()["created"] is True and first.json()["file"] == "jobs/a.toml"
    assert (api.jobs / "a.toml").read_bytes() == text
    mtime = (api.jobs / "a.toml").stat().st_mtime_ns
    again = api.client.post("/jobs", content=text, headers=AUTH)
    assert again.status_code == 200 and again.json()["created"] is False
    assert (api.jobs / "a.toml").stat().st_mtime_ns == mtime, "the same content is not written again"
    assert again.json()["sha256"] == first.json()["sha256"]
    changed = api.client.post("/jobs", content=text + b"# v2\n", headers=AUTH)
    assert changed.status_code == 201 and (api.jobs / "a.toml").read_bytes().endswith(b"# v2\n")
    assert [p.name for p in api.jobs.iterdir()] == ["a.toml"], "no temp file is left behind"


def test_a_submitted_job_needs_a_name_and_never_takes_another_jobs_file(api: ApiProject) -> None:
    unnamed = spec_text(None).encode()
    assert api.client.post("/jobs", content=unnamed, headers=AUTH).status_code == 422
    named = api.client.post("/jobs?name=fromquery", content=unnamed, headers=AUTH)
    assert named.status_code == 201 and (api.jobs / "fromquery.toml").read_bytes() == unnamed
    clash = api.client.post("/jobs?name=other", content=spec_text("a").encode(), headers=AUTH)
    assert clash.status_code == 422 and "make them agree" in clash.json()["detail"]
    (api.jobs / "team").mkdir()
    (api.jobs / "team" / "owner.toml").write_text(spec_text("shared"))
    replaced = api.client.post("/jobs", content=spec_text("shared", extra="# v2\n").encode(), headers=AUTH)
    assert replaced.status_code == 201 and replaced.json()["file"] == "jobs/team/owner.toml"
    assert not (api.jobs / "shared.toml").exists(), "the file that defines the job gets the new version"
    taken = api.client.post("/jobs?name=shared", content=unnamed, headers=AUTH)
    assert taken.status_code == 409 and "team/owner.toml" in taken.json()["detail"]
    (api.jobs / "x.toml").write_text(spec_text("y"))
    squat = api.client.post("/jobs?name=x", content=unnamed, headers=AUTH)
    assert squat.status_code == 409 and "defines job 'y'" in squat.json()["detail"]


def test_paths_outside_the_data_roots_are_refused_with_403(api: ApiProject) -> None:
    outside = api.root.parent / f"{api.root.name}-outside"
    outside.mkdir()
    (outside / "secret.jsonl").write_text('{"text": "secret"}\n')
    (api.root / "data" / "link.jsonl").symlink_to(outside / "secret.jsonl")
    cases = [
        ("absolute", spec_text("p1", train="/etc/passwd"), "data.train", 5),
        ("dot-dot", spec_text("p2", train=f"../../{outside.name}/secret.jsonl"), "data.train", 5),
        ("symlink", spec_text("p3", train="../data/link.jsonl"), "data.train", 5),
        ("model", spec_text("p4").replace("local:../models/tiny", "local:/usr/lib"), "model.source", 3),
    ]
    for label, text, path, line in cases:
        response = api.client.post("/jobs", content=text.encode(), headers=AUTH)
        assert response.status_code == 403, label
        error = response.json()["errors"][0]
        assert (error["path"], error["line"]) == (path, line), label
        assert "--api-data-root" in error["message"]
    assert list(api.jobs.iterdir()) == []
    for given in ("/etc/passwd", f"../{outside.name}/secret.jsonl", "data/link.jsonl"):
        response = api.client.post("/datasets/validate", json={"path": given}, headers=AUTH)
        assert response.status_code == 403 and "outside the allowed data roots" in response.json()["detail"], given
        assert "secret" not in json.dumps(response.json()).replace("secret.jsonl", ""), "nothing of the file is read"


def test_datasets_validate_reports_format_count_and_bad_records_with_locations(api: ApiProject) -> None:
    (api.root / "data" / "mixed.jsonl").write_text(
        '{"question": "a", "answer": "b"}\n{"question": "c"}\n{"question": "e", "answer": "f"\n'
        '{"question": "g", "answer": "h"}\n'
    )
    by_path = api.client.post(
        "/datasets/validate",
        headers=AUTH,
        json={
            "path": "data/mixed.jsonl",
            "format": "alpaca",
            "fields": {"instruction": "question", "output": "answer"},
        },
    )
    report = by_path.json()
    assert by_path.status_code == 200 and report["valid"] is False
    assert (report["format"], report["records"], report["records_ok"], report["bad_count"]) == ("alpaca", 4, 2, 2)
    assert [(b["line"], b["file"].endswith("mixed.jsonl")) for b in report["bad_records"]] == [(2, True), (3, True)]
    auto = api.client.post("/datasets/validate", headers=AUTH, json={"path": "data/train.jsonl"}).json()
    assert (auto["format"], auto["records"], auto["valid"]) == ("alpaca", 8, True)

    upload = api.client.post(
        "/datasets/validate",
        headers=AUTH,
        data={"format": "pairs"},
        files={"file": ("pairs.jsonl", b'{"query": "q", "positive": "p"}\n{"query": "q2"}\n')},
    )
    body = upload.json()
    assert upload.status_code == 200 and body["format"] == "pairs" and body["records"] == 2
    assert body["bad_records"][0]["file"] == "pairs.jsonl" and body["bad_records"][0]["line"] == 2
    assert "runner-api-upload" not in json.dumps(body), "the server's temp path is not shown"
    json_array = api.client.post(
        "/datasets/validate", headers=AUTH, files={"file": ("d.json", b'[{"text": "a"}, {"text": 3}]')}
    ).json()
    assert json_array["bad_records"][0]["index"] == 1

    assert (
        api.client.post(
            "/datasets/validate", headers=AUTH, json={"path": "data/train.jsonl", "format": "csv"}
        ).status_code
        == 422
    )
    assert api.client.post("/datasets/validate", headers=AUTH, json={"path": "data/none.jsonl"}).status_code == 404
    assert api.client.post("/datasets/validate", headers=AUTH, content=b"x").status_code == 415


def test_cancel_drops_a_waiting_run_and_says_when_there_is_nothing_to_cancel(api: ApiProject) -> None:
    run = api.add_run("a", JobState.QUEUED)
    response = api.client.post("/jobs/a/cancel", headers=AUTH)
    assert response.status_code == 202 and response.json()["messages"] == [f"cancelled a/{run.name}"]
    assert read_status(run).state is JobState.CANCELLED  # type: ignore[union-attr]
    again = api.client.post("/jobs/a/cancel", headers=AUTH)
    assert again.status_code == 409 and "no pending run (latest: cancelled)" in again.json()["detail"]
    assert api.client.post("/jobs/nope/cancel", headers=AUTH).status_code == 404


def test_cancel_with_a_daemon_leaves_it_a_request_as_runner_cancel_does(api: ApiProject) -> None:
    run = api.add_run("a", JobState.RUNNING, steps=10, done=3)
    lock = DaemonLock(api.state_dir)
    info = holder_info(api.jobs, api.runs)
    info["pid"] = 2**22 + 11  # a daemon we do not signal in a test
    lock.acquire(info)
    try:
        response = api.client.post("/jobs/a/cancel", headers=AUTH)
    finally:
        lock.release()
    assert response.status_code == 202 and response.json()["requested"] == [run.name]
    assert [r.key for r in pending_requests(api.state_dir)] == [f"a/{run.name}"]
    assert read_status(run).state is JobState.RUNNING, "the daemon stops it, not the API"  # type: ignore[union-attr]


def test_readyz_is_ready_only_while_a_daemon_holds_the_lock(api: ApiProject) -> None:
    down = api.client.get("/readyz", headers=AUTH)
    assert down.status_code == 503 and down.json()["checks"]["daemon"]["ok"] is False
    assert "jobs are not being run" in down.json()["checks"]["daemon"]["detail"]
    lock = DaemonLock(api.state_dir)
    lock.acquire({**holder_info(api.jobs, api.runs), "pid": os.getpid()})
    try:
        up = api.client.get("/readyz", headers=AUTH)
        assert up.status_code == 200 and up.json()["ready"] is True and up.json()["checks"]["queue"]["ok"]
    finally:
        lock.release()
    stale = api.client.get("/readyz", headers=AUTH)
    assert stale.status_code == 503, "daemon.json naming a live pid is not enough: the lock must be held"


def test_the_openapi_document_describes_every_endpoint_and_both_key_schemes(api: ApiProject) -> None:
    doc = api.client.get("/openapi.json", headers=AUTH).json()
    assert set(doc["paths"]) == {
        "/livez",
        "/readyz",
        "/jobs",
        "/jobs/{name}",
        "/jobs/{name}/metrics",
        "/jobs/{name}/cancel",
        "/datasets/validate",
    }
    assert set(doc["components"]["securitySchemes"]) == {"HTTPBearer", "APIKeyHeader"}
    assert "security" not in doc["paths"]["/livez"]["get"]
    assert doc["paths"]["/jobs"]["post"]["security"] == [{"HTTPBearer": []}, {"APIKeyHeader": []}]
    assert "application/toml" in doc["paths"]["/jobs"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} <= set(
        doc["paths"]["/datasets/validate"]["post"]["requestBody"]["content"]
    )
    assert api.client.get("/docs").status_code == 404, "no docs page that would load its script from a CDN"


def test_the_dashboard_renders_the_table_charts_spec_and_escaped_errors(api: ApiProject) -> None:
    api.add_run("a", steps=6)
    api.add_run("b", JobState.FAILED, reason="crash", error="<script>alert(1)</script> exploded")
    index = api.client.get("/", headers=AUTH)
    assert index.status_code == 200 and 'id="jobs-table"' in index.text
    assert 'data-job="a" data-state="succeeded"' in index.text
    assert 'class="spark"' in index.text and 'data-series="loss" data-points="6"' in index.text
    assert "<script>alert" not in index.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in index.text
    page = api.client.get("/ui/jobs/a", headers=AUTH).text
    assert 'class="chart chart-loss"' in page and 'data-series="train loss" data-points="6"' in page
    assert page.count('class="marker" data-series="eval loss"') == 3
    assert "r = 8" in page, "the spec is shown"
    failed = api.client.get("/ui/jobs/b", headers=AUTH).text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; exploded" in failed and "<script>alert" not in failed
    assert api.client.get("/ui/jobs/a/live", headers=AUTH).text.startswith('<div class="live" data-state="succeeded">')
    assert api.client.get("/static/dashboard.js").headers["content-type"].startswith("text/javascript")
    missing = api.client.get("/ui/jobs/nope", headers=AUTH)
    assert missing.status_code == 404 and missing.headers["content-type"].startswith("text/html")
    assert "no runs of job &#x27;nope&#x27;" in missing.text


def test_a_run_without_a_daemon_snapshot_shows_the_resolved_spec(api: ApiProject) -> None:
    """`runner run` leaves no spec.toml: the manifest's resolved spec stands in."""
    run = api.add_run("solo")
    (run / "spec.toml").unlink()
    run_paths(run).manifest.write_text(
        json.dumps(
            {
                "spec": {
                    "name": "solo",
                    "model": {"source": "hf:org/m", "kind": "causal-lm"},
                    "adapter": {"r": 4, "dropout": None},
                },
                "model": {"source": "hf:org/m", "revision": "abc123"},
            }
        )
    )
    detail = api.client.get("/jobs/solo", headers=AUTH).json()
    assert detail["model"]["revision"] == "abc123" and detail["model"]["source"] == "hf:org/m"
    page = api.client.get("/ui/jobs/solo", headers=AUTH).text
    assert "resolved spec (manifest.json)" in page and "r = 4" in page
    assert list_runs(api.runs, "solo") == [run]
