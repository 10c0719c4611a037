"""Schemathesis against the served OpenAPI document: requests generated from the document never
make the API fail (5xx), and every answer has a documented status code and content type."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from runner.api.app import create_app
from runner.watch.store import DaemonLock, holder_info

from .conftest import AUTH, ApiProject, make_settings

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")


def test_generated_requests_get_documented_answers_and_no_server_errors(api: ApiProject) -> None:
    from schemathesis.checks import (
        content_type_conformance,
        ignored_auth,
        not_a_server_error,
        status_code_conformance,
    )

    api.add_run("a")
    lock = DaemonLock(api.state_dir)  # a daemon "holds" the folder, so /readyz answers 200 and not 503
    lock.acquire({**holder_info(api.jobs, api.runs), "pid": os.getpid()})
    app = create_app(make_settings(api.root, allow_hosts=["testserver"]))  # schemathesis's client says Host: testserver
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=AUTH)
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, ignored_auth]
    cases = 0
    try:
        for result in schema.get_all_operations():
            operation = result.ok()

            @given(case=operation.as_strategy())
            @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case: object) -> None:
                nonlocal cases
                cases += 1
                case.call_and_validate(headers=AUTH, checks=checks)  # type: ignore[attr-defined]

            check()
    finally:
        lock.release()
    assert cases >= 7 * 5, f"only {cases} generated requests"
    assert not list(Path(api.jobs).glob(".tmp-*")), "no half-written job file is left behind"
