"""A run's start-up: import only what the job uses, and keep the garbage collector off the heap
that start-up built.

Most of the time from `runner run` to the first training step is imports (torch, transformers'
Trainer, peft), not work. Two libraries that a run only sometimes uses are imported eagerly by
the ones it always uses:

- `bitsandbytes` (QLoRA's 4-bit layers): peft imports it at import time when it is installed, and
  bitsandbytes wraps its kernels in `torch.compile`, which imports TorchInductor; on this kind of
  machine that was ~15% of the start-up (`python -X importtime`, bench/start.py);
- `datasets` (hf: data sources): transformers' Trainer module imports it (and pandas, pyarrow)
  when it is installed, only to recognise `datasets.Dataset` inputs; the runner gives the Trainer
  its own torch datasets. ~9% of the start-up.

`lean_imports(spec)` hides the ones a job does not use (no `qlora` adapter; no `hf:` data) for the
duration of the run: a ``None`` entry in `sys.modules` makes `import` fail and
`importlib.util.find_spec` answer None, which is how both libraries' callers detect that a package
is not installed, so they take their not-installed path (the same code a machine without them
runs). On the way out the entries go and the availability checks that cache their answer are
asked again, so a later job in the same process (tests, notebooks) that does use them imports them
as usual. What stays: peft's `peft.helpers.bnb` (a helper for condition numbers of quantised
weights, which the runner does not use) and transformers' `is_datasets_available()` remain as
they were found while hidden, because transformers.trainer then has no `datasets` global to use
(clearing that answer would point the Trainer at a name it never imported).

This is the one place that touches these libraries' import-time decisions; the checks it resets
are listed in `_forget_hidden`, guarded by tests/train/test_startup.py.

`frozen_heap()` moves everything start-up allocated (modules, the model, the tokenizer) out of the
collector's reach for the training loop (`gc.freeze`): accelerate runs a full `gc.collect()` when
the loop starts, which otherwise walks the whole start-up heap (~4% of the start-up), and every
full collection during training would walk it again. Objects freed later by reference counting
are freed as usual; `gc.unfreeze()` hands the rest back to the collector when the loop ends.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.spec.model import JobSpec

HUB_PREFIX = "hf:"


def unused_imports(spec: JobSpec) -> list[str]:
    """Optional libraries the job `spec` does not use, among those its required libraries import."""
    unused = []
    if spec.adapter.method != "qlora":
        unused.append("bitsandbytes")
    if not any(source.startswith(HUB_PREFIX) for source in _data_sources(spec)):
        unused.append("datasets")
    return unused


def _data_sources(spec: JobSpec) -> list[str]:
    """Every data source the job names (train, eval and any others a data section lists), as text."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                walk(item)

    walk(spec.model_dump(mode="json", include={"data", "eval"}))
    return found


@contextmanager
def lean_imports(spec: JobSpec) -> Iterator[list[str]]:
    """Hide the optional libraries `spec` does not use (and that nothing imported yet) while the
    block runs; yields their names."""
    hidden = [name for name in unused_imports(spec) if name not in sys.modules and not _answered(name)]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  # the import system's "not installed" marker
    try:
        yield hidden
    finally:
        for name in hidden:
            if name in sys.modules and sys.modules[name] is None:
                del sys.modules[name]
        _forget_hidden(hidden)


# the availability checks that cache their answer, per library: (module, function)
_CACHED_CHECKS: dict[str, tuple[tuple[str, str], ...]] = {
    "bitsandbytes": (
        ("peft.import_utils", "is_bnb_available"),
        ("peft.import_utils", "is_bnb_4bit_available"),
        ("transformers.utils.import_utils", "is_bitsandbytes_available"),
    ),
    "datasets": (("transformers.utils.import_utils", "is_datasets_available"),),
}


def _cached_checks(name: str) -> list[object]:
    checks = []
    for module_name, function in _CACHED_CHECKS.get(name, ()):
        module = sys.modules.get(module_name)
        if module is not None:
            checks.append(getattr(module, function))
    return checks


def _answered(name: str) -> bool:
    """Whether a library's availability was already checked and cached in this process: code that
    trusts that answer would then import it, so it is not hidden."""
    return any(check.cache_info().currsize for check in _cached_checks(name))  # type: ignore[attr-defined]


def _forget_hidden(names: list[str]) -> None:
    """Ask the cached availability checks again for the libraries that were hidden (datasets
    excepted: see the module's docstring)."""
    for name in names:
        if name != "datasets":
            for check in _cached_checks(name):
                check.cache_clear()  # type: ignore[attr-defined]


@contextmanager
def frozen_heap() -> Iterator[None]:
    """Keep the cyclic garbage collector off everything allocated so far while the block runs."""
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
