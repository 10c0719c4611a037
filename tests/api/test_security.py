"""Closed by default: keys, Host allowlist, loopback-only without a key, size limits, headers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from runner.api.app import create_app
from runner.api.auth import COOKIE_NAME
from runner.api.settings import ApiConfigError
from runner.outputs.status import JobState

from .conftest import AUTH, BASE_URL, KEY, ApiProject, make_settings, spec_text

REPO = Path(__file__).resolve().parents[2]

# Every endpoint of the API, with a request that succeeds when the key is right.
ENDPOINTS: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/readyz", {}, 503),  # no daemon holds the lock in these tests
    ("GET", "/jobs", {}, 200),
    ("GET", "/jobs/a", {}, 200),
    ("GET", "/jobs/a/metrics", {}, 200),
    ("POST", "/jobs", {"content": spec_text("b").encode()}, 201),
    ("POST", "/jobs/a/cancel", {}, 202),
    ("POST", "/datasets/validate", {"json": {"path": "data/train.jsonl"}}, 200),
    ("GET", "/openapi.json", {}, 200),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "expected"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS]
)
def test_every_endpoint_but_livez_needs_the_key(
    api: ApiProject, method: str, path: str, kwargs: dict[str, Any], expected: int
) -> None:
    api.add_run("a", JobState.QUEUED)
    bare = api.client.request(method, path, **kwargs)
    assert bare.status_code == 401 and bare.headers["www-authenticate"].startswith("Bearer")
    wrong = api.client.request(method, path, headers={"Authorization": "Bearer " + KEY[::-1]}, **kwargs)
    assert wrong.status_code == 401
    assert not (api.jobs / "b.toml").exists(), "a refused request changes nothing"
    assert api.client.request(method, path, headers=AUTH, **kwargs).status_code == expected


def test_the_key_may_also_come_as_x_api_key(api: ApiProject) -> None:
    assert api.client.get("/jobs", headers={"X-API-Key": KEY}).status_code == 200
    assert api.client.get("/jobs", headers={"X-API-Key": KEY + "x"}).status_code == 401
    assert api.client.get("/jobs", headers={"Authorization": f"Basic {KEY}"}).status_code == 401


def test_livez_needs_no_key_and_tells_nothing(api: ApiProject) -> None:
    response = api.client.get("/livez")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


@pytest.mark.parametrize("path", ["/livez", "/jobs", "/", "/static/dashboard.js", "/nowhere"])
def test_a_foreign_host_header_is_refused_before_any_route(api: ApiProject, path: str) -> None:
    """DNS rebinding: the attacker's page reaches 127.0.0.1 under the attacker's own name."""
    response = api.client.get(path, headers={**AUTH, "Host": "attacker.example:8200"})
    assert response.status_code == 400
    assert "attacker.example" in response.json()["detail"] and "--api-allow-host" in response.json()["detail"]


def test_loopback_names_and_allowed_hosts_are_answered(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    settings = make_settings(tmp_path, allow_hosts=["runner.internal"])
    client = TestClient(create_app(settings), base_url=BASE_URL)
    for host in ("127.0.0.1:8200", "localhost:8200", "[::1]:8200", "runner.internal", "RUNNER.INTERNAL.:8200"):
        assert client.get("/jobs", headers={**AUTH, "Host": host}).status_code == 200, host
    assert client.get("/jobs", headers={**AUTH, "Host": "runner.internal.evil"}).status_code == 400


def test_the_dashboard_cookie_opens_reads_but_never_writes(api: ApiProject) -> None:
    api.add_run("a", JobState.QUEUED)
    login = api.client.post("/login", headers={"X-API-Key": KEY})
    assert login.status_code == 200
    cookie = login.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    session = api.client.cookies.get(COOKIE_NAME)
    assert session and KEY not in session, "the cookie is derived from the key, not the key"
    assert api.client.get("/jobs").status_code == 200
    assert api.client.get("/").status_code == 200
    assert api.client.post("/jobs/a/cancel").status_code == 401, "a cross-site form must not act with the cookie"
    assert api.client.post("/jobs", content=spec_text("b").encode()).status_code == 401
    api.client.post("/logout")
    assert api.client.get("/jobs").status_code == 401


def test_the_login_form_redirects_only_within_the_server(api: ApiProject) -> None:
    wrong = api.client.post("/login", data={"key": "not-the-key-at-all", "next": "/ui/jobs/a"})
    assert wrong.status_code == 401 and "not accepted" in wrong.text and COOKIE_NAME not in api.client.cookies
    ok = api.client.post("/login", data={"key": KEY, "next": "/ui/jobs/a"}, follow_redirects=False)
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/jobs/a"
    evil = api.client.post("/login", data={"key": KEY, "next": "//evil.example/"}, follow_redirects=False)
    assert evil.headers["location"] == "/"


def test_an_unauthenticated_browser_gets_the_login_form_and_no_data(api: ApiProject) -> None:
    api.add_run("secret-job")
    page = api.client.get("/")
    assert page.status_code == 401 and 'action="/login"' in page.text and "secret-job" not in page.text
    assert api.client.get("/ui/jobs/secret-job").status_code == 401
    assert api.client.get("/ui/jobs-table").status_code == 401


def test_key_files_hold_keys_or_their_hashes_and_only_digests_are_kept(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    other = "second-key-abcdefghijklmnop"
    key_file = tmp_path / "keys"
    key_file.write_text(f"# team keys\n{KEY}\nsha256:{hashlib.sha256(other.encode()).hexdigest()}\n")
    key_file.chmod(0o600)
    settings = make_settings(tmp_path, env={}, key_file=key_file)
    assert KEY not in repr(settings.keys) and other not in repr(settings.keys)
    assert settings.keys.check(KEY) and settings.keys.check(other) and not settings.keys.check(other[:-1])
    assert not settings.notes, "a private key file raises no warning"
    key_file.chmod(0o644)
    assert any("chmod 600" in note for note in make_settings(tmp_path, env={}, key_file=key_file).notes)
    key_file.write_text("short\n")
    with pytest.raises(ApiConfigError, match=rf"{key_file}:1: an API key needs at least 16 characters"):
        make_settings(tmp_path, env={}, key_file=key_file)
    with pytest.raises(ApiConfigError, match=r"\$RUNNER_API_KEY: an API key needs at least 16"):
        make_settings(tmp_path, env={"RUNNER_API_KEY": "abc"})


def test_without_a_key_only_loopback_starts_and_then_with_a_generated_key(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    for listen in ("0.0.0.0:8200", "192.0.2.10:8200", "[::]:8200", "myhost.example:8200"):
        with pytest.raises(ApiConfigError, match=r"refusing to listen .* without an API key"):
            make_settings(tmp_path, env={}, listen=listen)
    settings = make_settings(tmp_path, env={}, listen="127.0.0.1:8200")
    key_path = tmp_path / ".runner" / "watch-jobs" / "api.key"
    assert key_path.stat().st_mode & 0o777 == 0o600
    generated = key_path.read_text().strip()
    client = TestClient(create_app(settings), base_url=BASE_URL)
    assert client.get("/jobs").status_code == 401
    assert client.get("/jobs", headers={"X-API-Key": generated}).status_code == 200
    assert make_settings(tmp_path, env={}).keys.check(generated), "the generated key survives a restart"


def _runner(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RUNNER_API_KEY"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=60
    )


def test_the_commands_refuse_a_public_address_without_a_key_before_starting_anything(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    served = _runner("serve", "jobs", "--listen", "0.0.0.0:0", cwd=tmp_path)
    assert served.returncode == 2 and "without an API key" in served.stderr
    watched = _runner("watch", "jobs", "--runs-dir", "runs", "--api", "0.0.0.0:0", cwd=tmp_path)
    assert watched.returncode == 2 and "without an API key" in watched.stderr
    assert not (tmp_path / ".runner" / "watch-jobs" / "daemon.json").exists(), "the daemon never started"


def test_bodies_over_the_limit_are_refused_with_413(tmp_path: Path) -> None:
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    client = TestClient(create_app(make_settings(tmp_path, max_upload=4096)), base_url=BASE_URL)
    big_spec = spec_text("big").encode() + b"#" * (1 << 20)
    assert client.post("/jobs", content=big_spec, headers=AUTH).status_code == 413
    assert not list((tmp_path / "jobs").iterdir())

    def chunks() -> Any:  # no Content-Length: counted as it arrives
        for _ in range(20):
            yield b"#" * 65536

    assert client.post("/jobs", content=chunks(), headers=AUTH).status_code == 413
    upload = client.post("/datasets/validate", headers=AUTH, files={"file": ("big.jsonl", b'{"text": "x"}\n' * 1000)})
    assert upload.status_code == 413 and "4096" in upload.json()["detail"]
    small = client.post("/datasets/validate", headers=AUTH, files={"file": ("small.jsonl", b'{"text": "x"}\n' * 10)})
    assert small.status_code == 200 and small.json()["records"] == 10


def test_responses_carry_security_headers(api: ApiProject) -> None:
    for response in (api.client.get("/jobs", headers=AUTH), api.client.get("/"), api.client.get("/livez")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert "script-src 'self'" in response.headers["content-security-policy"]
    assert api.client.get("/jobs", headers=AUTH).headers["cache-control"] == "no-store"
