"""Where the benchmarks find the machine's shared data: the first `shared/data` folder above the
repository (a checkout at /work/main and a worktree at /work/wt/NAME both reach /work/shared/data),
or the folder named by BENCH_DATA."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    named = os.environ.get("BENCH_DATA")
    if named:
        return Path(named)
    for parent in ROOT.parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return ROOT.parent / "shared" / "data"  # the usual layout; the benchmark names it when it is missing
