"""The HTTP API and dashboard: a thin shell over the runs root, the jobs folder and the daemon.

It reads what every other command reads (status.json, metrics.jsonl, the daemon's lock and
state) and writes only what a user could write by hand: a job file into the jobs folder (the
daemon picks it up as it picks up any file) and a cancel request (as `runner cancel` does).
Nothing below it imports it. Closed by default: see `runner.api.auth` and `runner.api.guard`.

    settings   who may connect and what they may name (keys, hosts, data roots, size limits)
    auth       API keys (kept as sha256 digests, compared in constant time), the dashboard cookie
    guard      ASGI middleware: Host allowlist, request size limits, security headers
    confine    paths in requests must lie under the allowed data roots
    views      the endpoints' work, as plain functions over the settings
    chart      small server-side SVG line charts
    dashboard  the HTML pages
    app        the FastAPI application
    server     uvicorn on a socket bound up front, in the foreground or beside the daemon
    cli        `runner serve` and the `--api` options of `runner watch`
"""

from runner.api.settings import ApiConfigError, ApiSettings

__all__ = ["ApiConfigError", "ApiSettings"]
