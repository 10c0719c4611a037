"""API keys: where they come from, how they are kept, how a request proves it has one.

* Keys come from `RUNNER_API_KEY` and/or a key file (`--api-key-file`: one key per line, or
  `sha256:HEX` lines so the file need not hold the keys themselves). Only their sha256 digests
  are kept in memory; a presented key is hashed and compared with every digest in constant time
  (`hmac.compare_digest`, no early exit), so neither timing nor a memory dump gives a key away.
* A request presents a key as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
* A browser cannot add headers to a page load, so `POST /login` trades a key for a session
  cookie (HttpOnly, SameSite=Strict, an expiry; Secure over TLS): a random token per login, known
  to this process only, ended by `POST /logout`. The cookie is accepted for reads only (GET/HEAD):
  submitting or cancelling jobs always needs the header, so a forged cross-site form can never act
  with it.
* Wrong keys are throttled per client address (`FailureThrottle`): over the limit, requests with
  a key get 429 until the bucket refills, so keys cannot be guessed at network speed.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "COOKIE_NAME",
    "KEY_ENV",
    "MIN_KEY_LENGTH",
    "ApiKeyError",
    "ApiKeys",
    "FailureThrottle",
    "Gate",
    "Sessions",
    "Verdict",
    "generated_key",
    "presented_key",
]

KEY_ENV = "RUNNER_API_KEY"
MIN_KEY_LENGTH = 16
COOKIE_NAME = "runner_session"
GENERATED_KEY_FILE = "api.key"
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ApiKeyError(ValueError):
    """A key source that cannot be used (too short, unreadable, malformed); says where and how to fix it."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _check_length(key: str, where: str) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise ApiKeyError(f"{where}: an API key needs at least {MIN_KEY_LENGTH} characters (make one with {_MAKE_ONE})")


@dataclass(frozen=True)
class ApiKeys:
    """The accepted keys, as digests only."""

    digests: tuple[bytes, ...] = ()
    sources: tuple[str, ...] = ()  # where they came from, for the start-up message (never the keys)
    warnings: tuple[str, ...] = ()

    @property
    def configured(self) -> bool:
        return bool(self.digests)

    @classmethod
    def load(cls, *, env: Mapping[str, str] | None = None, key_file: Path | None = None) -> ApiKeys:
        """Keys from `RUNNER_API_KEY` and the key file (either or both); `ApiKeyError` names a bad one."""
        environ = os.environ if env is None else env
        digests: list[bytes] = []
        sources: list[str] = []
        warnings: list[str] = []
        value = environ.get(KEY_ENV, "").strip()
        if value:
            _check_length(value, f"${KEY_ENV}")
            digests.append(_digest(value))
            sources.append(f"${KEY_ENV}")
        if key_file is not None:
            try:
                text = key_file.read_text(encoding="utf-8")
                mode = key_file.stat().st_mode
            except OSError as exc:
                raise ApiKeyError(
                    f"{key_file}: cannot read the API key file ({exc.strerror}); check the path given to --api-key-file"
                ) from None
            raw_keys = 0
            for number, line in enumerate(text.splitlines(), start=1):
                entry = line.strip()
                if not entry or entry.startswith("#"):
                    continue
                hashed = _HASHED.match(entry)
                if hashed:
                    digests.append(bytes.fromhex(hashed.group(1)))
                else:
                    _check_length(entry, f"{key_file}:{number}")
                    digests.append(_digest(entry))
                    raw_keys += 1
            if len(digests) == (1 if value else 0):
                raise ApiKeyError(
                    f"{key_file}: no key in the API key file; write one key per line "
                    f"(or sha256:HEX of a key), e.g. from {_MAKE_ONE}"
                )
            if raw_keys and mode & 0o077:
                warnings.append(
                    f"{key_file} holds keys and is readable by other users; chmod 600 it "
                    "(or store sha256:HEX lines instead of the keys)"
                )
            sources.append(str(key_file))
        return cls(tuple(digests), tuple(sources), tuple(warnings))

    @classmethod
    def of(cls, key: str, source: str) -> ApiKeys:
        """One key (e.g. a generated one), kept as its digest."""
        _check_length(key, source)
        return cls((_digest(key),), (source,))

    def check(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys; the same work whichever key matches, or none."""
        if not presented or not self.digests:
            return False
        digest = _digest(presented)
        found = False
        for known in self.digests:
            found |= hmac.compare_digest(known, digest)
        return found


class Sessions:
    """Dashboard logins: a random token per login, kept (as its sha256) with its expiry in memory.

    A token is bound to one login: a second login gets another one, logging out ends it, it
    expires after `ttl` seconds (the cookie says so too), and every token dies with the process
    (the table is the secret, made fresh at each start). At most `capacity` are kept: beyond
    that, the one closest to expiry is ended.
    """

    def __init__(self, ttl: float, capacity: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl, self.capacity, self._clock = ttl, capacity, clock
        self._live: dict[bytes, float] = {}  # sha256(token) -> expiry (monotonic)
        self._lock = threading.Lock()

    def open(self) -> str:
        token = secrets.token_urlsafe(32)
        now = self._clock()
        with self._lock:
            self._live = {k: t for k, t in self._live.items() if t > now}
            while len(self._live) >= self.capacity:
                del self._live[min(self._live, key=self._live.__getitem__)]
            self._live[_digest(token)] = now + self.ttl
        return token

    def valid(self, token: str | None) -> bool:
        if not token:
            return False
        with self._lock:
            expiry = self._live.get(_digest(token))
        return expiry is not None and expiry > self._clock()

    def close(self, token: str | None) -> None:
        if token:
            with self._lock:
                self._live.pop(_digest(token), None)


class FailureThrottle:
    """Failed authentications per client address: a token bucket of `per_minute` tokens refilled
    at `per_minute` a minute. Hand-written (a dozen lines) rather than a rate-limit library: it
    needs only this one bucket, in memory, at most `max_clients` addresses (the emptiest and
    stalest forgotten first)."""

    def __init__(self, per_minute: int, max_clients: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.capacity, self.rate = float(per_minute), per_minute / 60.0
        self.max_clients, self._clock = max_clients, clock
        self._buckets: dict[str, tuple[float, float]] = {}  # address -> (tokens, when)
        self._lock = threading.Lock()

    def _tokens(self, client: str, now: float) -> float:
        tokens, when = self._buckets.get(client, (self.capacity, now))
        return min(self.capacity, tokens + (now - when) * self.rate)

    def wait(self, client: str) -> float:
        """Seconds until `client` may try a key again (0: now)."""
        now = self._clock()
        with self._lock:
            tokens = self._tokens(client, now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def failed(self, client: str) -> None:
        now = self._clock()
        with self._lock:
            tokens = self._tokens(client, now) - 1
            self._buckets.pop(client, None)
            if len(self._buckets) >= self.max_clients:  # forget the fullest (the most forgiven) first
                del self._buckets[max(self._buckets, key=lambda c: self._tokens(c, now))]
            self._buckets[client] = (max(tokens, 0.0), now)


@dataclass(frozen=True)
class Verdict:
    """The outcome of presenting a key: ok, 401 (none or wrong) or 429 (too many wrong ones)."""

    status: int
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == 200


class Gate:
    """Keys (throttled per client address), plus the dashboard's sessions."""

    def __init__(self, keys: ApiKeys, *, failures_per_minute: int, session_ttl: float, max_sessions: int) -> None:
        self.keys = keys
        self.throttle = FailureThrottle(failures_per_minute)
        self.sessions = Sessions(session_ttl, max_sessions)

    def check_key(self, presented: str | None, client: str) -> Verdict:
        """A throttled address gets 429 before its key is looked at, so guessing stays slow."""
        if not presented:
            return Verdict(401)
        wait = self.throttle.wait(client)
        if wait > 0:
            return Verdict(429, wait)
        if self.keys.check(presented):
            return Verdict(200)
        self.throttle.failed(client)
        return Verdict(401)


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY` or `X-API-Key: KEY`."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = headers.get("x-api-key", "").strip()
    return key or None


def generated_key(state_dir: Path) -> tuple[str, Path]:
    """The key of a loopback API started without one: made once, kept in `state_dir/api.key` (0600).

    Closed by default without a set-up step: whoever can read the daemon's state folder (and so
    could cancel its jobs anyway) can read the key; nobody else gets in.
    """
    path = state_dir / GENERATED_KEY_FILE
    try:
        key = path.read_text(encoding="utf-8").strip()
        if len(key) >= MIN_KEY_LENGTH:
            return key, path
    except OSError:
        pass
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    tmp = path.with_name(f".tmp-{path.name}-{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(key + "\n")
    os.replace(tmp, path)
    return key, path
