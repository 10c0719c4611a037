"""The limits in one place (defaults, flags, README table), the job-file pre-scan, sessions and the
wrong-key throttle, checked on their own."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from runner.api.auth import ApiKeys, FailureThrottle, Gate, Sessions
from runner.api.limits import Limits, add_limit_options, limits_from_args, markdown_table
from runner.api.prescan import TooDeep, scan_toml

REPO = Path(__file__).resolve().parents[2]


def test_the_readme_limits_table_is_the_one_the_code_has() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert markdown_table() in readme, "README's limits table is stale: paste runner.api.limits.markdown_table()"


def test_every_limit_has_a_flag_that_sets_it() -> None:
    parser = argparse.ArgumentParser()
    add_limit_options(parser)
    defaults = limits_from_args(parser.parse_args([]))
    assert defaults == Limits()
    given = limits_from_args(parser.parse_args(["--api-timeout-first-byte", "0.5", "--api-max-body", "2MiB",
                                                "--api-job-max-depth", "8", "--api-max-errors", "7"]))
    assert (given.first_byte_timeout, given.max_body, given.job_max_depth, given.max_errors) == (0.5, 2 << 20, 8, 7)
    for bad in (["--api-timeout-headers", "0"], ["--api-max-upload", "lots"], ["--api-max-requests", "-3"]):
        with pytest.raises(SystemExit):
            parser.parse_args(bad)


def _scan(text: str, depth: int = 16, keys: int = 2000) -> None:
    scan_toml(text, max_depth=depth, max_keys=keys)


@pytest.mark.parametrize("path", sorted((REPO / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_job_file_passes_the_prescan_with_the_defaults(path: Path) -> None:
    limits = Limits()
    scan_toml(path.read_text(encoding="utf-8"), max_depth=limits.job_max_depth, max_keys=limits.job_max_keys)


@pytest.mark.parametrize(("text", "depth"), [
    ("a.b.c.d = 1", 4),
    ("[a.b]\nc.d = 1", 4),
    ("[[a.b]]\nc = 1", 4),  # an array of tables is one more level
    ("x = [[[1]]]", 4),
    ("x = {a = {b = {c = 1}}}", 4),
    ("x = [{a.b = [1]}]", 5),
    ('"a.b.c" = 1', 1),  # a quoted key is one key, dots and all
    ('x = "[[[[[[ {{{{ a.b.c.d"', 1),  # brackets inside strings are text
    ("x = '''\n[[[[[[\n'''\ny = 1", 1),
    ('x = """\n\\"""[[[[[[ """\ny = 1', 1),
    ("x = 1.5e3 # a.b.c.d.e [[[[", 1),
    ("[a]\nb = 1\n[c.d.e]\nf = 2", 4),
])
def test_the_prescan_measures_depth_like_the_parser_builds_it(text: str, depth: int) -> None:
    _scan(text, depth=depth)
    with pytest.raises(TooDeep, match="nested"):
        _scan(text, depth=depth - 1)


def test_the_prescan_stops_a_dotted_key_bomb_at_once() -> None:
    text = 'name = "d"\n' + ".".join(["a"] * 100_000) + " = 1\n"
    start = time.perf_counter()
    with pytest.raises(TooDeep) as caught:
        _scan(text)
    assert caught.value.line == 2 and time.perf_counter() - start < 0.5
    with pytest.raises(TooDeep, match="more than 10 keys"):
        _scan("".join(f"k{i} = 1\n" for i in range(11)), keys=10)


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
