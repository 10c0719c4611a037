"""Shared test constants (conftest.py is for fixtures, not for importing)."""

from __future__ import annotations

from datetime import UTC, datetime

T0 = datetime(2026, 11, 22, 4, 45, 1, tzinfo=UTC)
