"""The HTTP API and dashboard: a thin shell over the runs root, the jobs folder and the daemon.

It reads what every other command reads (status.json, metrics.jsonl, the daemon's lock and
state) and writes only what a user could write by hand: a job file into the jobs folder (the
daemon picks it up as it picks up any file) and a cancel request (as `runner cancel` does).
Nothing below it imports it. Closed by default: see `runner.api.auth` and `runner.api.guard`.

    limits       every limit (connections, requests, bodies, answers) with its default and flag
    settings     who may connect and what they may name (keys, hosts, data roots, the limits)
    auth         API keys (sha256 digests, constant-time), the wrong-key throttle, dashboard sessions
    connections  uvicorn's h11 protocol with connection deadlines and per-client caps
    guard        ASGI middleware: Host allowlist, Origin checks, requests in progress, body limits, headers
    confine      paths in requests must lie under the allowed data roots
    errors       `ApiError` and the cap on error lists in answers
    views        the endpoints' reads, as plain functions over the settings
    submit       POST /jobs: checked, then written without racing other submissions
    datacheck    POST /datasets/validate: a data file checked one record at a time
    chart      small server-side SVG line charts
    dashboard  the HTML pages
    app        the FastAPI application
    server     uvicorn on a socket bound up front, in the foreground or beside the daemon
    cli        `runner serve` and the `--api` options of `runner watch`
"""

from runner.api.settings import ApiConfigError, ApiSettings

__all__ = ["ApiConfigError", "ApiSettings"]
