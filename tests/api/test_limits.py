"""The limits in one place (defaults, flags, README table), the job-file limits the API shares with
the spec loader, sessions and the wrong-key throttle, checked on their own."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from runner.api.auth import ApiKeys, FailureThrottle, Gate, Sessions
from runner.api.limits import Limits, add_limit_options, limits_from_args, markdown_table

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_limits_table_is_the_one_the_code_has() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README's limits table is stale: paste runner.api.limits.markdown_table()"


def test_every_limit_has_a_flag_that_sets_it() -> None:
    parser = argparse.ArgumentParser()
    add_limit_options(parser)
    defaults = limits_from_args(parser.parse_args([]))
    assert defaults == Limits()
    given = limits_from_args(
        parser.parse_args(
            [
                "--api-timeout-first-byte",
                "0.5",
                "--api-max-body",
                "2MiB",
                "--api-job-max-depth",
                "8",
                "--api-max-errors",
                "7",
            ]
        )
    )
    assert (given.first_byte_timeout, given.max_body, given.job_max_depth, given.max_errors) == (0.5, 2 << 20, 8, 7)
    for bad in (["--api-timeout-headers", "0"], ["--api-max-upload", "lots"], ["--api-max-requests", "-3"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def test_the_job_file_limits_are_the_spec_loaders_and_the_flags_can_only_lower_them(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from runner.api.app import create_app
    from runner.spec.limits import MAX_KEYS, MAX_NESTING_DEPTH

    from .conftest import AUTH, BASE_URL, make_settings, spec_text

    assert (Limits().job_max_depth, Limits().job_max_keys) == (MAX_NESTING_DEPTH, MAX_KEYS)
    with pytest.raises(ValueError, match="can only lower"):
        Limits(job_max_depth=MAX_NESTING_DEPTH + 1)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text('{"text": "x"}\n')
    client = TestClient(
        create_app(make_settings(tmp_path, limits=Limits(job_max_depth=3, job_max_keys=40))), base_url=BASE_URL
    )
    deep = client.post("/jobs", content=(spec_text("d") + "a.b.c.d = 1\n").encode(), headers=AUTH)
    assert deep.status_code == 422 and "--api-job-max-depth" in deep.json()["detail"]
    many = client.post(
        "/jobs", content=(spec_text("k") + "".join(f"x{i} = 1\n" for i in range(40))).encode(), headers=AUTH
    )
    assert many.status_code == 422 and "--api-job-max-keys" in many.json()["detail"]
    assert client.post("/jobs", content=spec_text("ok").encode(), headers=AUTH).status_code == 201


def test_sessions_are_one_per_login_expire_and_end_at_logout() -> None:
    now = [0.0]
    sessions = Sessions(ttl=10, capacity=3, clock=lambda: now[0])
    first, second = sessions.open(), sessions.open()
    assert first != second and sessions.valid(first) and sessions.valid(second)
    sessions.close(first)
    assert not sessions.valid(first) and sessions.valid(second)
    now[0] = 10.5
    assert not sessions.valid(second), "expired"
    tokens = [sessions.open() for _ in range(4)]
    assert not sessions.valid(tokens[0]) and all(sessions.valid(t) for t in tokens[1:]), "at most `capacity` kept"
    assert not sessions.valid("") and not sessions.valid(None) and not sessions.valid("forged")


def test_the_throttle_refuses_a_guessing_address_and_forgives_at_its_rate() -> None:
    now = [0.0]
    throttle = FailureThrottle(per_minute=6, clock=lambda: now[0])
    for _ in range(6):
        assert throttle.wait("10.0.0.1") == 0
        throttle.failed("10.0.0.1")
    assert throttle.wait("10.0.0.1") == pytest.approx(10.0)
    assert throttle.wait("10.0.0.2") == 0, "per address"
    now[0] = 10.0
    assert throttle.wait("10.0.0.1") == 0


def test_the_gate_checks_no_key_of_a_throttled_address() -> None:
    key = "the-right-key-0123456789"
    gate = Gate(ApiKeys.of(key, "test"), failures_per_minute=2, session_ttl=60, max_sessions=4)
    assert gate.check_key(key, "a").ok
    assert [gate.check_key("wrong-key-0123456789", "a").status for _ in range(3)] == [401, 401, 429]
    assert gate.check_key(key, "a").status == 429 and gate.check_key(key, "b").ok
    assert gate.check_key(None, "a").status == 401, "presenting nothing is not a guess"
