"""The outermost layer of the API: what is refused before any route runs.

* Host allowlist (DNS rebinding): a web page on an attacker's domain can make a browser on this
  machine send requests to 127.0.0.1 under the attacker's name; those carry the attacker's Host
  header, so only the names the API was started for are answered. Checked on every path.
* Request size: a declared Content-Length over the limit is refused at once; a chunked body is
  counted as it arrives and cut off at the limit. Job files and JSON get `max_body`; only
  `/datasets/validate` (an uploaded data file) gets `max_upload`.
* Security headers on every response: no sniffing, no framing, no referrer, a CSP that allows
  only the dashboard's own script and style, and no caching of API answers.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from runner.api.settings import ApiSettings, normalize_host

__all__ = ["Guard", "UPLOAD_PATHS"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PATHS = frozenset({"/datasets/validate"})
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", CSP.encode()),
)


class _TooLarge(Exception):
    pass


async def _json(send: Send, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"cache-control", b"no-store"), *SECURITY_HEADERS, *headers]})
    await send({"type": "http.response.body", "body": body})


class Guard:
    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: no request to check
            await self.app(scope, receive, send)
            return
        hosts = [value.decode("latin-1") for name, value in scope["headers"] if name.lower() == b"host"]
        if len(hosts) != 1 or normalize_host(hosts[0]) not in self.settings.allowed_hosts:
            shown = hosts[0] if len(hosts) == 1 else ("none" if not hosts else "several")
            # The allowed names are not listed: the refused page may belong to an attacker.
            await _json(send, 400, f"Host header {shown!r} is not allowed here; to reach the API under "
                                   "another name, start it with --api-allow-host NAME")
            return
        limit = self.settings.max_upload if scope["path"] in UPLOAD_PATHS else self.settings.max_body
        for name, value in scope["headers"]:
            if name.lower() == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _json(send, 400, "Content-Length is not a number")
                    return
                if declared > limit:
                    await _json(send, 413, f"request body of {declared} bytes is over the limit of {limit} bytes "
                                           f"for {scope['path']}", ((b"connection", b"close"),))
                    return
        received = 0
        started = False
        refused = False

        async def counted_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit and not started:
                    refused = True
                    await _json(send, 413, f"request body is over the limit of {limit} bytes for {scope['path']}",
                                ((b"connection", b"close"),))
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the 413 went out; whatever the app makes of the cut-off body is dropped
                return
            if message["type"] == "http.response.start":
                started = True
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [h for h in SECURITY_HEADERS if h[0] not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                message["headers"] = [*message.get("headers", []), *extra]
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not refused:
                raise
