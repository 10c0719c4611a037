"""The outermost layer of the API: what is refused before any route runs.

* Host allowlist (DNS rebinding): a web page on an attacker's domain can make a browser on this
  machine send requests to 127.0.0.1 under the attacker's name; those carry the attacker's Host
  header, so only the names the API was started for are answered. Checked on every path.
* Cross-origin writes: a POST whose `Origin` is not this server (or whose `Sec-Fetch-Site` says
  cross-site) is refused, /login and /logout included: no login or logout forged by another page.
* Requests in progress: at most `max_requests` with a valid key or session, and a quarter of that
  without (503 with Retry-After beyond), so requests without a key (a login form sent a byte at a
  time) cannot take the slots of clients with one; `/livez` is always answered and idle
  connections never count (their limits are in `runner.api.connections`).
* Request bodies: a declared Content-Length over the limit is refused at once; a chunked body is
  counted as it arrives and cut off at the limit; a body that pauses for `body_timeout`, or
  averages under 16 KiB/s after that long, gets 408. Job files, JSON and forms get `max_body`; only a multipart upload to
  `/datasets/validate` gets `max_upload`. An answer sent before the body was read (an early 401)
  closes the connection, so the rest of the body is never read.
* Security headers on every response: no sniffing, no framing, no referrer, a CSP that allows
  only the dashboard's own script and style, and no caching of API answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import urlsplit

from runner.api.settings import ApiSettings, normalize_host

__all__ = ["UPLOAD_PATHS", "Guard", "arrival"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PATHS = frozenset({"/datasets/validate"})
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", CSP.encode()),
)


class _Refused(Exception):
    """The guard answered (408, 413) in the app's place."""


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MIN_BODY_RATE = 16 * 1024  # bytes/s a body must average after its first `body_timeout` seconds
_ARRIVALS = itertools.count(1)


def arrival() -> int:
    """The next number of one sequence: requests take one when their head is complete (kept in
    `scope["state"]["arrival"]`), a write takes one when it happens, so "did this request arrive
    before that write" is a comparison."""
    return next(_ARRIVALS)


CLOSE = ((b"connection", b"close"),)


async def _json(send: Send, status: int, detail: str, headers: tuple[tuple[bytes, bytes], ...] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
                *SECURITY_HEADERS,
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> list[str]:
    return [value.decode("latin-1") for key, value in scope["headers"] if key.lower() == name]


def _foreign_origin(scope: Scope, host: str) -> str | None:
    """What makes a state-changing request cross-origin: an `Origin` other than this server's
    (scheme aside: a TLS proxy may sit in front), or a browser's `Sec-Fetch-Site` saying so.
    Clients that send neither (curl, scripts) are not browsers acting for a page."""
    origins = _header(scope, b"origin")
    if origins:
        netloc = urlsplit(origins[0]).netloc if "://" in origins[0] else ""
        if netloc.lower() != host.lower():
            return f"Origin {origins[0][:200]!r}"
    site = _header(scope, b"sec-fetch-site")
    if site and site[0].strip().lower() in ("cross-site", "same-site"):
        return f"Sec-Fetch-Site: {site[0][:40]}"
    return None


class Guard:
    def __init__(self, app: ASGIApp, settings: ApiSettings, keyed: Callable[[Scope], bool] | None = None) -> None:
        self.app = app
        self.settings = settings
        self.keyed = keyed or (lambda _scope: False)
        self.in_flight = {True: 0, False: 0}  # requests in progress: with a valid key or session, without

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan: no request to check
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["arrival"] = arrival()
        refusal = self._refusal(scope)
        if refusal is not None:
            await _json(send, *refusal)
            return
        if scope["path"] == "/livez":  # tells nothing, costs nothing: always answered
            await self._guarded(scope, receive, send)
            return
        keyed = self.keyed(scope)
        cap = self.settings.limits.max_requests
        cap = cap if keyed else max(1, cap // 4)
        if self.in_flight[keyed] >= cap:
            whose = "requests" if keyed else "requests without a key"
            await _json(
                send, 503, f"the server is answering {cap} {whose}; retry in a moment", ((b"retry-after", b"1"),)
            )
            return
        self.in_flight[keyed] += 1
        try:
            await self._guarded(scope, receive, send)
        finally:
            self.in_flight[keyed] -= 1

    def _refusal(self, scope: Scope) -> tuple[int, str, tuple[tuple[bytes, bytes], ...]] | None:
        """Host allowlist, cross-origin writes and a declared body over the limit: refused at once."""
        hosts = _header(scope, b"host")
        if len(hosts) != 1 or normalize_host(hosts[0]) not in self.settings.allowed_hosts:
            shown = hosts[0][:200] if len(hosts) == 1 else ("none" if not hosts else "several")
            # The allowed names are not listed: the refused page may belong to an attacker.
            return (
                400,
                (
                    f"Host header {shown!r} is not allowed here; to reach the API under another name, "
                    "start it with --api-allow-host NAME"
                ),
                (),
            )
        if scope["method"] not in SAFE_METHODS:
            foreign = _foreign_origin(scope, hosts[0])
            if foreign is not None:
                return 403, f"cross-origin request refused ({foreign}): send it from this server's own pages", ()
        limit = self._limit(scope)
        for value in _header(scope, b"content-length"):
            if not value.strip().isdigit():
                return 400, "Content-Length is not a number", CLOSE
            if int(value) > limit:
                return (
                    413,
                    (
                        f"request body of {int(value)} bytes is over the limit of {limit} bytes for "
                        f"{scope['path']}{_hint(scope)}"
                    ),
                    CLOSE,
                )
        return None

    def _limit(self, scope: Scope) -> int:
        """Only a multipart upload to /datasets/validate gets the upload limit; JSON and the rest get max_body."""
        if scope["path"] in UPLOAD_PATHS:
            kind = (_header(scope, b"content-type") or [""])[0].split(";")[0].strip().lower()
            if kind == "multipart/form-data":
                return self.settings.max_upload
        return self.settings.max_body

    async def _guarded(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit, timeout = self._limit(scope), self.settings.limits.body_timeout
        has_body = any(_header(scope, b"transfer-encoding")) or any(
            v.strip() not in ("", "0") for v in _header(scope, b"content-length")
        )
        received = 0
        body_done = not has_body
        started = False
        refused = False

        async def refuse(status: int, detail: str) -> None:
            nonlocal refused
            if not started:
                refused = True
                await _json(send, status, detail, CLOSE)

        began = time.monotonic()

        async def counted_receive() -> Message:
            nonlocal received, body_done
            if body_done:
                return await receive()
            # no pause over `timeout`, and on average at least MIN_BODY_RATE once `timeout` has passed:
            # a body sent a byte at a time cannot hold a request slot for long
            left = min(timeout, began + timeout + received / MIN_BODY_RATE - time.monotonic())
            try:
                message = await asyncio.wait_for(receive(), max(left, 0.001))
            except TimeoutError:
                await refuse(
                    408,
                    f"the request body arrives too slowly (a pause of {timeout:g} s, or under "
                    f"{MIN_BODY_RATE // 1024} KiB/s on average)",
                )
                raise _Refused from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > limit:
                    await refuse(
                        413, f"request body is over the limit of {limit} bytes for {scope['path']}{_hint(scope)}"
                    )
                    raise _Refused
            else:
                body_done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:  # the refusal went out; whatever the app makes of the cut-off body is dropped
                return
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = [h for h in SECURITY_HEADERS if h[0] not in present]
                if b"cache-control" not in present:
                    extra.append((b"cache-control", b"no-store"))
                if not body_done and b"connection" not in present:
                    # answered before the body was read (an early 401, a 4xx): close rather than read
                    # and throw away the rest of it
                    extra.append((b"connection", b"close"))
                message["headers"] = [*headers, *extra]
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except _Refused:
            pass
        except Exception:
            if not refused:
                raise


def _hint(scope: Scope) -> str:
    if scope["path"] in UPLOAD_PATHS:
        return " (JSON bodies have the --api-max-body limit; send a data file as multipart/form-data)"
    return ""
