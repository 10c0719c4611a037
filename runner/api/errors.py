"""The API's error answers: `ApiError` (status, message, located errors) and the cap on how much of
an error list an answer carries (`--api-max-errors` entries, each message at most 1,000
characters, the total always given), so a request naming 60,000 bad paths gets a short answer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["MAX_MESSAGE", "ApiError", "cap_errors", "cut"]

MAX_MESSAGE = 1000


def cut(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


def _cut_entry(entry: Any) -> Any:
    if hasattr(entry, "to_dict"):  # a SpecIssue: converted only if it is listed
        entry = entry.to_dict()
    if isinstance(entry, str):
        return cut(entry)
    if isinstance(entry, Mapping):
        return {key: cut(value) if isinstance(value, str) else value for key, value in entry.items()}
    return entry


def cap_errors(errors: Sequence[Any], limit: int) -> dict[str, Any]:
    """`errors` (the first `limit`, each cut), `errors_total` and `errors_truncated`."""
    return {
        "errors": [_cut_entry(e) for e in errors[:limit]],
        "errors_total": len(errors),
        "errors_truncated": len(errors) > limit,
    }


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        detail: str,
        *,
        errors: Sequence[Any] | None = None,
        extra: Mapping[str, Any] | None = None,
        max_errors: int = 100,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = cut(detail)
        self.errors = errors
        self.extra = dict(extra or {})
        self.max_errors = max_errors
        self.headers = dict(headers or {})

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"detail": self.detail, **self.extra}
        if self.errors is not None:
            body.update(cap_errors(self.errors, self.max_errors))
        return body
