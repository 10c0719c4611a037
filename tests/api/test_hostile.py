"""Hostile clients against a real `runner serve` on loopback: idle and slow sockets, bodies built to
crash or bloat the server, paths that probe the disk, racing submissions, session and login abuse.
Each test is the attack first, then what the server must do instead."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .conftest import AUTH, KEY, spec_text
from .served import RawClient, Server, make_project, start_server

FAST = [
    "--api-timeout-first-byte",
    "1",
    "--api-timeout-headers",
    "2",
    "--api-timeout-keep-alive",
    "1",
    "--api-timeout-body",
    "2",
    "--api-auth-failures-per-minute",
    "100000",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = make_project(tmp_path_factory.mktemp("hostile"))
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(root / "data" / "ok.png")
    (root / "images").mkdir()
    Image.new("RGB", (8, 8), "blue").save(root / "images" / "in.png")
    served = start_server(root, *FAST)
    yield served
    served.stop()


@pytest.fixture
def client(server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


# ----------------------------------------------------------------------------- idle sockets


def test_hundreds_of_idle_connections_neither_take_livez_down_nor_keyed_requests(server: Server) -> None:
    idle = [server.connect() for _ in range(300)]  # the per-client cap is 256: older idle ones make room
    try:
        time.sleep(0.2)
        with httpx.Client(base_url=server.url, timeout=5) as fresh:
            assert fresh.get("/livez").status_code == 200
            assert fresh.get("/jobs", headers=AUTH).status_code == 200
        assert sum(_closed_by_server(s, 3) for s in idle) == len(idle), (
            "every socket that sends nothing is closed within the first-byte deadline"
        )
    finally:
        for s in idle:
            s.close()


def test_slow_header_connections_are_cut_at_the_header_deadline_and_the_api_stays_up(server: Server) -> None:
    slow = [server.connect() for _ in range(64)]
    try:
        start = time.monotonic()
        for s in slow:
            s.sendall(b"GET /livez HTTP/1.1\r\n")
        while time.monotonic() - start < 1.5:  # a byte now and then: never a complete head
            for s in slow:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass
            assert httpx.get(server.url + "/livez", timeout=5).status_code == 200
            time.sleep(0.3)
        assert sum(_closed_by_server(s, 3) for s in slow) == len(slow)
        assert time.monotonic() - start < 2 + 3, "cut near the 2 s header deadline, not left open"
    finally:
        for s in slow:
            s.close()


def test_an_idle_keep_alive_connection_is_closed_after_the_keep_alive_timeout(server: Server) -> None:
    raw = RawClient(server)
    assert raw.request("GET", b"/livez", []).status == 200
    assert raw.sock is not None and _closed_by_server(raw.sock, 3)
    raw.close()


def test_a_keyed_client_is_served_while_its_address_holds_the_cap_in_idle_sockets(server: Server) -> None:
    idle = [server.connect() for _ in range(256)]
    try:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=5) as c:
            assert [c.get("/jobs").status_code for _ in range(5)] == [200] * 5
    finally:
        for s in idle:
            s.close()


# --------------------------------------------------------------------------------- bodies


def test_nested_json_nul_bytes_and_lone_surrogates_get_a_4xx_that_says_why(client: httpx.Client) -> None:
    nested = b'{"path": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = client.post("/datasets/validate", content=nested, headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "nested too deeply" in answer.json()["detail"]
    nul = client.post("/datasets/validate", json={"path": "ok.jsonl\u0000"})
    assert nul.status_code == 422 and "NUL" in nul.json()["detail"]
    surrogate = client.post(
        "/datasets/validate", content=b'{"path": "\\ud800"}', headers={"content-type": "application/json"}
    )
    assert surrogate.status_code == 422 and "surrogate" in surrogate.json()["detail"]
    long_path = client.post("/datasets/validate", json={"path": "a" * 600_000})
    assert long_path.status_code == 422 and "4096" in long_path.json()["detail"]


def test_an_uploaded_file_with_a_deeply_nested_record_or_a_huge_integer_names_the_bad_lines(
    client: httpx.Client,
) -> None:
    body = (
        b'{"text": '
        + b"[" * 100_000
        + b"]" * 100_000
        + b"}\n"
        + b'{"text": "fine"}\n'
        + b'{"text": 1'
        + b"0" * 5000
        + b"}\n"
    )
    answer = client.post("/datasets/validate", files={"file": ("deep.jsonl", body)})
    assert answer.status_code == 200, answer.text
    report = answer.json()
    assert (report["records"], report["records_ok"], report["bad_count"]) == (3, 1, 2)
    reasons = {bad["line"]: bad["reason"] for bad in report["bad_records"]}
    assert "nested more than 64 levels" in reasons[1] and "digits" in reasons[3]
    as_array = client.post("/datasets/validate", files={"file": ("deep.json", b"[" + body.split(b"\n")[0] + b"]")})
    assert as_array.status_code == 422 and "nested more than 64 levels" in as_array.json()["detail"]


def test_nul_bytes_in_a_job_files_paths_are_refused_with_their_place(client: httpx.Client, server: Server) -> None:
    text = spec_text("nul", train="../data/train.jsonl\\u0000")
    answer = client.post("/jobs", content=text.encode())
    assert answer.status_code in (403, 422), answer.text
    errors = answer.json()["errors"]
    assert any(
        e["path"] == "data.train" and ("NUL" in e["message"] or "control character" in e["message"]) for e in errors
    ), errors
    assert not (server.root / "jobs" / "nul.toml").exists()


def test_json_bodies_to_datasets_validate_are_capped_at_one_mib(client: httpx.Client) -> None:
    big = b'{"path": "' + b"a" * (2 << 20) + b'"}'
    declared = client.post("/datasets/validate", content=big, headers={"content-type": "application/json"})
    assert declared.status_code == 413 and "1048576" in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    streamed = client.post("/datasets/validate", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413


def test_a_deep_dotted_key_is_refused_before_parsing_and_leaves_no_memory_behind(
    client: httpx.Client, server: Server
) -> None:
    before = server.memory()
    for levels in (30_000, 100_000):
        body = b'name = "d"\n' + b".".join([b"a"] * levels) + b" = 1\n"
        start = time.monotonic()
        answer = client.post("/jobs", content=body)
        assert answer.status_code == 422 and time.monotonic() - start < 5
        assert "nested" in answer.json()["detail"] and answer.json()["errors"][0]["line"] == 2
    arrays = client.post("/jobs", content=b'name = "d"\nx = ' + b"[" * 2000 + b"]" * 2000 + b"\n")
    assert arrays.status_code == 422 and "nested" in arrays.json()["detail"]
    keys = client.post("/jobs", content=b'name = "d"\n' + b"".join(b"k%d = 1\n" % i for i in range(3000)))
    assert keys.status_code == 422 and "keys" in keys.json()["detail"]
    assert server.memory() - before < 50, "the server's memory stays where it was"


# ------------------------------------------------------------------------ paths in records


def _image_answer(client: httpx.Client, target: str, **parts: str) -> dict[str, object]:
    rows = [{"image": "in.png", "text": "fine"}, {"image": target, "text": "probe"}]
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    answer = client.post(
        "/datasets/validate",
        files={"file": ("probe.jsonl", body)},
        data={"format": "image-text", "image_root": "images", **parts},
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_image_paths_outside_the_image_root_say_the_same_whether_or_not_the_file_exists(
    client: httpx.Client, server: Server
) -> None:
    outside_image = str(server.root / "data" / "ok.png")  # a real image, under a data root, outside image_root
    reasons = {}
    for target in (
        "/etc/shadow",
        "/root/.ssh/id_rsa",
        "/etc/no-such-file-here",
        "../data/ok.png",
        outside_image,
        "../../../../../etc/hostname",
    ):
        report = _image_answer(client, target)
        assert report["records_ok"] == 1 and report["bad_count"] == 1
        reason = report["bad_records"][0]["reason"]
        assert (
            "leads outside the image folder" in reason and "not found" not in reason and "cannot be read" not in reason
        )
        reasons[target] = reason.replace(repr(target), "PATH")
    assert len(set(reasons.values())) == 1, "no difference an attacker could read"


def test_an_upload_never_shows_the_servers_temporary_folder(client: httpx.Client) -> None:
    report = _image_answer(client, "missing.png")
    text = json.dumps(report)
    assert "runner-api-upload" not in text and "/tmp/" not in text.replace(str(Path(report["image_root"])), "")
    assert report["bad_records"][0]["file"] == "probe.jsonl"
    broken = client.post("/datasets/validate", files={"file": ("broken.json", b'[{"text": "x"},')})
    assert broken.status_code == 422 and "broken.json" in broken.json()["detail"] and "/tmp" not in broken.text


def test_an_image_root_outside_the_data_roots_is_refused(client: httpx.Client) -> None:
    rows = b'{"image": "x.png", "text": "t"}\n'
    for root in ("/etc", "../.."):
        answer = client.post(
            "/datasets/validate", files={"file": ("i.jsonl", rows)}, data={"format": "image-text", "image_root": root}
        )
        assert answer.status_code == 403 and "outside the allowed data roots" in answer.json()["detail"]


def test_a_403_listing_many_outside_paths_is_short_and_too_many_files_are_refused_at_once(client: httpx.Client) -> None:
    def naming(count: int) -> bytes:
        paths = ", ".join(f'"/etc/x{i}.jsonl"' for i in range(count))
        return spec_text("many").replace('train = "../data/train.jsonl"', f"train = [{paths}]").encode()

    answer = client.post("/jobs", content=naming(1000))
    assert answer.status_code == 403
    body = answer.json()
    assert body["errors_total"] == 1000 and len(body["errors"]) == 100 and body["errors_truncated"]
    assert body["errors"][99]["line"] == 5 and len(answer.content) < 40_000
    start = time.monotonic()
    many = client.post("/jobs", content=naming(5_000))
    assert many.status_code == 422 and "at most 1000" in many.json()["detail"] and time.monotonic() - start < 5
    items = client.post("/jobs", content=naming(40_000))  # over the spec loader's array items: its pre-scan says so
    assert items.status_code == 422 and "array items" in items.json()["detail"]
    listed = client.post("/datasets/validate", json={"path": [f"/etc/x{i}" for i in range(60_000)]})
    assert listed.status_code == 422 and "at most 1000" in listed.json()["detail"]


# ---------------------------------------------------------------------------------- races


def _post_all_at_once(server: Server, bodies: list[bytes]) -> list[tuple[int, dict[str, object]]]:
    """Every request's head and all but the last byte of its body first; then the last bytes. So all
    of them have arrived before any can be checked and written: a real race, every time."""
    socks = []
    for body in bodies:
        sock = server.connect()
        sock.sendall(
            f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body[:-1]
        )
        socks.append(sock)
    time.sleep(0.3)
    for sock, body in zip(socks, bodies, strict=True):
        sock.sendall(body[-1:])
    answers = []
    for sock in socks:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        head, _, payload = data.partition(b"\r\n\r\n")
        answers.append((int(head.split()[1]), json.loads(payload)))
    return answers


def test_racing_submissions_of_one_new_job_leave_exactly_one_winner(server: Server) -> None:
    texts = [spec_text("race2") + f"# version {i}\n" for i in range(20)]
    answers = _post_all_at_once(server, [t.encode() for t in texts])
    counts = Counter(status for status, _ in answers)
    assert counts == {201: 1, 409: 19}, [a for a in answers if a[0] not in (201, 409)] or counts
    winner = texts[next(i for i, (status, _) in enumerate(answers) if status == 201)]
    assert (server.root / "jobs" / "race2.toml").read_text() == winner
    for status, body in answers:
        if status == 409:
            assert "another submission" in str(body["detail"]) and "not 'race2'" not in str(body["detail"])
    again = httpx.post(server.url + "/jobs", headers=AUTH, content=texts[3].encode())
    assert again.status_code == 201, "a later submission, which saw the file, replaces it"
    same = _post_all_at_once(server, [texts[5].encode()] * 5)
    assert Counter(status for status, _ in same) == {201: 1, 200: 4}, "the same bytes racing: one write"


# ------------------------------------------------------------------------ sessions, logins


def test_each_login_gets_its_own_expiring_cookie_and_logout_ends_it(server: Server) -> None:
    first = httpx.post(server.url + "/login", headers={"X-API-Key": KEY})
    second = httpx.post(server.url + "/login", headers={"X-API-Key": KEY})
    cookie = first.headers["set-cookie"]
    assert "max-age=43200" in cookie.lower() and "httponly" in cookie.lower() and "secure" not in cookie.lower()
    token = first.cookies["runner_session"]
    assert token != second.cookies["runner_session"] and KEY not in token
    jar = {"runner_session": token}
    assert httpx.get(server.url + "/jobs", cookies=jar).status_code == 200
    assert httpx.post(server.url + "/logout", cookies=jar).status_code == 303
    assert httpx.get(server.url + "/jobs", cookies=jar).status_code == 401, "a replayed cookie after logout"
    assert (
        httpx.get(server.url + "/jobs", cookies={"runner_session": second.cookies["runner_session"]}).status_code == 200
    )


def test_sessions_expire_and_the_cookie_is_secure_behind_a_tls_proxy(tmp_path: Path) -> None:
    served = start_server(make_project(tmp_path), "--api-session-ttl", "1", "--api-behind-tls-proxy")
    try:
        plain = httpx.post(served.url + "/login", headers={"X-API-Key": KEY})
        assert "secure" not in plain.headers["set-cookie"].lower()
        proxied = httpx.post(served.url + "/login", headers={"X-API-Key": KEY, "X-Forwarded-Proto": "https"})
        assert (
            "secure" in proxied.headers["set-cookie"].lower() and "max-age=1" in proxied.headers["set-cookie"].lower()
        )
        jar = {"runner_session": plain.cookies["runner_session"]}
        assert httpx.get(served.url + "/jobs", cookies=jar).status_code == 200
        time.sleep(1.3)
        assert httpx.get(served.url + "/jobs", cookies=jar).status_code == 401
    finally:
        served.stop()


@pytest.mark.parametrize("path", ["/login", "/logout", "/jobs", "/jobs/a/cancel"])
def test_cross_site_form_posts_are_refused(server: Server, path: str) -> None:
    for header in (
        {"Origin": "http://evil.example"},
        {"Origin": f"http://localhost:{server.port + 1}"},
        {"Origin": "null"},
        {"Sec-Fetch-Site": "cross-site"},
    ):
        answer = httpx.post(server.url + path, headers={**header, **AUTH}, data={"key": KEY})
        assert answer.status_code == 403 and "cross-origin" in answer.json()["detail"], (path, header)
    same = httpx.post(server.url + "/login", headers={"Origin": server.url}, data={"key": KEY})
    assert same.status_code == 303


def test_wrong_keys_are_throttled_per_address_and_retry_after_says_when(tmp_path: Path) -> None:
    served = start_server(make_project(tmp_path), "--api-auth-failures-per-minute", "30")
    try:
        with httpx.Client(base_url=served.url, timeout=10) as c:
            statuses = [
                c.get("/jobs", headers={"Authorization": f"Bearer wrong-{i:020d}"}).status_code for i in range(33)
            ]
            assert statuses == [401] * 30 + [429] * 3
            limited = c.get("/jobs", headers=AUTH)
            assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1, (
                "while throttled, no key is looked at: a right one gives nothing away"
            )
            assert c.post("/login", data={"key": "wrong-key-xxxxxxxxxxxx"}).status_code == 429
            assert c.get("/livez").status_code == 200 and c.get("/jobs").status_code == 401
            time.sleep(2.2)  # one failure's worth of the bucket refills (30 a minute)
            assert c.get("/jobs", headers=AUTH).status_code == 200
    finally:
        served.stop()


def test_an_early_401_closes_the_connection_instead_of_reading_a_huge_body(server: Server) -> None:
    sock = server.connect()
    try:
        sock.sendall(
            f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
        )
        chunk = b"10000\r\n" + b"#" * 0x10000 + b"\r\n"
        sent = 0
        with pytest.raises(OSError):
            while sent < 100 << 20:
                sock.sendall(chunk)
                sent += len(chunk)
        assert sent < 32 << 20, f"the server read {sent >> 20} MiB after answering 401"
    finally:
        sock.close()


def test_a_body_that_stops_arriving_gets_408(server: Server) -> None:
    sock = server.connect()
    try:
        sock.sendall(
            f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 100\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n\r\nkey=".encode()
        )
        sock.settimeout(6)
        answer = sock.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408")
    finally:
        sock.close()


def test_a_body_sent_a_byte_at_a_time_is_cut_off(server: Server) -> None:
    sock = server.connect()
    try:
        sock.sendall(
            f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 100000\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n\r\n".encode()
        )
        start = time.monotonic()
        answer = b""
        sock.settimeout(0.5)
        while time.monotonic() - start < 8 and not answer:
            try:
                sock.sendall(b"k")  # never a pause of 2 s, but far under 16 KiB/s
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                break
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - start < 4
    finally:
        sock.close()


def test_requests_without_a_key_cannot_take_the_slots_of_clients_with_one(server: Server) -> None:
    slow = []
    try:
        for _ in range(16):  # a quarter of the 64 request slots: slow logins that never finish
            sock = server.connect()
            sock.sendall(
                f"POST /login HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nContent-Length: 100\r\n"
                "Content-Type: application/x-www-form-urlencoded\r\n\r\nkey=".encode()
            )
            slow.append(sock)
        time.sleep(0.3)
        unkeyed = httpx.post(server.url + "/login", data={"key": "x"}, timeout=5)
        assert unkeyed.status_code == 503 and unkeyed.headers["retry-after"] == "1"
        assert httpx.get(server.url + "/jobs", headers=AUTH, timeout=5).status_code == 200
        assert httpx.get(server.url + "/livez", timeout=5).status_code == 200
    finally:
        for sock in slow:
            sock.close()


def test_a_64_mib_upload_is_checked_in_bounded_memory(client: httpx.Client, server: Server, tmp_path: Path) -> None:
    record = json.dumps({"instruction": "x" * 900, "output": "y" * 100}).encode() + b"\n"
    upload = tmp_path / "big.jsonl"
    count = (63 << 20) // len(record)
    with open(upload, "wb") as out:
        for _ in range(count // 1000):
            out.write(record * 1000)
    server.reset_peak()
    before = server.memory("VmHWM")
    with open(upload, "rb") as handle:
        answer = client.post("/datasets/validate", files={"file": ("big.jsonl", handle)}, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["records"] == count // 1000 * 1000 and answer.json()["valid"]
    assert server.memory("VmHWM") - before < 64, "a 64 MiB upload must not be held (or parsed) whole"
