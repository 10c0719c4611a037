"""What belongs to the machine, not to a job: the environment variables the runner reads.

A run's results follow from its job file alone (schema, spec hash, manifest.json). The
environment only says where things are on this machine and how this machine runs them:
- ``RUNNER_HOME``: the state folder (downloads, converted snapshots, the tokenisation cache;
  runner.paths);
- ``RUNNER_JEMALLOC``: the allocator (``0`` turns it off, or the path of the library;
  runner.allocator);
- defaults of the command line and the API (``RUNNER_RUNS``, ``RUNNER_REGISTRY``,
  ``RUNNER_API_KEY``), read where those options are.

`machine_setting` (a value) and `machine_switch` (off / on, or a value) read them one way.
Switches that once were environment variables are job settings now (``[train.speed]``);
`retired_settings` names any still set, so a machine that sets one learns where it went instead
of seeing it silently ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

OFF = ("0", "false", "no", "off")
ON = ("1", "true", "yes", "on")

# environment variable -> the job setting that replaced it
RETIRED = {
    "RUNNER_PACKED_ATTENTION": "train.speed.packed_attention",
    "RUNNER_LOSS_POSITIONS_ONLY": "train.speed.loss_positions_only",
    "RUNNER_TOKEN_BUDGET": "train.speed.token_budget",
    "RUNNER_DATA_CACHE": "train.speed.data_cache",
}


def machine_setting(name: str, env: Mapping[str, str] | None = None) -> str | None:
    """The variable's value, stripped, or None when it is unset or empty."""
    raw = (os.environ if env is None else env).get(name, "").strip()
    return raw or None


def machine_switch(name: str, env: Mapping[str, str] | None = None) -> str | bool | None:
    """A switch that may also name something: None when unset, False / True for the usual off /
    on words (0, false, no, off / 1, true, yes, on), otherwise its text (e.g. a library's path)."""
    value = machine_setting(name, env)
    if value is not None and value.lower() in OFF:
        return False
    if value is not None and value.lower() in ON:
        return True
    return value


def retired_settings(env: Mapping[str, str] | None = None) -> list[str]:
    """One line for each retired variable that is set: what replaced it."""
    env = os.environ if env is None else env
    return [
        f"{name} is no longer read: speed switches are job settings now; set {key} in the job file "
        "([train.speed] table)"
        for name, key in RETIRED.items()
        if env.get(name, "").strip()
    ]
