"""`runner run` trains under jemalloc when it is installed: found, switchable off, preloaded once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runner.allocator import MALLOC_CONF, find_jemalloc, preload_environment


def test_switched_off_or_pointed_at_a_library(tmp_path: Path) -> None:
    assert find_jemalloc({"RUNNER_JEMALLOC": "0"}) is None
    assert find_jemalloc({"RUNNER_JEMALLOC": "off"}) is None
    fake = tmp_path / "libjemalloc.so.2"
    fake.write_bytes(b"")
    assert find_jemalloc({"RUNNER_JEMALLOC": str(fake)}) == str(fake)
    assert find_jemalloc({"RUNNER_JEMALLOC": str(tmp_path / "missing.so")}) is None


def test_preload_keeps_existing_preloads_and_a_users_malloc_conf() -> None:
    env = preload_environment({"LD_PRELOAD": "/lib/other.so"}, "/lib/libjemalloc.so.2")
    assert env["LD_PRELOAD"] == "/lib/libjemalloc.so.2:/lib/other.so"
    assert env["MALLOC_CONF"] == MALLOC_CONF
    assert preload_environment({"MALLOC_CONF": "narenas:1"}, "/x.so")["MALLOC_CONF"] == "narenas:1"


@pytest.mark.skipif(find_jemalloc({}) is None, reason="libjemalloc2 is not installed")
def test_the_cli_reexecutes_itself_under_jemalloc_once() -> None:
    code = (
        "import sys\nfrom runner.allocator import reexec_with_jemalloc, jemalloc_loaded\n"
        "reexec_with_jemalloc([sys.executable, '-c', 'pass'])\nprint('loaded' if jemalloc_loaded() else 'not')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "RUNNER_JEMALLOC_ACTIVE", "RUNNER_JEMALLOC")}
    # the re-executed command is `python -c pass`, which prints nothing: proof that the exec happened
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == ""
    off = subprocess.run(
        [sys.executable, "-c", code], env={**env, "RUNNER_JEMALLOC": "0"}, capture_output=True, text=True, timeout=60
    )
    assert off.stdout.strip() == "not"
    child = (
        "from runner.allocator import jemalloc_loaded, reexec_with_jemalloc\n"
        "reexec_with_jemalloc()\nprint('loaded' if jemalloc_loaded() else 'not')\n"
    )
    once = subprocess.run([sys.executable, "-c", child], env=env, capture_output=True, text=True, timeout=60)
    assert once.stdout.strip() == "loaded"
