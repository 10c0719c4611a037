"""Generated requests, over 10,000 of them, against every endpoint: never a 5xx, never a traceback
in an answer, and a server whose memory does not grow with the number of requests.

* From the OpenAPI document (schemathesis + hypothesis): every documented operation, sent
  in-process straight into the ASGI app (no HTTP client in between, so thousands take seconds);
  every answer must also have a documented status code.
* Raw requests (hypothesis) against a real `runner serve` on loopback: any method, any path
  (the dashboard, /login, /logout, /static and unknown ones too), odd headers, bodies from
  random bytes to nested JSON and TOML; the server's resident memory is read from /proc.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlencode, urlsplit

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from runner.api.app import create_app
from runner.api.limits import Limits
from runner.watch.store import DaemonLock, holder_info

from .conftest import AUTH, KEY, ApiProject, make_settings, spec_text
from .served import RawClient, make_project, start_server

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is in the dev extra: pip install -e '.[dev]'")

PER_OPERATION = 580  # x 7 documented operations with inputs (and /livez)
RAW_REQUESTS = 6000
HOST = "127.0.0.1:8200"


def _no_traceback(body: bytes) -> None:
    assert b"Traceback (most recent call last)" not in body and b'File "/' not in body, body[:2000]


class InProcess:
    """The ASGI app on an event loop of its own thread; a request is its scope and one body message."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    async def _call(
        self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> tuple[int, dict[bytes, bytes], bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("utf-8", "surrogateescape"),
            "query_string": query,
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 8200),
            "state": {},
        }
        delivered = False
        status, answer_headers, chunks = 0, {}, []

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, answer_headers
            if message["type"] == "http.response.start":
                status, answer_headers = message["status"], dict(message.get("headers", []))
            else:
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return status, answer_headers, b"".join(chunks)

    def send(self, case: Any, headers: dict[str, str]) -> tuple[int, dict[bytes, bytes], bytes]:
        import requests

        kwargs = case.as_transport_kwargs(base_url=f"http://{HOST}", headers=headers)
        wanted = ("method", "url", "headers", "params", "data", "json", "files", "cookies")
        prepared = requests.Request(**{k: v for k, v in kwargs.items() if k in wanted}).prepare()
        url = urlsplit(prepared.url)
        body = prepared.body or b""
        raw = [
            (k.lower().encode("latin-1"), v.encode("latin-1") if isinstance(v, str) else v)
            for k, v in prepared.headers.items()
        ]
        raw.append((b"host", HOST.encode()))
        call = self._call(
            prepared.method,
            unquote(url.path, errors="replace"),
            url.query.encode(),
            raw,
            body.encode() if isinstance(body, str) else body,
        )
        return asyncio.run_coroutine_threadsafe(call, self.loop).result(60)


def test_requests_generated_from_the_openapi_document_get_documented_answers(api: ApiProject) -> None:
    api.add_run("a")
    (api.root / "data" / "bad.json").write_text('[{"text": "x"}, 3, {"text": ' + "[" * 5000 + "]" * 5000 + "}]")
    lock = DaemonLock(api.state_dir)  # a daemon "holds" the folder, so /readyz can answer 200
    lock.acquire({**holder_info(api.jobs, api.runs), "pid": os.getpid()})
    app = create_app(make_settings(api.root, limits=Limits(auth_failures_per_minute=10**6)))
    schema = schemathesis.openapi.from_dict(app.app.openapi())
    driver = InProcess(app)
    statuses: dict[str, set[int]] = {}
    cases = 0
    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            documented = {int(code) for code in operation.definition.raw["responses"]} | {401, 422, 429}

            @given(case=operation.as_strategy(), keyed=st.booleans() | st.just(True))
            @settings(
                max_examples=PER_OPERATION,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            def check(case: Any, keyed: bool) -> None:
                nonlocal cases
                cases += 1
                status, headers, body = driver.send(case, AUTH if keyed else {})
                statuses.setdefault(operation.label, set()).add(status)  # noqa: B023 - check() runs within its loop turn
                assert status < 500 or (operation.label == "GET /readyz" and status == 503), (status, body[:500])  # noqa: B023 - check() runs within its loop turn
                assert status in documented, (operation.label, status, body[:500])  # noqa: B023 - check() runs within its loop turn
                assert headers.get(b"content-type", b"").startswith(b"application/json"), headers
                json.loads(body)
                _no_traceback(body)

            check()
    finally:
        driver.close()
        lock.release()
    assert cases >= 7 * PER_OPERATION, f"only {cases} generated requests"  # /livez takes no input: a few cases
    assert len(statuses) == 8, statuses
    assert not list(Path(api.jobs).glob(".tmp-*")), "no half-written job file is left behind"


# ----------------------------------------------------------------------- raw, real server

_TEMPLATES = [
    "/",
    "/livez",
    "/readyz",
    "/jobs",
    "/jobs/{}",
    "/jobs/{}/metrics",
    "/jobs/{}/cancel",
    "/datasets/validate",
    "/openapi.json",
    "/login",
    "/logout",
    "/ui/jobs-table",
    "/ui/jobs/{}",
    "/ui/jobs/{}/live",
    "/static/{}",
    "/{}",
]
_segment = st.one_of(
    st.sampled_from(["a", "tiny", "..", "%00", "a" * 65, "dashboard.js"]),
    st.text(max_size=40).map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")),
)
_target = st.builds(
    lambda template, segment, query: template.format(segment) + ("?" + urlencode(query) if query else ""),
    st.sampled_from(_TEMPLATES),
    _segment,
    st.dictionaries(
        st.sampled_from(["run", "since", "name", "next", "format", "x"]),
        st.text(max_size=20).map(lambda t: t.encode("utf-8", "surrogatepass").decode("utf-8", "replace")),
        max_size=3,
    ),
)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)
_nested = st.builds(
    lambda n, open_, close: open_ * n + close * n, st.integers(1, 3000), st.sampled_from(["[", '{"a":']), st.just("]")
).map(str.encode)
_toml = st.builds(
    lambda name, extra: (spec_text(name) + extra).encode("utf-8", "surrogatepass"),
    st.sampled_from(["fz", "a", "x" * 70, ""]),
    st.sampled_from(
        [
            "",
            "x = [[[[1]]]]\n",
            "a.b.c.d.e.f.g.h.i.j.k.l.m.n.o.p.q = 1\n",
            "[train]\nlr = nan\n",
            "name = 3\n",
            '[data]\ntrain = "/etc/passwd"\n',
            "\x00\n",
        ]
    ),
)
_multipart = st.builds(
    lambda content, fmt, name: (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="'
        + name.encode()
        + b'"\r\n\r\n'
        + content
        + b'\r\n--XyZ\r\nContent-Disposition: form-data; name="format"'
        + b"\r\n\r\n"
        + fmt.encode()
        + b"\r\n--XyZ--\r\n"
    ),
    st.one_of(st.binary(max_size=300), _json_value.map(lambda v: (json.dumps(v) + "\n").encode())),
    st.sampled_from(["auto", "alpaca", "image-text", "pairs", "sharegpt-preference", "nope"]),
    st.sampled_from(["d.jsonl", "d.json", "x", "d.txt", "d.csv", "d.tsv", "d.parquet"]),
)
_body = st.one_of(
    st.just(b""),
    st.binary(max_size=500),
    _json_value.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda p, f: json.dumps({"path": p, "format": f}).encode(),
        st.sampled_from(["data/train.jsonl", "/etc/shadow", "data", "x\u0000", "../..", "\ud800"]),
        st.sampled_from(["auto", "text", "image-text"]),
    ),
    _nested,
    _toml,
    _multipart,
    st.just(b"key=" + KEY.encode() + b"&next=/"),
)
_content_type = st.sampled_from(
    [
        None,
        "application/json",
        "application/toml",
        "text/plain",
        "multipart/form-data; boundary=XyZ",
        "multipart/form-data",
        "application/x-www-form-urlencoded",
        "x/y; q=\x7f",
    ]
)
_auth = st.sampled_from(
    [
        [(b"authorization", f"Bearer {KEY}".encode())],
        [(b"x-api-key", KEY.encode())],
        [],
        [(b"authorization", b"Bearer wrong-key-0123456789")],
        [(b"authorization", b"Basic Zm9v")],
        [(b"cookie", b"runner_session=forged")],
    ]
)
_extra = st.lists(
    st.tuples(
        st.sampled_from(
            [b"origin", b"sec-fetch-site", b"x-forwarded-proto", b"accept", b"transfer-encoding-x", b"x-anything"]
        ),
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(lambda t: t.strip().encode()),
    ),
    max_size=3,
)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    root = make_project(tmp_path_factory.mktemp("fuzz"))
    served = start_server(root, "--api-auth-failures-per-minute", "1000000")
    yield served
    served.stop()


def test_raw_generated_requests_to_every_endpoint_of_a_real_server(real_server: Any) -> None:
    client = RawClient(real_server)
    seen: dict[str, set[int]] = {}
    memory: list[int] = []
    sent = 0

    @given(
        method=st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "OPTIONS", "PATCH"]),
        target=_target,
        auth=_auth,
        content_type=_content_type,
        extra=_extra,
        body=_body,
    )
    @settings(
        max_examples=RAW_REQUESTS,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(
        method: str,
        target: str,
        auth: list[tuple[bytes, bytes]],
        content_type: str | None,
        extra: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> None:
        nonlocal sent
        headers = [*auth, *extra]
        if content_type is not None:
            headers.append((b"content-type", content_type.encode("latin-1")))
        answer = client.request(method, target.encode(), headers, body if method != "GET" or len(body) < 100 else b"")
        sent += 1
        seen.setdefault(target.split("?")[0].split("/")[1] or "/", set()).add(answer.status)
        assert answer.status < 500 or (target.startswith("/readyz") and answer.status == 503), (
            method,
            target,
            answer.status,
            answer.body[:500],
        )
        _no_traceback(answer.body)
        if sent in (500, RAW_REQUESTS):
            memory.append(real_server.memory())

    check()
    client.close()
    assert sent >= RAW_REQUESTS
    assert {"jobs", "datasets", "login", "logout", "ui", "static", "/", "livez", "readyz"} <= set(seen), seen
    assert len(memory) == 2 and memory[1] - memory[0] < 64, f"server memory grew from {memory[0]} to {memory[1]} MiB"
    assert real_server.proc.poll() is None
