"""Every limit of the HTTP API in one place: its default, its flag and what it bounds.

Connections (enforced by `runner.api.connections` under uvicorn), requests (`runner.api.guard`),
authentication (`runner.api.auth`) and what a request may contain (`runner.api.submit`,
`runner.api.datacheck`, the answers' error lists). `runner serve` and `runner watch --api` get one
flag per limit from `add_limit_options`; the README's limits table is `markdown_table()` (a test
keeps the two equal).
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any

from runner.spec.limits import MAX_KEYS, MAX_NESTING_DEPTH
from runner.units import parse_size as _parse_size

__all__ = ["Limits", "add_limit_options", "limits_from_args", "markdown_table", "parse_size"]

KIB, MIB = 1 << 10, 1 << 20


def parse_size(text: str) -> int:
    """`64MiB`, `64M`, `1MB`, `1000000` -> bytes (`runner.units`: MB = 10^6, MiB = M = 2^20)."""
    try:
        return _parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _seconds(text: str) -> float:
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds, e.g. 5 or 0.5") from None
    if not 0 < value <= 86400 * 7:
        raise argparse.ArgumentTypeError(f"{text!r}: expected seconds between 0 (excluded) and 604800")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected at least 1")
    return value


_PARSERS = {"seconds": _seconds, "size": parse_size, "count": _count}


def _limit(default: float | int, flag: str, kind: str, what: str) -> Any:
    return field(default=default, metadata={"flag": flag, "kind": kind, "what": what})


@dataclass(frozen=True)
class Limits:
    # connections
    first_byte_timeout: float = _limit(
        5.0,
        "--api-timeout-first-byte",
        "seconds",
        "time from opening a connection to its first request byte (then it is closed)",
    )
    header_timeout: float = _limit(
        10.0,
        "--api-timeout-headers",
        "seconds",
        "time from a request's first byte to the end of its headers (then the connection is closed)",
    )
    keep_alive_timeout: float = _limit(
        5.0,
        "--api-timeout-keep-alive",
        "seconds",
        "idle time of a keep-alive connection between requests (then it is closed)",
    )
    body_timeout: float = _limit(
        15.0,
        "--api-timeout-body",
        "seconds",
        "pause while a request body arrives; after this long a body must also average 16 KiB/s (else 408 "
        "and the connection is closed)",
    )
    max_connections_per_client: int = _limit(
        256,
        "--api-max-connections-per-client",
        "count",
        "open connections per client address (over it, that address's oldest connection without a "
        "complete request head, else its oldest idle keep-alive one, is closed to make room; if all are "
        "answering requests, the new one is refused)",
    )
    max_connections: int = _limit(
        1024, "--api-max-connections", "count", "open connections in all (the same rule, over all addresses)"
    )
    max_requests: int = _limit(
        64,
        "--api-max-requests",
        "count",
        "requests being answered at once, a quarter of it for requests without a valid key (over it, 503 "
        "with Retry-After; `/livez` is always answered and idle connections never count)",
    )
    max_header_size: int = _limit(
        16 * KIB, "--api-max-header-size", "size", "request line and headers of one request (over it, 400)"
    )
    # authentication
    auth_failures_per_minute: int = _limit(
        10,
        "--api-auth-failures-per-minute",
        "count",
        "wrong keys per minute from one client address, in bursts of as many (over it, 429 with "
        "Retry-After for any key from that address)",
    )
    session_ttl: float = _limit(
        43200.0,
        "--api-session-ttl",
        "seconds",
        "lifetime of a dashboard login (logging out or a restart ends it sooner)",
    )
    max_sessions: int = _limit(
        256, "--api-max-sessions", "count", "dashboard logins kept at once (over it, the one closest to expiry ends)"
    )
    # what a request may hold
    max_body: int = _limit(MIB, "--api-max-body", "size", "a job file, a JSON body or a login form (over it, 413)")
    max_upload: int = _limit(
        64 * MIB,
        "--api-max-upload",
        "size",
        "a data file uploaded to `/datasets/validate` (multipart; streamed to disk, checked record by record)",
    )
    max_record: int = _limit(
        MIB,
        "--api-max-record",
        "size",
        "one record of a data file checked by `/datasets/validate` (a longer one is a bad record)",
    )
    max_table: int = _limit(
        16 * MIB,
        "--api-max-table",
        "size",
        "a plain-text, CSV, TSV or Parquet file checked by `/datasets/validate` (read whole, as "
        "`runner data validate` reads it, not record by record; over it, 413)",
    )
    max_files: int = _limit(
        1000,
        "--api-max-files",
        "count",
        "data files named by one request: `path` of `/datasets/validate`, `data.train` + `data.eval` of a "
        "submitted job (over it, 422)",
    )
    job_max_depth: int = _limit(
        MAX_NESTING_DEPTH,
        "--api-job-max-depth",
        "count",
        "nesting of a submitted job file: tables, dotted-key parts, arrays (checked before parsing; 422; "
        "at most the limit of `runner/spec/limits.py`)",
    )
    job_max_keys: int = _limit(
        MAX_KEYS,
        "--api-job-max-keys",
        "count",
        "keys of a submitted job file, dotted parts one each (checked before parsing; 422; at most the "
        "limit of `runner/spec/limits.py`)",
    )
    max_errors: int = _limit(
        100,
        "--api-max-errors",
        "count",
        "entries of an error list in an answer (the total is always given; each message is cut at 1,000 characters)",
    )

    def __post_init__(self) -> None:
        if self.max_upload < 1024 or self.max_body < 1024:
            raise ValueError("--api-max-body and --api-max-upload must allow at least 1024 bytes")
        if self.job_max_depth > MAX_NESTING_DEPTH or self.job_max_keys > MAX_KEYS:
            raise ValueError(
                f"--api-job-max-depth and --api-job-max-keys can only lower the job-file limits of "
                f"runner.spec.limits (nesting {MAX_NESTING_DEPTH}, keys {MAX_KEYS})"
            )
        if self.max_record > self.max_upload:
            object.__setattr__(self, "max_record", self.max_upload)


def _fields() -> list[dataclasses.Field[Any]]:
    return list(dataclasses.fields(Limits))


def add_limit_options(parser: argparse.ArgumentParser) -> None:
    """One flag per limit (default None: the Limits default applies)."""
    group = parser.add_argument_group("API limits (see the README's limits table)")
    for spec in _fields():
        meta = spec.metadata
        group.add_argument(
            meta["flag"],
            type=_PARSERS[meta["kind"]],
            default=None,
            dest=_dest(spec),
            metavar=meta["kind"].upper(),
            help=f"{meta['what']} (default {_shown(spec)})",
        )


def _dest(spec: dataclasses.Field[Any]) -> str:
    """argparse's own name for the flag: `--api-max-upload` -> `api_max_upload`."""
    return str(spec.metadata["flag"]).removeprefix("--").replace("-", "_")


def limits_from_args(args: argparse.Namespace) -> Limits:
    given = {
        spec.name: getattr(args, _dest(spec)) for spec in _fields() if getattr(args, _dest(spec), None) is not None
    }
    return Limits(**given)


def _shown(spec: dataclasses.Field[Any]) -> str:
    value, kind = spec.default, spec.metadata["kind"]
    if not isinstance(value, int | float):
        return str(value)
    if kind == "seconds":
        return f"{value / 3600:g} h" if value >= 3600 and value % 3600 == 0 else f"{value:g} s"
    if kind == "size":
        return f"{value // MIB} MiB" if value % MIB == 0 else f"{value // KIB} KiB"
    return f"{value:,}"


def markdown_table() -> str:
    """The README's limits table."""
    rows = ["| limit | default | flag |", "| --- | --- | --- |"]
    rows += [f"| {spec.metadata['what']} | {_shown(spec)} | `{spec.metadata['flag']}` |" for spec in _fields()]
    return "\n".join(rows)
