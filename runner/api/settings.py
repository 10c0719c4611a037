"""Who may connect to the API and what a request may name, decided once at start-up.

The defaults are the safe ones: listen on 127.0.0.1, answer only requests whose Host header is
a loopback name (a DNS-rebinding page in a browser sends its own domain), require a key on
every endpoint but /livez, and accept only paths under the project folder. Listening on another
address needs a key: without one the API refuses to start rather than serve the network openly.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from runner.api.auth import KEY_ENV, ApiKeyError, ApiKeys, generated_key
from runner.api.limits import Limits

__all__ = ["DEFAULT_LISTEN", "ApiConfigError", "ApiSettings", "is_loopback", "normalize_host", "parse_listen"]

DEFAULT_LISTEN = "127.0.0.1:8200"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


class ApiConfigError(ValueError):
    """The API cannot start as asked; the message says which option to change."""


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT`, `[IPv6]:PORT`, `:PORT` or `PORT` (host 127.0.0.1)."""
    value = text.strip()
    host, port_text = "127.0.0.1", value
    if value.startswith("["):
        end = value.find("]")
        if end < 0 or not value[end + 1 :].startswith(":"):
            raise ApiConfigError(f"--api {text!r}: write [IPv6]:PORT, e.g. [::1]:8200")
        host, port_text = value[1:end], value[end + 2 :]
    elif ":" in value:
        head, _, port_text = value.rpartition(":")
        host = head or host
    try:
        port = int(port_text)
    except ValueError:
        raise ApiConfigError(f"--api {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}") from None
    if not 0 <= port <= 65535:
        raise ApiConfigError(f"--api {text!r}: port {port} is not between 0 and 65535")
    return host, port


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Only literal loopback addresses and `localhost`: any other name may resolve anywhere."""
    ip = _ip(host)
    return host.lower() == "localhost" or (ip is not None and ip.is_loopback)


def _is_wildcard(host: str) -> bool:
    ip = _ip(host)
    return ip is not None and ip.is_unspecified


def normalize_host(value: str) -> str:
    """A Host header (or a name given on the command line) without port, brackets or final dot."""
    host = value.strip().lower()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


@dataclass(frozen=True)
class ApiSettings:
    jobs_dir: Path
    runs_root: Path
    state_dir: Path
    keys: ApiKeys
    allowed_hosts: frozenset[str]
    data_roots: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 8200
    limits: Limits = field(default_factory=Limits)
    behind_tls_proxy: bool = False  # trust X-Forwarded-Proto: https (for the cookie's Secure flag)
    notes: tuple[str, ...] = field(default=())  # what to tell the operator at start-up

    @property
    def max_body(self) -> int:
        return self.limits.max_body

    @property
    def max_upload(self) -> int:
        return self.limits.max_upload

    @classmethod
    def build(
        cls,
        *,
        jobs_dir: Path,
        runs_root: Path,
        state_dir: Path,
        listen: str = DEFAULT_LISTEN,
        key_file: Path | None = None,
        allow_hosts: Sequence[str] = (),
        data_roots: Sequence[Path] = (),
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        max_upload: int | None = None,
        behind_tls_proxy: bool = False,
    ) -> ApiSettings:
        """Check everything the API will rely on; `ApiConfigError` says what to change."""
        jobs_dir = jobs_dir.absolute()
        if not jobs_dir.is_dir():
            raise ApiConfigError(f"jobs folder {jobs_dir} does not exist")
        host, port = parse_listen(listen)
        try:
            keys = ApiKeys.load(env=env, key_file=key_file)
        except ApiKeyError as exc:
            raise ApiConfigError(str(exc)) from None
        notes = list(keys.warnings)
        if not keys.configured:
            if not is_loopback(host):
                raise ApiConfigError(
                    f"refusing to listen on {host}:{port} without an API key: anyone who can reach it could "
                    f"submit and cancel jobs. Set {KEY_ENV} or --api-key-file, or listen on 127.0.0.1"
                )
            key, path = generated_key(state_dir.absolute())
            keys = ApiKeys.of(key, str(path))
            notes.append(
                f"no API key configured: generated one in {path} (set {KEY_ENV} or --api-key-file to choose your own)"
            )
        allowed = set(LOOPBACK_NAMES)
        if _is_wildcard(host):
            allowed.add(normalize_host(socket.gethostname()))
        else:
            allowed.add(normalize_host(host))
        allowed.update(normalize_host(name) for name in allow_hosts if name.strip())
        roots: list[Path] = []
        for root in data_roots or [jobs_dir.parent]:
            resolved = Path(root).expanduser().resolve()
            if not resolved.is_dir():
                raise ApiConfigError(f"--api-data-root {root}: not a folder")
            roots.append(resolved)
        limits = limits or Limits()
        if max_upload is not None:
            try:
                limits = dataclasses.replace(limits, max_upload=max_upload)
            except ValueError as exc:
                raise ApiConfigError(str(exc)) from None
        return cls(
            jobs_dir=jobs_dir,
            runs_root=runs_root.absolute(),
            state_dir=state_dir.absolute(),
            keys=keys,
            allowed_hosts=frozenset(allowed),
            data_roots=tuple(roots),
            host=host,
            port=port,
            limits=limits,
            behind_tls_proxy=behind_tls_proxy,
            notes=tuple(notes),
        )

    @property
    def url(self) -> str:
        host = "127.0.0.1" if _is_wildcard(self.host) else self.host
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
