"""Connection limits uvicorn does not have, in a subclass of its h11 protocol.

What uvicorn (0.30 to 0.55) cannot do, and why idle sockets took the API down:
* it starts no timer when a connection opens, so a socket that never sends a byte stays open
  for ever; its only timer is the keep-alive timer armed after a response, and any byte
  cancels it, so a request head sent one byte at a time is never cut off (slowloris);
* `limit_concurrency` counts open connections, idle ones included, and answers 503 to every
  request over it, `/livez` too;
* it has no notion of a client: one address can hold every connection.

So the server runs with `limit_concurrency=None` (requests in progress are limited by
`runner.api.guard`, where `/livez` is exempt) and with `protocol_class(limits)`, which adds:
* a deadline for the first byte of a connection and one for completing each request head;
* caps on connections per client address and in all; a connection over a cap first closes the
  oldest one of the same address (or any, for the total) that has not sent a complete request
  head, else the oldest idle keep-alive one; it is refused only when all are answering requests.
  Sockets that send nothing (or send one request and idle) can then never keep a request out.

This module is the one place that depends on uvicorn's internals: `H11Protocol` and its
`conn` (the h11 connection, whose public `their_state` and `trailing_data` tell whether a request
head is complete), `transport`, `client`, and the hooks `connection_made`, `data_received`,
`connection_lost` and `on_response_complete`. `tests/api/test_hostile.py` runs the attacks
against a real server with the installed uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from runner.api.limits import Limits

__all__ = ["ConnectionTable", "connection_budget", "protocol_class"]

log = logging.getLogger("runner.api")

# what a connection is doing, in the order they are closed to make room: waiting for a request head,
# idle between requests (also closed by the keep-alive timeout), answering a request (never)
WAITING, KEPT_ALIVE, BUSY = 0, 1, 2


class ConnectionTable:
    """The open connections, oldest first, per client address and in all (one event loop, no lock)."""

    def __init__(self, per_client: int, total: int) -> None:
        self.per_client, self.total = per_client, total
        self.every: dict[Any, None] = {}
        self.by_client: dict[str, dict[Any, None]] = {}

    def admit(self, conn: Any, client: str) -> bool:
        """Register `conn`, closing idle ones to stay under the caps; False when it must be refused."""
        mine = self.by_client.setdefault(client, {})
        for pool, cap in ((mine, self.per_client), (self.every, self.total)):
            if len(pool) >= cap and not self._close_idle(pool):
                if not mine:
                    del self.by_client[client]
                return False
        mine[conn] = None
        self.every[conn] = None
        return True

    def remove(self, conn: Any, client: str) -> None:
        self.every.pop(conn, None)
        mine = self.by_client.get(client)
        if mine is not None:
            mine.pop(conn, None)
            if not mine:
                del self.by_client[client]

    def _close_idle(self, pool: dict[Any, None]) -> bool:
        """Close the oldest connection that has not sent a complete request head, else the oldest
        kept alive between requests (last: closing one races with a request its client may be
        sending on it that moment, an error that client then sees)."""
        for wanted in (WAITING, KEPT_ALIVE):
            victim = next((conn for conn in pool if conn.activity == wanted), None)
            if victim is not None:
                victim.close_idle("closed to make room for a new connection")
                return True
        return False


def connection_budget(wanted: int) -> int:
    """`wanted` open connections, within what the process may open: the soft limit on open files is
    raised towards the hard one if needed, and 64 descriptors stay free for files and the daemon."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = wanted + 64
    if soft != resource.RLIM_INFINITY and soft < need:
        raised = need if hard == resource.RLIM_INFINITY else min(need, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
        except (ValueError, OSError):
            pass
    return wanted if soft == resource.RLIM_INFINITY else max(16, min(wanted, soft - 64))


def protocol_class(limits: Limits) -> type[H11Protocol]:
    """An h11 protocol class for one server, with its own connection table."""
    total = connection_budget(limits.max_connections)
    if total < limits.max_connections:
        log.warning("at most %d open connections (the limit on open files), not %d", total, limits.max_connections)
    table = ConnectionTable(min(limits.max_connections_per_client, total), total)

    class LimitedH11Protocol(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.activity, self.head_started = WAITING, False
            self.deadline: asyncio.TimerHandle | None = None
            self.address = self.client[0] if self.client else "?"
            if not table.admit(self, self.address):
                log.warning(
                    "refused a connection from %s: every connection under the caps is answering a request", self.address
                )
                self.activity = BUSY  # never chosen to make room while it closes
                transport.close()
                return
            self._arm(limits.first_byte_timeout, "no request byte")

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            table.remove(self, self.address)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.activity == KEPT_ALIVE:  # the first byte of the next request
                self.activity, self.head_started = WAITING, False
            if self.activity == WAITING and not self.head_started:
                self.head_started = True
                self._arm(limits.header_timeout, "request head not complete")
            super().data_received(data)
            if self.activity == WAITING and self.conn.their_state is not h11.IDLE:
                self.activity = BUSY  # the head is complete: the request is being answered
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()  # arms uvicorn's keep-alive timer, may start a pipelined request
            if self.transport.is_closing():
                return
            if self.conn.their_state is not h11.IDLE:
                self.activity = BUSY
            elif self.conn.trailing_data[0]:  # part of the next head is already here
                self.activity, self.head_started = WAITING, True
                self._arm(limits.header_timeout, "request head not complete")
            else:
                self.activity = KEPT_ALIVE
                self._disarm()

        def close_idle(self, why: str) -> None:
            self._disarm()
            self.activity = BUSY
            log.info("closing a connection from %s: %s", self.address, why)
            self.transport.close()

        def _arm(self, seconds: float, why: str) -> None:
            self._disarm()
            self.deadline = self.loop.call_later(seconds, self._expire, f"{why} within {seconds:g} s")

        def _disarm(self) -> None:
            if getattr(self, "deadline", None) is not None:
                self.deadline.cancel()  # type: ignore[union-attr]
                self.deadline = None

        def _expire(self, why: str) -> None:
            self.deadline = None
            if self.activity != BUSY and not self.transport.is_closing():
                self.close_idle(why)

    return LimitedH11Protocol
