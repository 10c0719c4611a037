"""API keys: where they come from, how they are kept, how a request proves it has one.

* Keys come from `RUNNER_API_KEY` and/or a key file (`--api-key-file`: one key per line, or
  `sha256:HEX` lines so the file need not hold the keys themselves). Only their sha256 digests
  are kept in memory; a presented key is hashed and compared with every digest in constant time
  (`hmac.compare_digest`, no early exit), so neither timing nor a memory dump gives a key away.
* A request presents a key as `Authorization: Bearer KEY` or `X-API-Key: KEY`.
* A browser cannot add headers to a page load, so `POST /login` trades a key for a cookie
  (HttpOnly, SameSite=Strict) holding an HMAC derived from the key's digest, not the key. The
  cookie is accepted for reads only (GET/HEAD): submitting or cancelling jobs always needs the
  header, so a forged cross-site form can never act with it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

__all__ = ["COOKIE_NAME", "KEY_ENV", "MIN_KEY_LENGTH", "ApiKeys", "ApiKeyError", "generated_key"]

KEY_ENV = "RUNNER_API_KEY"
MIN_KEY_LENGTH = 16
COOKIE_NAME = "runner_session"
GENERATED_KEY_FILE = "api.key"
_SESSION_CONTEXT = b"runner dashboard session v1"
_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
_MAKE_ONE = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


class ApiKeyError(ValueError):
    """A key source that cannot be used (too short, unreadable, malformed); says where and how to fix it."""


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


def _check_length(key: str, where: str) -> None:
    if len(key) < MIN_KEY_LENGTH:
        raise ApiKeyError(f"{where}: an API key needs at least {MIN_KEY_LENGTH} characters "
                        f"(make one with {_MAKE_ONE})")


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
                raise ApiKeyError(f"{key_file}: cannot read the API key file ({exc.strerror}); "
                                "check the path given to --api-key-file") from None
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
                raise ApiKeyError(f"{key_file}: no key in the API key file; write one key per line "
                                f"(or sha256:HEX of a key), e.g. from {_MAKE_ONE}")
            if raw_keys and mode & 0o077:
                warnings.append(f"{key_file} holds keys and is readable by other users; chmod 600 it "
                                "(or store sha256:HEX lines instead of the keys)")
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

    def session_for(self, presented: str) -> str | None:
        """The dashboard cookie for a valid key (an HMAC of its digest), or None for a wrong key."""
        if not self.check(presented):
            return None
        return _session_token(_digest(presented))

    def check_session(self, token: str | None) -> bool:
        if not token or not self.digests:
            return False
        found = False
        for known in self.digests:
            found |= hmac.compare_digest(_session_token(known), token)
        return found


def _session_token(digest: bytes) -> str:
    return hmac.new(digest, _SESSION_CONTEXT, hashlib.sha256).hexdigest()


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
