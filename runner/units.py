"""Quantities as people write and read them: byte sizes, durations, counts.

One meaning for a size everywhere (command options, job files, the HTTP API's settings):

- ``KB``, ``MB``, ``GB``, ``TB``, ``PB`` are powers of 1000 (SI): ``16GB`` = 16 x 10^9 bytes;
- ``KiB``, ``MiB``, ``GiB``, ``TiB``, ``PiB`` and the bare letters ``K``, ``M``, ``G``, ``T``, ``P``
  are powers of 1024: ``16GiB`` = ``16G`` = 16 x 2^30 bytes (the bare letters as GNU coreutils,
  Slurm's ``--mem`` and Docker read them);
- ``B`` or no unit is bytes; case does not matter; a decimal point is allowed (``1.5GiB``).

Written by hand: humanfriendly and bitmath read a bare ``G`` as 10^9 (or every unit as a power of
1024 when asked), neither the convention above, which job files written for Slurm rely on.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = [
    "SIZE_HELP",
    "SIZE_WITH_UNIT_PATTERN",
    "format_binary_size",
    "format_count",
    "format_size",
    "parse_size",
    "short_duration",
]

SIZE_HELP = "GB = 10^9 bytes, GiB and G = 2^30 bytes"
# a size that names its unit, as job files must (a bare number would mean bytes, never what was meant)
SIZE_WITH_UNIT_PATTERN = r"^[1-9][0-9]*(\.[0-9]+)?\s*[KMGTkmgt]([Ii]?[Bb])?$"

_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:([kmgtp])(i?b)?|(b))?\s*", re.IGNORECASE)
_POWERS = {"k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """'16GB' -> 16_000_000_000, '16GiB' and '16G' -> 17_179_869_184, '512' -> 512 (see the module
    docstring). Raises ValueError naming what was given and what is accepted."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a size: write e.g. 16GB (16 x 10^9 bytes), 16GiB or 16G "
            f"(16 x 2^30 bytes), 512MiB, or a number of bytes"
        )
    number, letter, suffix = Decimal(match.group(1)), match.group(2), match.group(3)
    if letter is None:
        return int(number)
    base = 1000 if suffix is not None and suffix.lower() == "b" else 1024
    return int(number * base ** _POWERS[letter.lower()])


def format_size(n: int | None) -> str:
    """Bytes in SI units, as `parse_size` reads them back: '812 B', '4.2 MB', '1.5 GB'; None -> '-'."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def format_binary_size(n: int | float | None) -> str:
    """Bytes in binary units, as memory is counted: '1.50 GiB', '512 MiB'; None -> '?'."""
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def format_count(n: int | None) -> str:
    """'135.0M', '1.2B', '812'; None -> '-' (parameter counts)."""
    if n is None:
        return "-"
    for unit, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def short_duration(seconds: float | None) -> str:
    """`42s`, `3m05s`, `2h10m` (ETAs and ages); None or not finite -> '-'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
