"""`runner serve` and the `--api` options of `runner watch`: argument parsing and start-up only.

`runner watch jobs/ --api 127.0.0.1:8200` serves the API from the daemon's process (one thing to
run; /readyz is then true while that daemon holds its lock). `runner serve jobs/` serves the same
API from a process of its own, beside a daemon started separately (it can be restarted, or run
as another user, without touching the running job).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from runner.api.limits import add_limit_options, limits_from_args
from runner.api.settings import DEFAULT_LISTEN, ApiConfigError, ApiSettings
from runner.commands.common import EXIT_USAGE, Subparsers

__all__ = ["add_api_options", "add_serve", "serve_command", "with_api"]


def add_api_options(parser: argparse.ArgumentParser, *, with_switch: bool = True) -> None:
    """The API's options; `with_switch` adds `--api [HOST:PORT]` (for `runner watch`)."""
    if with_switch:
        parser.add_argument(
            "--api",
            nargs="?",
            const=DEFAULT_LISTEN,
            metavar="HOST:PORT",
            help=f"also serve the HTTP API and dashboard (default address {DEFAULT_LISTEN}); "
            "a non-loopback address needs a key",
        )
    parser.add_argument(
        "--api-key-file",
        metavar="FILE",
        help="API keys, one per line (or sha256:HEX of a key); also read: $RUNNER_API_KEY",
    )
    parser.add_argument(
        "--api-allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests for this Host name (repeatable; default: loopback names and the listening address)",
    )
    parser.add_argument(
        "--api-data-root",
        action="append",
        default=[],
        metavar="DIR",
        help="paths in requests must lie under these folders (repeatable; default: the jobs folder's parent)",
    )
    parser.add_argument(
        "--api-behind-tls-proxy",
        action="store_true",
        help="the API is reached through a TLS reverse proxy that sets X-Forwarded-Proto: https; "
        "the dashboard cookie is then marked Secure for those requests",
    )
    add_limit_options(parser)  # one flag per limit of runner.api.limits


def _log(message: str) -> None:
    print(f"{datetime.now():%Y-%m-%d %H:%M:%S} runner api: {message}", file=sys.stderr, flush=True)


def _start(args: argparse.Namespace, listen: str) -> tuple[ApiSettings, Any, Any] | None:
    """Settings, the ASGI app and the bound socket; None (after saying why) when it cannot start."""
    from runner.api.app import create_app
    from runner.api.server import bind
    from runner.outputs.runs import runs_root
    from runner.watch.store import default_state_dir

    jobs_dir = Path(args.jobs_dir).absolute()
    try:
        settings = ApiSettings.build(
            jobs_dir=jobs_dir,
            runs_root=runs_root(args.runs_dir),
            state_dir=Path(args.state_dir).absolute() if args.state_dir else default_state_dir(jobs_dir),
            listen=listen,
            key_file=Path(args.api_key_file) if args.api_key_file else None,
            allow_hosts=args.api_allow_host,
            data_roots=[Path(p) for p in args.api_data_root],
            limits=limits_from_args(args),
            behind_tls_proxy=args.api_behind_tls_proxy,
        )
        sock = bind(settings)
    except (ApiConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    settings = dataclasses.replace(settings, port=sock.getsockname()[1])  # port 0: the one the kernel chose
    for note in settings.notes:
        _log(note)
    _log(
        f"serving {settings.url}/ (dashboard) and the API; keys from {', '.join(settings.keys.sources)}; "
        f"hosts {', '.join(sorted(settings.allowed_hosts))}; data roots {', '.join(map(str, settings.data_roots))}"
    )
    return settings, create_app(settings), sock


def with_api(args: argparse.Namespace, run: Callable[[], int]) -> int:
    """Run `run` (the daemon) with the API served beside it in this process."""
    from runner.api.server import BackgroundServer

    started = _start(args, args.api)
    if started is None:
        return EXIT_USAGE
    settings, app, sock = started
    server = BackgroundServer(app, sock, settings.limits)
    try:
        server.start()
    except ApiConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return run()
    finally:
        server.stop()


def serve_command(args: argparse.Namespace) -> int:
    from runner.api.server import serve_foreground

    started = _start(args, args.listen)
    if started is None:
        return EXIT_USAGE
    settings, app, sock = started
    return serve_foreground(app, sock, settings.limits)


def add_serve(sub: Subparsers) -> None:
    """Add `runner serve` to the top-level sub-parsers."""
    serve = sub.add_parser("serve", help="serve the HTTP API and dashboard of a jobs folder (beside `runner watch`)")
    serve.add_argument("jobs_dir", help="the jobs folder a `runner watch` daemon watches")
    serve.add_argument(
        "--listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"address to listen on (default {DEFAULT_LISTEN}); a non-loopback address needs a key",
    )
    serve.add_argument("--runs-dir", help="where runs are written (default: $RUNNER_RUNS or ./runs)")
    serve.add_argument("--state-dir", help="the daemon's state folder (default: JOBS_DIR/../.runner/watch-<name>)")
    add_api_options(serve, with_switch=False)
    serve.set_defaults(func=serve_command)
