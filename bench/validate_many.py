"""Benchmark: validate 1,000 job files (the example jobs, copied with distinct names) in one process.

Target: <= 3 s on the 2-core reference machine. Run: python bench/validate_many.py [COUNT]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    examples = sorted((ROOT / "jobs").glob("*.toml"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "jobs"
        folder.mkdir()
        for i in range(count):
            source = examples[i % len(examples)]
            text = source.read_text(encoding="utf-8")
            text = "\n".join(line for line in text.splitlines() if not line.startswith("name ="))
            (folder / f"job-{i:05d}.toml").write_text(text, encoding="utf-8")
        start = time.perf_counter()
        from runner.commands import main as cli_main

        # the copies name data files relative to jobs/, which do not resolve from the temporary folder
        rc = cli_main(["validate", "--quiet", "--no-files", str(folder)])
        elapsed = time.perf_counter() - start
        shutil.rmtree(folder)
    print(
        f"validated {count} job files in {elapsed:.2f} s ({1000 * elapsed / count:.2f} ms per file, imports included); exit {rc}"
    )


if __name__ == "__main__":
    main()
