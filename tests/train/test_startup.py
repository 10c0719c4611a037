"""A run imports only what its job uses (runner.train.startup): bitsandbytes and datasets stay out
of a LoRA job on local data, come back for the next job of the process, and a QLoRA or hf: job
keeps them; the collector skips the start-up heap only while the loop runs."""

from __future__ import annotations

import gc
import importlib.util
import json
import os
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.spec.model import JobSpec
from runner.train.startup import frozen_heap, lean_imports, unused_imports


def _spec(**sections: dict[str, Any]) -> JobSpec:
    spec: dict[str, Any] = {"model": {"source": "local:/models/x"}, "data": {"train": "train.jsonl"}}
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    return JobSpec.model_validate(spec)


def test_a_lora_job_on_local_data_needs_neither_bitsandbytes_nor_datasets() -> None:
    assert unused_imports(_spec()) == ["bitsandbytes", "datasets"]


def test_a_qlora_job_keeps_bitsandbytes_and_a_hub_data_set_keeps_datasets() -> None:
    assert "bitsandbytes" not in unused_imports(_spec(adapter={"method": "qlora"}))
    assert "datasets" not in unused_imports(_spec(data={"train": "hf:org/name?split=train"}))
    assert "datasets" not in unused_imports(_spec(data={"eval": "hf:org/name?split=test"}))


_PROBE = """
import importlib.util, json, sys
from runner.spec.model import JobSpec
from runner.train.startup import lean_imports
spec = JobSpec.model_validate({"model": {"source": "local:/m"}, "data": {"train": "t.jsonl"}})
seen = {}
with lean_imports(spec) as hidden:
    seen["hidden"] = hidden
    seen["found_inside"] = importlib.util.find_spec("bitsandbytes") is not None
    try:
        import bitsandbytes  # noqa: F401
        seen["imported_inside"] = True
    except ImportError:
        seen["imported_inside"] = False
seen["found_after"] = importlib.util.find_spec("bitsandbytes") is not None
seen["datasets_found_after"] = importlib.util.find_spec("datasets") is not None
print(json.dumps(seen))
"""


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None or importlib.util.find_spec("datasets") is None,
    reason="needs bitsandbytes and datasets installed",
)
def test_hidden_libraries_look_uninstalled_inside_and_installed_again_after() -> None:
    done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, check=True, timeout=120)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {
        "hidden": ["bitsandbytes", "datasets"],
        "found_inside": False,
        "imported_inside": False,
        "found_after": True,
        "datasets_found_after": True,
    }


def test_a_library_already_imported_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = types.ModuleType("bitsandbytes")
    monkeypatch.setitem(sys.modules, "bitsandbytes", loaded)
    with lean_imports(_spec()) as hidden:
        assert "bitsandbytes" not in hidden and sys.modules["bitsandbytes"] is loaded
    assert sys.modules["bitsandbytes"] is loaded


_RUN = """
import json, sys
from runner.commands import main
code = main(["run", sys.argv[1], "--runs-dir", sys.argv[2]])
print(json.dumps({"code": code, "bitsandbytes": "bitsandbytes" in sys.modules, "datasets": "datasets" in sys.modules,
                  "peft_bnb_4bit": __import__("peft.import_utils", fromlist=["x"]).is_bnb_4bit_available()}))
"""


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes installed")
def test_a_lora_run_trains_without_importing_bitsandbytes_or_datasets_and_peft_sees_them_after(
    write_job: Callable[..., Path], tmp_path: Path
) -> None:
    job = write_job(train={"max_steps": 2}, eval={"at_start": False, "at_end": False})
    done = subprocess.run(
        [sys.executable, "-c", _RUN, str(job), str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "RUNNER_JEMALLOC": "0"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    # trained, the two libraries never loaded during the run, and after it peft finds bitsandbytes
    # again (which imports it: the check is what a later QLoRA job of the process asks)
    assert seen == {"code": 0, "bitsandbytes": False, "datasets": False, "peft_bnb_4bit": True}


def test_the_heap_is_frozen_only_while_the_block_runs() -> None:
    before = gc.get_freeze_count()
    with frozen_heap():
        assert gc.get_freeze_count() > before
    assert gc.get_freeze_count() == 0
