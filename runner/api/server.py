"""uvicorn on a socket bound up front: in the foreground (`runner serve`) or beside the daemon.

The socket is bound before anything starts, so a port in use is a clear error at once instead
of a log line from a thread. Beside the daemon the server runs in a thread of the daemon's
process: uvicorn installs no signal handlers outside the main thread, so SIGTERM and SIGINT
keep going to the daemon's own handlers (which checkpoint the running job), and the API stops
after the daemon has.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from runner.api.limits import Limits
from runner.api.settings import ApiConfigError, ApiSettings

__all__ = ["BackgroundServer", "bind", "serve_foreground"]


def bind(settings: ApiSettings) -> socket.socket:
    """A listening-ready socket on the settings' address; `ApiConfigError` says why it cannot be."""
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    # IPPROTO_TCP named, not 0: asyncio turns Nagle off (TCP_NODELAY) only on sockets whose proto says
    # TCP; with proto 0 every answer's body waited ~40 ms for the client's delayed ACK of its headers.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise ApiConfigError(
            f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}; "
            "is another process using the port? choose another with --api HOST:PORT"
        ) from None
    sock.set_inheritable(False)  # the daemon's job processes must not hold the API's port
    return sock


def _config(app: Any, limits: Limits) -> Any:
    """uvicorn's settings: its connection-counting `limit_concurrency` is off (see
    `runner.api.connections`); the h11 protocol with our deadlines and caps; the header size cap."""
    import uvicorn

    from runner.api.connections import protocol_class

    return uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        proxy_headers=False,
        server_header=False,
        lifespan="off",
        http=protocol_class(limits),
        ws="none",
        limit_concurrency=None,
        timeout_keep_alive=limits.keep_alive_timeout,  # type: ignore[arg-type]  # a float works (call_later)
        h11_max_incomplete_event_size=limits.max_header_size,
        timeout_graceful_shutdown=3,
    )


class BackgroundServer:
    """The API in a thread of this process."""

    def __init__(self, app: Any, sock: socket.socket, limits: Limits) -> None:
        import uvicorn

        self.server = uvicorn.Server(_config(app, limits))
        self.sock = sock
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [sock]}, name="runner-api", daemon=True
        )

    def start(self, timeout: float = 15.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ApiConfigError("the API server did not start (see the messages above)")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        self.sock.close()


def serve_foreground(app: Any, sock: socket.socket, limits: Limits) -> int:
    """Serve until SIGINT/SIGTERM (uvicorn's handlers, in the main thread)."""
    import uvicorn

    try:
        uvicorn.Server(_config(app, limits)).run(sockets=[sock])
    finally:
        sock.close()
    return 0
